//! `--since`: a time, or a duration before now.

use std::time::{Duration, SystemTime};

/// Parses an RFC 3339 time (`2026-11-28T08:00:00Z`, `2026-11-28 08:00:00+02:00`, or a date),
/// or a duration before `now` (`10m`, `2h`, `1day 6h`).
pub fn parse(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(ago) = humantime::parse_duration(text) {
        return now
            .checked_sub(ago)
            .ok_or_else(|| format!("`{text}` ago is before the start of time"));
    }
    parse_time(text).ok_or_else(|| {
        format!(
            "`{text}` is neither a time (RFC 3339, e.g. 2026-11-28T08:00:00Z, \
             2026-11-28T10:00:00+02:00 or 2026-11-28) nor a duration before now (e.g. 10m, 2h, \
             1day)"
        )
    })
}

fn parse_time(text: &str) -> Option<SystemTime> {
    const DATE_LENGTH: usize = "2026-11-28".len();
    if text.len() == DATE_LENGTH {
        return humantime::parse_rfc3339_weak(&format!("{text}T00:00:00Z")).ok();
    }
    // humantime knows UTC only: take a numeric offset off and apply it.
    if let Some((local, east, offset)) = split_offset(text) {
        let utc_as_if = humantime::parse_rfc3339_weak(local).ok()?;
        return if east {
            utc_as_if.checked_sub(offset)
        } else {
            utc_as_if.checked_add(offset)
        };
    }
    humantime::parse_rfc3339_weak(text).ok()
}

/// `2026-11-28T10:00:00+02:00` → (`2026-11-28T10:00:00`, east of UTC, 2 hours).
fn split_offset(text: &str) -> Option<(&str, bool, Duration)> {
    const OFFSET_LENGTH: usize = "+02:00".len();
    const TIME_LENGTH: usize = "2026-11-28T10:00:00".len();
    if text.len() < TIME_LENGTH + OFFSET_LENGTH || !text.is_ascii() {
        return None;
    }
    let (local, offset) = text.split_at(text.len() - OFFSET_LENGTH);
    let bytes = offset.as_bytes();
    let east = match bytes[0] {
        b'+' => true,
        b'-' => false,
        _ => return None,
    };
    let number = |digits: &str| -> Option<u64> {
        digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    if bytes[3] != b':' {
        return None;
    }
    let (hours, minutes) = (number(&offset[1..3])?, number(&offset[4..6])?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((
        local,
        east,
        Duration::from_secs(hours * 3600 + minutes * 60),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn times_in_utc_with_offsets_and_dates() {
        let now = SystemTime::now();
        let expected = utc("2026-11-28T08:00:00Z");
        for text in [
            "2026-11-28T08:00:00Z",
            "2026-11-28 08:00:00",
            "2026-11-28T10:00:00+02:00",
            "2026-11-28T03:30:00-04:30",
            "2026-11-28T08:00:00+00:00",
        ] {
            assert_eq!(parse(text, now), Ok(expected), "{text}");
        }
        assert_eq!(parse("2026-11-28", now), Ok(utc("2026-11-28T00:00:00Z")));
        assert_eq!(
            parse("2026-11-28T08:00:00.5Z", now),
            Ok(expected + Duration::from_millis(500))
        );
    }

    #[test]
    fn durations_count_back_from_now() {
        let now = utc("2026-11-28T08:00:00Z");
        assert_eq!(parse("10m", now), Ok(utc("2026-11-28T07:50:00Z")));
        assert_eq!(parse("2h", now), Ok(utc("2026-11-28T06:00:00Z")));
        assert_eq!(parse("1day 6h", now), Ok(utc("2026-11-27T02:00:00Z")));
    }

    #[test]
    fn anything_else_is_refused_with_examples() {
        for text in [
            "yesterday",
            "2026-11-28T08:00:00+2",
            "2026-13-01",
            "10 parsecs",
        ] {
            let error = parse(text, SystemTime::now()).unwrap_err();
            assert!(error.contains(text), "{error}");
            assert!(error.contains("10m"), "{error}");
        }
    }
}
