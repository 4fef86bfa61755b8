//! Where a problem in a policy file is: its file, line, column and TOML field, so that whoever
//! wrote it finds it in a file of any size.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use crate::escape::escaped;

/// Where something was written in a policy file (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

/// Where each line of one file starts, so that turning a byte offset into a line and column
/// costs a binary search rather than a count from the start of the file (a policy of many
/// thousand rules has as many locations).
pub(super) struct LineStarts<'a> {
    file: &'a Path,
    source: &'a str,
    /// Byte offset of the first character of each line; the first is 0.
    starts: Vec<usize>,
}

impl<'a> LineStarts<'a> {
    pub(super) fn new(file: &'a Path, source: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(newline, _)| newline + 1))
            .collect();
        Self {
            file,
            source,
            starts,
        }
    }

    pub(super) fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.source.len());
        // The last line starting at or before `offset`.
        let line = self.starts.partition_point(|&start| start <= offset);
        let line_start = self.starts[line - 1];
        Location {
            file: self.file.to_owned(),
            line,
            column: self.source[line_start..offset].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", escaped(&self.file), self.line, self.column)
    }
}

/// One problem in one policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub location: Location,
    /// The field in TOML path notation (`rule[1].action`); empty when it is the file itself.
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: {}: {}", self.location, self.field, self.message)
        }
    }
}

/// Every problem found in a policy directory; nothing of it may be applied.
#[derive(Debug)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

pub(super) fn deserialize_error(
    lines: &LineStarts,
    base: usize,
    error: &toml::de::Error,
) -> PolicyError {
    let offset = base + error.span().map_or(0, |span| span.start);
    PolicyError {
        location: lines.location(offset),
        field: field_path_at(lines.source, offset),
        message: error.message().trim().to_owned(),
    }
}

/// The TOML path of the key that `offset` falls under, from the text alone: the nearest table
/// header above it (`[[rule]]` headers are numbered) and the key of its line or of the line that
/// opened the value it continues.
fn field_path_at(source: &str, offset: usize) -> String {
    let offset = offset.min(source.len());
    let line_start = source[..offset]
        .rfind('\n')
        .map_or(0, |newline| newline + 1);
    let line_end = source[offset..]
        .find('\n')
        .map_or(source.len(), |newline| offset + newline);
    let mut lines_up_to_offset: Vec<&str> = source[..line_start].lines().collect();
    lines_up_to_offset.push(&source[line_start..line_end]);

    let mut key = None;
    let mut table = String::new();
    for (distance, line) in lines_up_to_offset.iter().rev().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') && !(distance == 0 && key.is_some()) {
            let header_line = lines_up_to_offset.len() - 1 - distance;
            table = table_path(trimmed, &lines_up_to_offset[..header_line]);
            break;
        }
        if key.is_none() && !trimmed.starts_with('#') {
            if let Some((name, _)) = trimmed.split_once('=') {
                key = Some(name.trim().trim_matches('"').to_owned());
            }
        }
    }
    match (table.is_empty(), key) {
        (_, None) => table,
        (true, Some(key)) => key,
        (false, Some(key)) => format!("{table}.{key}"),
    }
}

/// `[[rule]]` → `rule[N]` where N counts the earlier `[[rule]]` headers; `[a.b]` → `a.b`.
fn table_path(header: &str, earlier_lines: &[&str]) -> String {
    let header = header.split('#').next().unwrap_or_default().trim();
    if let Some(name) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
        let name = name.trim();
        let index = earlier_lines
            .iter()
            .filter(|line| {
                let line = line.trim();
                line.strip_prefix("[[")
                    .and_then(|h| h.split("]]").next())
                    .is_some_and(|h| h.trim() == name)
            })
            .count();
        format!("{name}[{index}]")
    } else {
        header
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::testing::{parse, single_error};

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = "name = \"p\"\n[[rule]]\nid = \"a\"\npaths = [\"/x\"]\n\n[[rule]]\nid = \"b\"\npath = [\"/y\"]\n";
        assert_eq!(
            single_error(&[("p.toml", text)]),
            "p.toml:8:1: rule[1].path: unknown field `path`, expected one of `id`, `description`, \
             `reason`, `url`, `message`, `notify`, `action`, `sha256`, `paths`, `path_prefixes`, `globs`, `packages`, \
             `flatpak`, `snap`, `appimage`, `ban_critical_files`"
        );
    }

    #[test]
    fn bad_action_names_the_field() {
        let text = "name = \"p\"\n[[rule]]\nid = \"a\"\naction = \"block\"\npaths = [\"/x\"]\n";
        let message = single_error(&[("p.toml", text)]);
        assert!(
            message.starts_with("p.toml:4:10: rule[0].action: unknown variant `block`"),
            "{message}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = "name = \"p\"\n[[rule]]\nid = \"a\"\npaths = \"/x\"\n";
        let message = single_error(&[("p.toml", text)]);
        assert!(
            message.starts_with("p.toml:4:9: rule[0].paths: invalid type"),
            "{message}"
        );
    }

    #[test]
    fn errors_inside_multiline_arrays_name_the_array() {
        let text = "name = \"p\"\n[[rule]]\nid = \"a\"\npaths = [\n  \"/x\",\n  7,\n]\n";
        let message = single_error(&[("p.toml", text)]);
        assert!(
            message.starts_with("p.toml:6:3: rule[0].paths: invalid type"),
            "{message}"
        );
    }

    #[test]
    fn missing_name_is_reported() {
        let message = single_error(&[("p.toml", "[[rule]]\nid = \"a\"\npaths = [\"/x\"]\n")]);
        assert!(message.contains("missing field `name`"), "{message}");
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let message = single_error(&[("p.toml", "name = \"p\"\n[[rule]]\nid = \"a\npaths = []\n")]);
        assert!(message.starts_with("p.toml:3:"), "{message}");
    }

    #[test]
    fn line_starts_locate_every_offset() {
        let source = "ab\n\u{e7}d\n\nx";
        let lines = LineStarts::new(Path::new("f.toml"), source);
        let at = |offset| {
            let location = lines.location(offset);
            (location.line, location.column)
        };
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(2), (1, 3), "the newline ends its line");
        assert_eq!(at(3), (2, 1));
        assert_eq!(at(5), (2, 2), "columns count characters, not bytes");
        assert_eq!(at(7), (3, 1));
        assert_eq!(at(8), (4, 1));
        assert_eq!(at(9), (4, 2), "the end of the file");
        assert_eq!(at(1000), (4, 2), "past the end is the end");
        assert_eq!(lines.location(0).file, Path::new("f.toml"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the bytes, parsing returns a policy or located errors; it never panics
            /// and every location lies inside the file.
            #[test]
            fn any_input_gives_a_policy_or_located_errors(text in "(\\PC|\n){0,200}") {
                if let Err(errors) = parse(&[("fuzz.toml", &text)]) {
                    let lines = text.split('\n').count().max(1);
                    for error in errors.0 {
                        prop_assert!(error.location.line >= 1 && error.location.line <= lines, "{error}");
                        prop_assert!(error.location.column >= 1);
                    }
                }
            }

            /// The line index gives what counting newlines from the start of the file gives.
            #[test]
            fn line_starts_agree_with_counting(text in "(\\PC|\n){0,100}", pick in any::<prop::sample::Index>()) {
                let offsets: Vec<usize> = text.char_indices().map(|(offset, _)| offset).chain([text.len()]).collect();
                let offset = offsets[pick.index(offsets.len())];
                let before = &text[..offset];
                let line = before.matches('\n').count() + 1;
                let column = before[before.rfind('\n').map_or(0, |newline| newline + 1)..].chars().count() + 1;
                let location = LineStarts::new(Path::new("p.toml"), &text).location(offset);
                prop_assert_eq!((location.line, location.column), (line, column));
            }
        }
    }
}
