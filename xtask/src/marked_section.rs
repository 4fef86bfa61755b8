//! Parts of the documentation that xtask writes itself from what it measured, never by hand:
//! the kernel table in the README (`cargo xtask test`) and the latest results in
//! docs/PERFORMANCE.md (`cargo xtask bench`). Each lies between two marker comments, which
//! Markdown does not show; everything outside them is left as it is.

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};

/// The two comments around a written part, each on a line of its own.
pub struct Markers {
    pub begin: &'static str,
    pub end: &'static str,
}

impl Markers {
    /// `document` with what lies between the markers replaced by `content` (which ends in a
    /// newline).
    pub fn replace(&self, document: &str, content: &str) -> Result<String> {
        let Markers { begin, end } = self;
        let (Some(begin_at), Some(end_at)) = (document.find(begin), document.find(end)) else {
            bail!("its markers `{begin}` and `{end}` are missing");
        };
        if end_at < begin_at {
            bail!("`{end}` comes before `{begin}`");
        }
        Ok(format!(
            "{}{begin}\n{content}{}",
            &document[..begin_at],
            &document[end_at..]
        ))
    }

    /// Rewrites the part of `file` between the markers with `content`.
    pub fn rewrite(&self, file: &Path, content: &str) -> Result<()> {
        let document =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let updated = self
            .replace(&document, content)
            .with_context(|| format!("in {}", file.display()))?;
        fs::write(file, updated).with_context(|| format!("writing {}", file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKERS: Markers = Markers {
        begin: "<!-- part -->",
        end: "<!-- part end -->",
    };

    #[test]
    fn replaces_only_what_is_between_the_markers() {
        let document = "before\n<!-- part -->\nold\n<!-- part end -->\nafter\n";
        assert_eq!(
            MARKERS.replace(document, "new\n").unwrap(),
            "before\n<!-- part -->\nnew\n<!-- part end -->\nafter\n"
        );
    }

    #[test]
    fn refuses_a_document_without_both_markers_in_order() {
        assert!(MARKERS.replace("no markers", "new\n").is_err());
        assert!(MARKERS.replace("<!-- part -->\nold\n", "new\n").is_err());
        let reversed = "<!-- part end -->\nold\n<!-- part -->\n";
        assert!(MARKERS.replace(reversed, "new\n").is_err());
    }

    #[test]
    fn rewrites_a_file_in_place() {
        let file = std::env::temp_dir().join(format!("xtask-marked-{}.md", std::process::id()));
        fs::write(&file, "a\n<!-- part -->\nold\n<!-- part end -->\nb\n").unwrap();
        MARKERS.rewrite(&file, "new\n").unwrap();
        let written = fs::read_to_string(&file).unwrap();
        fs::remove_file(&file).unwrap();
        assert_eq!(written, "a\n<!-- part -->\nnew\n<!-- part end -->\nb\n");
    }
}
