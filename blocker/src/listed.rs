//! Many similar log lines (one per file a user made, say) become a few listed ones and a count:
//! anyone who can create files must not be able to write the daemon's log line by line.

use std::fmt::Display;

/// How many lines of one kind are listed before the rest are only counted.
pub const LISTED_LINES: usize = 10;

/// Logs the first [`LISTED_LINES`] of `lines` at `level`, then one line, `rest(count)`, for the
/// others.
pub fn log_listed<L: Display>(
    level: log::Level,
    lines: impl IntoIterator<Item = L>,
    rest: impl FnOnce(usize) -> String,
) {
    let unlisted = lines
        .into_iter()
        .enumerate()
        .filter(|(index, line)| {
            let listed = *index < LISTED_LINES;
            if listed {
                log::log!(level, "{line}");
            }
            !listed
        })
        .count();
    if unlisted > 0 {
        let summary = rest(unlisted);
        log::log!(level, "{summary}");
    }
}

/// Lines of one kind that arrive one at a time: up to [`LISTED_LINES`] are logged per period,
/// the others counted until [`Tally::flush`] ends the period with one line for them.
pub struct Tally {
    level: log::Level,
    listed: usize,
    unlisted: usize,
}

impl Tally {
    pub fn new(level: log::Level) -> Self {
        Self {
            level,
            listed: 0,
            unlisted: 0,
        }
    }

    /// Logs `line` if this period has room left; counts it otherwise. Returns whether it was
    /// logged.
    pub fn note(&mut self, line: impl Display) -> bool {
        if self.listed < LISTED_LINES {
            self.listed += 1;
            log::log!(self.level, "{line}");
            true
        } else {
            self.unlisted += 1;
            false
        }
    }

    /// Ends the period: logs `rest(count)` for the lines not logged, if any.
    pub fn flush(&mut self, rest: impl FnOnce(usize) -> String) {
        if self.unlisted > 0 {
            let summary = rest(self.unlisted);
            log::log!(self.level, "{summary}");
        }
        self.listed = 0;
        self.unlisted = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_lists_a_few_lines_per_period_and_counts_the_rest() {
        let mut tally = Tally::new(log::Level::Warn);
        let logged = (0..LISTED_LINES + 5)
            .filter(|line| tally.note(line))
            .count();
        assert_eq!(logged, LISTED_LINES);
        let mut rest = None;
        tally.flush(|count| {
            rest = Some(count);
            String::new()
        });
        assert_eq!(rest, Some(5));
        assert!(tally.note("a new period lists again"));
        tally.flush(|_| unreachable!("nothing was left unlisted"));
    }

    #[test]
    fn only_lines_beyond_the_listed_ones_are_summed_up() {
        let mut rest = None;
        log_listed(log::Level::Info, 0..LISTED_LINES, |count| {
            rest = Some(count);
            String::new()
        });
        assert_eq!(rest, None);
        log_listed(log::Level::Info, 0..LISTED_LINES + 3, |count| {
            rest = Some(count);
            String::new()
        });
        assert_eq!(rest, Some(3));
    }
}
