//! Strings that users and file names control, made safe for people to read and kept exact for
//! machines.
//!
//! For people (terminals, the daemon's log, the journal's `MESSAGE`): [`escaped`] shows every
//! character that could act on a terminal or change how a line reads as a visible escape: C0 and
//! C1 controls and DEL (`\n`, `\t`, `\r`, `\x1b`, `\u{85}`), bidirectional formatting (U+061C,
//! U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), the line and paragraph separators
//! (U+2028, U+2029), and bytes that are not UTF-8 (`\xff`). A backslash is shown as `\\`, so an
//! escape in the output always means the character, never a file name that spells one.
//!
//! For machines (the events file, `--json`, the journal's `BLOCKER_*` fields): [`Lossless`]
//! keeps the bytes exactly. JSON strings hold any Unicode, controls included, so valid UTF-8 goes
//! in as it is; bytes that are not UTF-8 cannot, so the field then holds the text with U+FFFD in
//! their place and a sibling field `<name>_hex` holds every byte in hexadecimal.

use std::{borrow::Cow, ffi::OsStr, fmt, os::unix::ffi::OsStrExt};

/// Shows a string for people; see the module documentation.
pub fn escaped<T: AsRef<OsStr> + ?Sized>(text: &T) -> Escaped<'_> {
    Escaped(text.as_ref().as_bytes())
}

/// Shows bytes for people; see the module documentation.
pub fn escaped_bytes(bytes: &[u8]) -> Escaped<'_> {
    Escaped(bytes)
}

/// A `Display` of bytes with everything that could act on a terminal escaped.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            let mut rest = chunk.valid();
            // Runs of ordinary characters go through whole: most names have nothing to escape.
            while let Some(at) = first_shown_differently(rest, Backslash::Escaped) {
                f.write_str(&rest[..at])?;
                let character = rest[at..].chars().next().expect("found at a character");
                match character {
                    '\\' => f.write_str("\\\\")?,
                    _ => write_char(f, character)?,
                }
                rest = &rest[at + character.len_utf8()..];
            }
            f.write_str(rest)?;
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

/// `text` as a TOML string, escaped by the TOML writer: for policy files blocker writes, whose
/// values (a server's message, a file's path) may hold quotes, newlines or `[[rule]]`.
pub fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Escapes what could act on a terminal in text that is otherwise already fit to show (a log
/// line whose fields were escaped): backslashes stay as they are, so nothing is escaped twice.
pub fn controls_escaped(text: &str) -> String {
    let mut shown = ControlsEscaping(String::with_capacity(text.len()));
    // Writing to a String cannot fail.
    let _ = fmt::Write::write_str(&mut shown, text);
    shown.0
}

/// A `Display` of `T` escaped as [`controls_escaped`] does, written straight into the output:
/// the daemon's log formats every line through it.
pub struct ControlsEscaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for ControlsEscaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Write::write_fmt(&mut ControlsEscaping(f), format_args!("{}", self.0))
    }
}

/// Passes text on with what could act on a terminal escaped; runs of ordinary characters go
/// through whole.
struct ControlsEscaping<W>(W);

impl<W: fmt::Write> fmt::Write for ControlsEscaping<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = first_shown_differently(rest, Backslash::Kept) {
            self.0.write_str(&rest[..at])?;
            let character = rest[at..].chars().next().expect("found at a character");
            write_char(&mut self.0, character)?;
            rest = &rest[at + character.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

fn is_control(character: char) -> bool {
    matches!(character, '\0'..='\x1f' | '\x7f')
}

#[derive(Clone, Copy, PartialEq)]
enum Backslash {
    Escaped,
    Kept,
}

/// Where the first character that is shown as an escape is. Looks at bytes, not characters,
/// where it can: this runs over every log line, and log lines are mostly ASCII.
fn first_shown_differently(text: &str, backslash: Backslash) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if byte.is_ascii() {
            if byte < 0x20 || byte == 0x7f || (byte == b'\\' && backslash == Backslash::Escaped) {
                return Some(at);
            }
            at += 1;
        } else {
            let character = text[at..].chars().next().expect("at a character boundary");
            if needs_escape(character) {
                return Some(at);
            }
            at += character.len_utf8();
        }
    }
    None
}

fn write_char(out: &mut impl fmt::Write, character: char) -> fmt::Result {
    match character {
        '\n' => out.write_str("\\n"),
        '\t' => out.write_str("\\t"),
        '\r' => out.write_str("\\r"),
        _ if is_control(character) => write!(out, "\\x{:02x}", character as u32),
        _ if needs_escape(character) => write!(out, "\\u{{{:x}}}", character as u32),
        _ => out.write_char(character),
    }
}

/// C1 controls and the characters that reorder or break a line when shown.
fn needs_escape(character: char) -> bool {
    matches!(
        character,
        '\u{80}'..='\u{9f}'
            | '\u{61c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// The exact bytes of a [`Lossless`] field kept as `text` and `hex`: the text itself, unless
/// the hex says otherwise.
pub fn lossless_bytes<'a>(text: &'a str, hex: Option<&str>) -> Cow<'a, [u8]> {
    match hex.and_then(from_hex) {
        Some(bytes) => Cow::Owned(bytes),
        None => Cow::Borrowed(text.as_bytes()),
    }
}

/// Bytes kept exactly in JSON; see the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lossless {
    /// The text, with U+FFFD for bytes that are not UTF-8.
    pub text: String,
    /// Every byte in lowercase hexadecimal, only when the bytes are not UTF-8.
    pub hex: Option<String>,
}

impl Lossless {
    pub fn new(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self {
                text: text.to_owned(),
                hex: None,
            },
            Err(_) => Self {
                text: String::from_utf8_lossy(bytes).into_owned(),
                hex: Some(bytes.iter().map(|byte| format!("{byte:02x}")).collect()),
            },
        }
    }

    pub fn of<T: AsRef<OsStr> + ?Sized>(text: &T) -> Self {
        Self::new(text.as_ref().as_bytes())
    }

    /// The exact bytes: from the hexadecimal when there is a valid one, else the text's.
    pub fn bytes(&self) -> Vec<u8> {
        lossless_bytes(&self.text, self.hex.as_deref()).into_owned()
    }

    /// Sets the field `name` of a JSON object, and `<name>_hex` when needed.
    pub fn set_in(&self, object: &mut serde_json::Value, name: &str) {
        object[name] = self.text.clone().into();
        if let Some(hex) = &self.hex {
            object[format!("{name}_{HEX_SUFFIX}")] = hex.clone().into();
        }
    }

    /// Reads back the field `name` of a JSON record and its `<name>_hex` sibling.
    pub fn from_json(record: &serde_json::Value, name: &str) -> Option<Self> {
        let text = record.get(name)?.as_str()?.to_owned();
        let hex = record
            .get(format!("{name}_{HEX_SUFFIX}"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        Some(Self { text, hex })
    }
}

/// The suffix of the field that carries the exact bytes of a field that is not UTF-8.
pub const HEX_SUFFIX: &str = "hex";

/// Whether the member `name` of a JSON object is the `<base>_hex` of its member `base`.
pub fn is_hex_of_sibling(object: &serde_json::Map<String, serde_json::Value>, name: &str) -> bool {
    name.strip_suffix(HEX_SUFFIX)
        .and_then(|base| base.strip_suffix('_'))
        .is_some_and(|base| object.contains_key(base))
}

/// Decodes lowercase or uppercase hexadecimal; `None` unless every pair is a byte.
pub fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|start| u8::from_str_radix(hex.get(start..start + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn shown(bytes: &[u8]) -> String {
        escaped_bytes(bytes).to_string()
    }

    #[test]
    fn terminal_controls_are_shown_as_escapes() {
        assert_eq!(
            shown(b"/tmp/\x1b]52;c;aGk=\x07x"),
            "/tmp/\\x1b]52;c;aGk=\\x07x"
        );
        assert_eq!(shown(b"a\nb\tc\rd\x7f\0"), "a\\nb\\tc\\rd\\x7f\\x00");
        assert_eq!(shown("\u{85}\u{9b}2J".as_bytes()), "\\u{85}\\u{9b}2J");
    }

    #[test]
    fn bidirectional_formatting_is_shown_as_escapes() {
        assert_eq!(
            shown("evil\u{202e}fdp.exe".as_bytes()),
            "evil\\u{202e}fdp.exe"
        );
        for character in ['\u{61c}', '\u{200e}', '\u{200f}', '\u{2028}', '\u{2029}']
            .into_iter()
            .chain('\u{202a}'..='\u{202e}')
            .chain('\u{2066}'..='\u{2069}')
        {
            let text = character.to_string();
            assert_eq!(
                shown(text.as_bytes()),
                format!("\\u{{{:x}}}", character as u32)
            );
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_in_hex() {
        assert_eq!(shown(b"caf\xe9 \xff\xfe"), "caf\\xe9 \\xff\\xfe");
    }

    #[test]
    fn backslashes_are_doubled_so_escapes_cannot_be_forged() {
        assert_eq!(shown(b"a\\x1b"), "a\\\\x1b");
        assert_ne!(shown(b"\\x1b"), shown(b"\x1b"));
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        for text in [
            "/usr/bin/ls",
            "WeChat-4.0 (1).AppImage",
            "Überweisung.exe",
            "微信",
        ] {
            assert_eq!(escaped(text).to_string(), text);
        }
        assert_eq!(
            escaped(std::path::Path::new("/opt/x y")).to_string(),
            "/opt/x y"
        );
    }

    #[test]
    fn controls_escaped_display_matches_the_string_form() {
        let text = "denied exec of /tmp/\x1b[2J\u{202e}x by pid 1 (\u{85}, uid 0)";
        let shown = ControlsEscaped(format_args!("{text}")).to_string();
        assert_eq!(shown, controls_escaped(text));
        assert_eq!(
            shown,
            "denied exec of /tmp/\\x1b[2J\\u{202e}x by pid 1 (\\u{85}, uid 0)"
        );
    }

    #[test]
    fn controls_escaped_leaves_backslashes_alone() {
        assert_eq!(controls_escaped("a\\x1b\nb\u{202e}"), "a\\x1b\\nb\\u{202e}");
        let already = escaped_bytes(b"\x1b\n\\").to_string();
        assert_eq!(controls_escaped(&already), already);
    }

    #[test]
    fn lossless_keeps_valid_utf8_as_text_only() {
        let kept = Lossless::new("a\x1b\n\u{202e}".as_bytes());
        assert_eq!(kept.text, "a\x1b\n\u{202e}");
        assert_eq!(kept.hex, None);
        let json = serde_json::json!({ "path": kept.text });
        assert_eq!(Lossless::from_json(&json, "path").unwrap(), kept);
    }

    #[test]
    fn lossless_adds_hex_for_other_bytes() {
        let kept = Lossless::new(b"/tmp/\xff");
        assert_eq!(kept.text, "/tmp/\u{fffd}");
        assert_eq!(kept.hex.as_deref(), Some("2f746d702fff"));
        assert_eq!(kept.bytes(), b"/tmp/\xff");
        let json = serde_json::json!({ "path": kept.text, "path_hex": kept.hex });
        assert_eq!(
            Lossless::from_json(&json, "path").unwrap().bytes(),
            b"/tmp/\xff"
        );
    }

    #[test]
    fn bad_hex_falls_back_to_the_text() {
        for hex in ["f", "zz", "2f\u{e9}"] {
            let json = serde_json::json!({ "path": "/x", "path_hex": hex });
            assert_eq!(Lossless::from_json(&json, "path").unwrap().bytes(), b"/x");
        }
    }

    /// Escapes one character at a time, as the fast paths must.
    fn shown_character_by_character(bytes: &[u8], backslash: Backslash) -> String {
        let mut out = String::new();
        for chunk in bytes.utf8_chunks() {
            for character in chunk.valid().chars() {
                match character {
                    '\\' if backslash == Backslash::Escaped => out.push_str("\\\\"),
                    _ => write_char(&mut out, character).unwrap(),
                }
            }
            for byte in chunk.invalid() {
                out.push_str(&format!("\\x{byte:02x}"));
            }
        }
        out
    }

    proptest! {
        /// Passing runs of ordinary characters through whole changes nothing.
        #[test]
        fn fast_paths_escape_as_character_by_character(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\\'), Just(0xc2), Just(0x85), Just(0xe2)],
                0..64,
            ),
            text in "\\PC*|.*",
        ) {
            prop_assert_eq!(shown(&bytes), shown_character_by_character(&bytes, Backslash::Escaped));
            prop_assert_eq!(
                controls_escaped(&text),
                shown_character_by_character(text.as_bytes(), Backslash::Kept)
            );
        }

        /// Whatever the bytes, what people see has no character that acts on a terminal or
        /// reorders text.
        #[test]
        fn escaped_output_is_inert(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = shown(&bytes);
            prop_assert!(text.chars().all(|c| !c.is_control() && !needs_escape(c)), "{text:?}");
            prop_assert_eq!(controls_escaped(&text), text);
        }

        /// Same for any Unicode string, and its printable characters other than `\` survive.
        #[test]
        fn escaped_strings_are_inert(text in "\\PC*|.*") {
            let shown = escaped(&text).to_string();
            prop_assert!(shown.chars().all(|c| !c.is_control() && !needs_escape(c)), "{shown:?}");
            if text.chars().all(|c| !c.is_control() && !needs_escape(c) && c != '\\') {
                prop_assert_eq!(shown, text);
            }
        }

        /// The escaping is unambiguous: different bytes never look the same.
        #[test]
        fn escaping_is_injective(
            a in proptest::collection::vec(any::<u8>(), 0..16),
            b in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            prop_assume!(a != b);
            prop_assert_ne!(shown(&a), shown(&b));
        }

        /// JSON keeps every byte sequence exactly.
        #[test]
        fn lossless_round_trips_through_json(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let kept = Lossless::new(&bytes);
            let json = serde_json::json!({ "path": kept.text, "path_hex": kept.hex });
            let line = serde_json::to_string(&json).unwrap();
            let read: serde_json::Value = serde_json::from_str(&line).unwrap();
            prop_assert_eq!(Lossless::from_json(&read, "path").unwrap().bytes(), bytes);
        }
    }
}
