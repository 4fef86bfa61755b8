//! Telling the person in front of the screen that a program was refused, in the words of the
//! rule that refused it: a desktop notification through `blocker notify`, a per-user agent the
//! daemon sends each user's refusals to over `notify.sock`, and a line on the refused process's
//! terminal.
//!
//! The daemon's side ([`dispatch`]) runs on a thread of its own behind a bounded queue, so that
//! nothing here can hold up the event loop, and folds repeats of the same (user, rule, file)
//! within [`FOLD_WINDOW`] into one notice with a count before doing any work for them.

pub mod agent;
pub mod dispatch;
mod terminal;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Where the daemon whose status document is `status_file` serves agents: [`DEFAULT_SOCKET`]
/// for the default document, else beside it with the extension `notify.sock`, so that daemons
/// with documents of their own (tests) never share one.
pub fn socket_for(status_file: &Path) -> PathBuf {
    if status_file == Path::new(crate::status::DEFAULT_STATUS_FILE) {
        PathBuf::from(DEFAULT_SOCKET)
    } else {
        status_file.with_extension("notify.sock")
    }
}

/// The socket agents connect to by default.
pub const DEFAULT_SOCKET: &str = "/run/blocker/notify.sock";

/// Repeats of one refusal within this long after it was told are told once, with a count.
pub const FOLD_WINDOW: Duration = Duration::from_secs(10);

/// Longest line the daemon sends an agent: every field of a notice is bounded (the path by the
/// kernel's, the message and URL by the policy's limits), escaped at most fourfold.
pub const MAX_NOTICE_BYTES: usize = 64 * 1024;

/// What the daemon sends an agent about one refusal, or a run of folded repeats: one JSON line.
/// Text fields are already escaped for people (see [`crate::escape`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Which refusals this notice folds: the same key replaces the notification shown before.
    pub key: String,
    /// The refused program's path.
    pub program: String,
    /// `deny` or `audit`.
    pub action: String,
    pub rule: String,
    /// The rule's `message`, else its `reason`, else [`DEFAULT_TEXT`].
    pub text: String,
    /// The rule's URL with its placeholders filled in.
    pub url: Option<String>,
    /// Refusals folded into this notice, at least 1.
    pub count: u64,
}

/// What a person reads when the rule says nothing to them.
pub const DEFAULT_TEXT: &str = "The policy of this device does not allow this program. \
                                Ask your administrator if you need it.";

impl Notice {
    /// The notification's summary.
    pub fn summary(&self) -> String {
        let name = self.program.rsplit('/').next().unwrap_or(&self.program);
        match self.action.as_str() {
            "audit" => format!("{name} is not allowed on this device (reported)"),
            _ => format!("{name} is blocked on this device"),
        }
    }

    /// The notification's body: the rule's words, and how often it happened.
    pub fn body(&self) -> String {
        if self.count > 1 {
            format!(
                "{}\n({} attempts to run {})",
                self.text, self.count, self.program
            )
        } else {
            self.text.clone()
        }
    }

    /// The line on a terminal, without its newline.
    pub fn terminal_line(&self) -> String {
        let verdict = match self.action.as_str() {
            "audit" => "is not allowed on this device (reported)",
            _ => "is blocked on this device",
        };
        format!("blocker: {} {verdict}: {}", self.program, self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(action: &str, count: u64) -> Notice {
        Notice {
            key: "k".to_owned(),
            program: "/opt/wechat/wechat".to_owned(),
            action: action.to_owned(),
            rule: "wechat".to_owned(),
            text: "Messaging apps are not allowed here.".to_owned(),
            url: None,
            count,
        }
    }

    #[test]
    fn notices_speak_of_the_program_and_the_rules_words() {
        let once = notice("deny", 1);
        assert_eq!(once.summary(), "wechat is blocked on this device");
        assert_eq!(once.body(), "Messaging apps are not allowed here.");
        assert_eq!(
            once.terminal_line(),
            "blocker: /opt/wechat/wechat is blocked on this device: Messaging apps are not \
             allowed here."
        );
        let folded = notice("audit", 100);
        assert_eq!(
            folded.summary(),
            "wechat is not allowed on this device (reported)"
        );
        assert!(folded
            .body()
            .ends_with("(100 attempts to run /opt/wechat/wechat)"));
    }

    #[test]
    fn the_socket_is_beside_the_status_document() {
        assert_eq!(
            socket_for(Path::new(crate::status::DEFAULT_STATUS_FILE)),
            Path::new(DEFAULT_SOCKET)
        );
        assert_eq!(
            socket_for(Path::new("/tmp/test-1.json")),
            Path::new("/tmp/test-1.notify.sock")
        );
    }
}
