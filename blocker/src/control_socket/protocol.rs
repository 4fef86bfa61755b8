//! What `blocker stop` and `blocker policy` say to the daemon over its control socket, and what
//! it answers: one JSON line each way, then the daemon closes the connection.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Longest request line the daemon reads; anything longer is refused unread. A policy file
/// of the largest size (`control::MAX_POLICY_FILE_BYTES`) of hashes fits, JSON-quoted.
pub const MAX_REQUEST_BYTES: usize = 20 << 20;
/// Longest reply line a client reads (every problem of a policy, one a line, fits).
pub const MAX_REPLY_BYTES: usize = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Stop as on SIGTERM, once the reply is sent. (Braces, so that unknown fields are
    /// refused here too.)
    Stop {},
    /// Write `files` into the daemon's policy directory, replacing files of the same name, if
    /// the policy it then holds is valid.
    Install { files: Vec<PolicyFile> },
    /// Remove the policy files `names` from the daemon's policy directory, if what remains is a
    /// valid policy.
    Remove { names: Vec<String> },
}

/// A policy file to install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Its name in the policy directory.
    pub name: String,
    /// Where the client read it: errors name the file as the user gave it.
    pub origin: String,
    pub contents: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Done: what the daemon did, a line each, for the client to print.
    Done { said: Vec<String> },
    /// Nothing was done, and why.
    Refused { error: String },
}

impl Request {
    /// What a log line says of the request; names are the client's, so escaped.
    pub fn summary(&self) -> String {
        match self {
            Request::Stop {} => "stop".to_owned(),
            Request::Install { files } => {
                format!("install {}", listed(files.iter().map(|file| &file.name)))
            }
            Request::Remove { names } => format!("remove {}", listed(names.iter())),
        }
    }
}

fn listed<'a>(names: impl Iterator<Item = &'a String>) -> String {
    names
        .map(|name| crate::escape::escaped(name).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `message` as one line: JSON never holds a raw newline.
pub fn encode(message: &impl Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("control messages serialize");
    line.push(b'\n');
    line
}

/// The message in one line read from the socket (with or without its newline).
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, String> {
    serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(line))
        .map_err(|error| format!("not a blocker control message: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_round_trip_as_single_lines() {
        let requests = [
            Request::Stop {},
            Request::Install {
                files: vec![PolicyFile {
                    name: "a.toml".to_owned(),
                    origin: "/tmp/a\nb/a.toml".to_owned(),
                    contents: "name = \"a\"\n[[rule]]\n".to_owned(),
                }],
            },
            Request::Remove {
                names: vec!["a.toml".to_owned()],
            },
        ];
        for request in requests {
            let line = encode(&request);
            assert_eq!(line.iter().filter(|&&byte| byte == b'\n').count(), 1);
            assert_eq!(decode::<Request>(&line), Ok(request));
        }
        let reply = Reply::Refused {
            error: "a.toml:1:1: x\nnothing was changed".to_owned(),
        };
        assert_eq!(decode::<Reply>(&encode(&reply)), Ok(reply));
    }

    #[test]
    fn unknown_requests_and_fields_are_refused() {
        assert!(decode::<Request>(br#"{"request":"reboot"}"#).is_err());
        assert!(decode::<Request>(br#"{"request":"stop","force":true}"#).is_err());
        assert!(decode::<Request>(b"stop").is_err());
        assert_eq!(
            Request::Remove {
                names: vec!["a\u{1b}[2J.toml".to_owned(), "b.toml".to_owned()]
            }
            .summary(),
            "remove a\\x1b[2J.toml, b.toml"
        );
    }
}
