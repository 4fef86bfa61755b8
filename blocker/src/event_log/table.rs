//! Records as table rows for people: one row per record, exec records in columns, the other
//! kinds with their fields as `name=value` after the kind.

use serde_json::Value;

use crate::escape::{controls_escaped, escaped, escaped_bytes, is_hex_of_sibling, Lossless};

pub fn header() -> String {
    row_of("TIME", "EVENT", "RULE", "PID", "UID", "COMM", "PATH")
}

pub fn row(record: &Value) -> String {
    let time = escaped(&short_time(record["time"].as_str().unwrap_or("-"))).to_string();
    let kind = escaped(record["kind"].as_str().unwrap_or("-")).to_string();
    if kind != "exec" {
        return format!("{time:<20} {kind} {}", details(record));
    }
    let verdict = match record["enforcement"].as_str() {
        Some("eperm") => "denied",
        Some("sigkill") => "killed",
        Some("none") => "audited",
        _ => "?",
    };
    let mut path = exact_text(record, "path");
    if record["path_truncated"] == true {
        path.push_str("… (truncated)");
    }
    if let Some(operation) = record["operation"].as_str().filter(|&op| op != "exec") {
        path.push_str(&format!(" ({})", escaped(operation)));
    }
    row_of(
        &time,
        verdict,
        &text(&record["rule"]),
        &text(&record["pid"]),
        &text(&record["uid"]),
        &exact_text(record, "comm"),
        &path,
    )
}

fn row_of(
    time: &str,
    event: &str,
    rule: &str,
    pid: &str,
    uid: &str,
    comm: &str,
    path: &str,
) -> String {
    format!("{time:<20} {event:<8} {rule:<16} {pid:>7} {uid:>6} {comm:<16} {path}")
}

/// `2026-11-28T08:39:20.546048089Z` → `2026-11-28T08:39:20Z`: seconds are enough to read.
fn short_time(time: &str) -> String {
    match (time.find('.'), time.strip_suffix('Z')) {
        (Some(dot), Some(_)) => format!("{}Z", &time[..dot]),
        _ => time.to_owned(),
    }
}

/// A field that may hold any bytes (a path, a `comm`): its exact bytes, escaped.
fn exact_text(record: &Value, name: &str) -> String {
    Lossless::from_json(record, name)
        .map(|kept| escaped_bytes(&kept.bytes()).to_string())
        .unwrap_or_else(|| text(&record[name]))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => escaped(text).to_string(),
        Value::Null => "-".to_owned(),
        // JSON writes DEL, C1 controls and bidirectional formatting as they are.
        other => controls_escaped(&other.to_string()),
    }
}

/// Every field but kind and time, as `name=value`; text with spaces or newlines quoted.
fn details(record: &Value) -> String {
    let Some(fields) = record.as_object() else {
        return String::new();
    };
    fields
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "kind" | "time"))
        .filter(|(name, _)| !is_hex_of_sibling(fields, name))
        .map(|(name, value)| match value {
            Value::String(_) => format!("{}={}", escaped(name), quoted(&exact_text(record, name))),
            _ => format!("{}={}", escaped(name), detail(value)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text with spaces quoted, or empty, in quotes; escaped text holds no quote-breaking newline.
fn quoted(shown: &str) -> String {
    if shown.is_empty() || shown.contains(char::is_whitespace) {
        format!("\"{}\"", shown.replace('"', "\\\""))
    } else {
        shown.to_owned()
    }
}

fn detail(value: &Value) -> String {
    match value {
        Value::String(text) => quoted(&escaped(text).to_string()),
        Value::Array(items) => items.iter().map(detail).collect::<Vec<_>>().join(","),
        Value::Object(members) => members
            .iter()
            .map(|(name, member)| format!("{}:{}", escaped(name), detail(member)))
            .collect::<Vec<_>>()
            .join(","),
        other => text(other),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn exec_records_fill_the_columns() {
        let record = json!({"kind":"exec","time":"2026-11-28T08:39:20.546048089Z","action":"deny",
            "enforcement":"sigkill","backend":"kill","operation":"exec","rule":"ban","policy":"t",
            "reason":null,"pid":9900,"tid":9900,"ppid":1,"uid":1000,"gid":1000,"comm":"banned",
            "path":"./banned","path_truncated":false,"device":"254:0","inode":1});
        let row = row(&record);
        let columns: Vec<_> = row.split_whitespace().collect();
        assert_eq!(
            columns,
            [
                "2026-11-28T08:39:20Z",
                "killed",
                "ban",
                "9900",
                "1000",
                "banned",
                "./banned"
            ]
        );
        assert_eq!(header().split_whitespace().count(), columns.len());
        assert_eq!(row.find("ban "), header().find("RULE"), "aligned: {row}");
    }

    #[test]
    fn mappings_and_truncated_paths_say_so() {
        let record = json!({"kind":"exec","time":"2026-11-28T08:39:20Z","enforcement":"eperm",
            "operation":"mmap","rule":"r","pid":1,"uid":0,"comm":"ld.so","path":"/opt/x/lib.so",
            "path_truncated":true});
        let row = row(&record);
        assert!(row.contains(" denied "), "{row}");
        assert!(row.ends_with("/opt/x/lib.so… (truncated) (mmap)"), "{row}");
    }

    #[test]
    fn hostile_names_are_shown_escaped_and_exact() {
        let name = b"/tmp/\x1b]52;c;aGk=\x07\nfake \xff\xe2\x80\xae";
        let kept = Lossless::new(name);
        let record = json!({"kind":"exec","time":"2026-11-28T08:39:20Z","enforcement":"eperm",
            "operation":"exec","rule":"r","pid":1,"uid":0,"comm":"\u{1b}[2J","path":kept.text,
            "path_hex":kept.hex,"path_truncated":false});
        let row = row(&record);
        assert!(
            row.ends_with("/tmp/\\x1b]52;c;aGk=\\x07\\nfake \\xff\\u{202e}"),
            "{row}"
        );
        assert!(row.contains(" \\x1b[2J "), "{row}");
        assert!(!row.contains(|c: char| c.is_control()), "{row:?}");

        let tamper = json!({"kind":"tamper","time":"2026-11-28T08:39:20Z","attempt":"signal",
            "path":kept.text,"path_hex":kept.hex,"comm":"a\nb c"});
        let row = super::row(&tamper);
        assert!(!row.contains(|c: char| c.is_control()), "{row:?}");
        assert!(
            row.contains("path=\"/tmp/\\x1b]52;c;aGk=\\x07\\nfake \\xff\\u{202e}\""),
            "{row}"
        );
        assert!(!row.contains("path_hex"), "{row}");
        assert!(row.contains(r#"comm="a\nb c""#), "{row}");

        // Found by fuzzing: a record's kind, time and operation come from the file too.
        let forged = json!({"kind":"\u{1b}]0;x","time":"\u{1b}[2J"});
        let row = super::row(&forged);
        assert_eq!(row, format!("{:<20} {} ", r"\x1b[2J", r"\x1b]0;x"));
        let forged = json!({"kind":"exec","operation":"\u{7f}\u{1b}","path":{"\u{7f}":"\u{7f}"}});
        assert!(
            super::row(&forged).ends_with(r#"{"\x7f":"\x7f"} (\x7f\x1b)"#),
            "{}",
            super::row(&forged)
        );
        let forged = json!({"kind":"x","y":{"\u{202e}":1}});
        assert!(
            super::row(&forged).ends_with(r"y=\u{202e}:1"),
            "{}",
            super::row(&forged)
        );
    }

    #[test]
    fn other_kinds_show_their_fields() {
        let started = json!({"kind":"started","time":"2026-11-28T08:39:20.1Z","backend":"kill",
            "backend_reason":"the kernel refused","policies":["a","b"],"rules":2,"entries":3});
        let started = row(&started);
        assert!(
            started.starts_with("2026-11-28T08:39:20Z started "),
            "{started}"
        );
        for field in [
            "backend=kill",
            "backend_reason=\"the kernel refused\"",
            "entries=3",
            "policies=a,b",
            "rules=2",
        ] {
            assert!(started.contains(field), "{field} in {started}");
        }
        let stopped = json!({"kind":"stopped","time":"2026-11-28T08:39:20Z","events":2,
            "events_lost":0,"records_dropped":{"file":0,"stdout":5}});
        assert!(
            row(&stopped).ends_with("records_dropped=file:0,stdout:5"),
            "{}",
            row(&stopped)
        );
        let failed = json!({"kind":"reload_failed","time":"2026-11-28T08:39:20Z",
            "error":"a:1:1: x\nb:2:2: y"});
        assert!(
            row(&failed).ends_with(r#"error="a:1:1: x\nb:2:2: y""#),
            "{}",
            row(&failed)
        );
    }
}
