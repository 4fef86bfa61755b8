//! The systemd journal, spoken to in journald's native protocol
//! (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>): one datagram per record, with the readable
//! summary as `MESSAGE` and every field of the JSON record as `BLOCKER_<FIELD>`, so that
//! `journalctl BLOCKER_RULE=wechat` finds a rule's events.

use std::{
    fs::File,
    io::{self, Write},
    mem::MaybeUninit,
    os::{fd::AsFd, unix::net::UnixDatagram},
    path::Path,
    sync::Arc,
};

use rustix::{
    fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags},
    net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags},
};
use serde_json::Value;

use super::{
    queue::{Sink, Unwritten},
    Emitted,
};
use crate::{
    escape::{is_hex_of_sibling, Lossless},
    events::{Enforcement, Record},
};

pub const SOCKET: &str = "/run/systemd/journal/socket";
/// `SYSLOG_IDENTIFIER`, hence `journalctl -t blocker`.
pub const IDENTIFIER: &str = "blocker";
const FIELD_PREFIX: &str = "BLOCKER";

pub struct Journald {
    socket: UnixDatagram,
}

impl Journald {
    pub fn connect(socket_path: &Path) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(socket_path)?;
        Ok(Self { socket })
    }

    fn send(&self, entry: &[u8]) -> io::Result<()> {
        match self.socket.send(entry) {
            Ok(_) => Ok(()),
            // Too large for one datagram (a reload error naming many problems, say).
            Err(error) if matches!(error.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                self.send_in_memfd(entry)
            }
            Err(error) => Err(error),
        }
    }

    /// The protocol's way for large entries: an empty datagram carrying a sealed memfd that
    /// holds the entry.
    fn send_in_memfd(&self, entry: &[u8]) -> io::Result<()> {
        let memfd = memfd_create(
            "blocker-journal-entry",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let mut file = File::from(memfd);
        file.write_all(entry)?;
        // journald only accepts a memfd nobody can change any more.
        fcntl_add_seals(
            &file,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
        )?;
        let descriptors = [file.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&descriptors));
        sendmsg(&self.socket, &[], &mut control, SendFlags::empty())?;
        Ok(())
    }
}

impl Sink for Journald {
    /// One datagram per record: journald takes no batches.
    fn write(&mut self, records: &[Arc<Emitted>]) -> Result<(), Unwritten> {
        for (written, emitted) in records.iter().enumerate() {
            self.send(&entry(&emitted.record))
                .map_err(|error| Unwritten { written, error })?;
        }
        Ok(())
    }
}

/// A record as a journal entry in the native protocol's serialization.
pub fn entry(record: &Record) -> Vec<u8> {
    let mut entry = Vec::new();
    field(&mut entry, "MESSAGE", record.summary().as_bytes());
    field(
        &mut entry,
        "PRIORITY",
        priority(record).to_string().as_bytes(),
    );
    field(&mut entry, "SYSLOG_IDENTIFIER", IDENTIFIER.as_bytes());
    let json = serde_json::to_value(record).expect("records serialize");
    structured_fields(&mut entry, FIELD_PREFIX, &json);
    entry
}

/// syslog levels: refusals and lost records are warnings, audits notices.
fn priority(record: &Record) -> u8 {
    const ERR: u8 = 3;
    const WARNING: u8 = 4;
    const NOTICE: u8 = 5;
    const INFO: u8 = 6;
    match record {
        Record::Exec(exec) if exec.enforcement == Enforcement::None => NOTICE,
        Record::Exec(_)
        | Record::Tamper(_)
        | Record::EventsLost { .. }
        | Record::RecordsDropped { .. }
        | Record::DaemonLost { .. }
        | Record::Unloaded { .. } => WARNING,
        Record::ReloadFailed { .. } => ERR,
        Record::Stopped { .. } => NOTICE,
        Record::Started {
            adoption_refused: Some(_),
            ..
        } => WARNING,
        Record::Started { .. } | Record::Reloaded { .. } => INFO,
        Record::PolicyChanged { .. } => NOTICE,
    }
}

/// A JSON value's fields as journal fields: objects' members get their upper-cased key
/// appended to the name, arrays repeat the field (journald keeps every value), null is left out.
fn structured_fields(entry: &mut Vec<u8>, name: &str, value: &Value) {
    match value {
        Value::Null => {}
        Value::Object(members) => {
            for (key, member) in members {
                if is_hex_of_sibling(members, key) {
                    continue;
                }
                let name = format!("{name}_{}", field_name(key));
                // Journal fields hold any bytes: a field that is not UTF-8 goes in exactly.
                match Lossless::from_json(value, key) {
                    Some(kept) if kept.hex.is_some() => field(entry, &name, &kept.bytes()),
                    _ => structured_fields(entry, &name, member),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                structured_fields(entry, name, item);
            }
        }
        Value::String(text) => field(entry, name, text.as_bytes()),
        Value::Bool(_) | Value::Number(_) => field(entry, name, value.to_string().as_bytes()),
    }
}

/// journald accepts upper-case letters, digits and underscores in field names.
fn field_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn field(entry: &mut Vec<u8>, name: &str, value: &[u8]) {
    entry.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        // NAME, newline, the length as 64-bit little-endian, the value.
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value);
    entry.push(b'\n');
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Seek},
        os::fd::OwnedFd,
    };

    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

    use super::*;
    use crate::{
        events::{Caller, Circumstances, ExecRecord},
        kernel::coverage::Features,
    };

    impl Journald {
        fn write_record(&mut self, record: &Record) -> io::Result<()> {
            self.send(&entry(record))
        }
    }

    /// Fields of a native-protocol entry, in order.
    fn parse(mut entry: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while !entry.is_empty() {
            let end = entry.iter().position(|&b| b == b'\n' || b == b'=').unwrap();
            let name = String::from_utf8(entry[..end].to_vec()).unwrap();
            let value;
            if entry[end] == b'=' {
                let newline = entry[end..].iter().position(|&b| b == b'\n').unwrap() + end;
                value = entry[end + 1..newline].to_vec();
                entry = &entry[newline + 1..];
            } else {
                let length_bytes: [u8; 8] = entry[end + 1..end + 9].try_into().unwrap();
                let length = u64::from_le_bytes(length_bytes) as usize;
                value = entry[end + 9..end + 9 + length].to_vec();
                assert_eq!(entry[end + 9 + length], b'\n');
                entry = &entry[end + 10 + length..];
            }
            fields.push((name, String::from_utf8(value).unwrap()));
        }
        fields
    }

    fn value<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
        let found: Vec<_> = fields.iter().filter(|(n, _)| n == name).collect();
        assert_eq!(found.len(), 1, "{name} in {fields:?}");
        &found[0].1
    }

    fn exec_record() -> ExecRecord {
        ExecRecord {
            time: "2026-11-28T08:39:20.546048089Z".to_owned(),
            action: "deny",
            enforcement: Enforcement::Eperm,
            backend: "lsm",
            operation: "exec",
            rule: "wechat".to_owned(),
            policy: "government-devices".to_owned(),
            reason: None,
            url: None,
            caller: Caller {
                pid: 9900,
                tid: 9901,
                ppid: 1,
                uid: 1000,
                gid: 100,
                comm: "bash".to_owned(),
                comm_hex: None,
            },
            path: "/opt/wechat/wechat".to_owned(),
            path_hex: None,
            path_truncated: false,
            device: "254:1".to_owned(),
            inode: 42,
            sha256: None,
            untrusted_path: None,
            circumstances: Circumstances::default(),
            telling: Default::default(),
        }
    }

    /// A socket standing in for journald's, and a client connected to it.
    fn journal() -> (tempfile::TempDir, UnixDatagram, Journald) {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let client = Journald::connect(&path).unwrap();
        (temp, server, client)
    }

    #[test]
    fn hostile_names_are_escaped_in_the_message_and_exact_in_fields() {
        let name = b"/tmp/\x1b[2J\nblocker: fake \xff";
        let kept = Lossless::new(name);
        let comm = Lossless::new(b"\x1b]0;x\x07");
        let mut exec = exec_record();
        exec.path = kept.text;
        exec.path_hex = kept.hex;
        exec.caller.comm = comm.text;
        let entry = entry(&Record::Exec(exec));
        let message = entry.split(|&b| b == b'\n').next().unwrap();
        assert_eq!(
            String::from_utf8(message.to_vec()).unwrap(),
            "MESSAGE=denied exec of /tmp/\\x1b[2J\\nblocker: fake \\xff by pid 9900 \
             (\\x1b]0;x\\x07, uid 1000) under rule wechat"
        );
        let exact_field = |field: &str, value: &[u8]| {
            let mut expected = format!("{field}\n").into_bytes();
            expected.extend_from_slice(&(value.len() as u64).to_le_bytes());
            expected.extend_from_slice(value);
            expected.push(b'\n');
            entry
                .windows(expected.len())
                .any(|window| window == expected)
        };
        assert!(exact_field("BLOCKER_PATH", name));
        assert!(!entry.windows(16).any(|w| w == b"BLOCKER_PATH_HEX"));
        let comm_field = b"BLOCKER_COMM=\x1b]0;x\x07\n";
        assert!(entry.windows(comm_field.len()).any(|w| w == comm_field));
    }

    #[test]
    fn an_exec_arrives_with_its_message_priority_and_structured_fields() {
        let (_temp, server, mut client) = journal();
        let record = Record::Exec(exec_record());
        client.write_record(&record).unwrap();
        let mut buffer = vec![0; 64 * 1024];
        let length = server.recv(&mut buffer).unwrap();
        let fields = parse(&buffer[..length]);

        assert_eq!(value(&fields, "MESSAGE"), record.summary());
        assert_eq!(value(&fields, "PRIORITY"), "4");
        assert_eq!(value(&fields, "SYSLOG_IDENTIFIER"), "blocker");
        for (name, expected) in [
            ("BLOCKER_KIND", "exec"),
            ("BLOCKER_TIME", "2026-11-28T08:39:20.546048089Z"),
            ("BLOCKER_RULE", "wechat"),
            ("BLOCKER_POLICY", "government-devices"),
            ("BLOCKER_ACTION", "deny"),
            ("BLOCKER_ENFORCEMENT", "eperm"),
            ("BLOCKER_BACKEND", "lsm"),
            ("BLOCKER_OPERATION", "exec"),
            ("BLOCKER_PID", "9900"),
            ("BLOCKER_TID", "9901"),
            ("BLOCKER_PPID", "1"),
            ("BLOCKER_UID", "1000"),
            ("BLOCKER_GID", "100"),
            ("BLOCKER_COMM", "bash"),
            ("BLOCKER_PATH", "/opt/wechat/wechat"),
            ("BLOCKER_PATH_TRUNCATED", "false"),
            ("BLOCKER_DEVICE", "254:1"),
            ("BLOCKER_INODE", "42"),
        ] {
            assert_eq!(value(&fields, name), expected, "{name}");
        }
        assert!(
            !fields.iter().any(|(name, _)| name == "BLOCKER_REASON"),
            "a null reason is left out: {fields:?}"
        );
    }

    #[test]
    fn multi_line_values_lists_and_maps_are_encoded_as_the_protocol_says() {
        let (_temp, server, mut client) = journal();
        client
            .write_record(&Record::ReloadFailed {
                time: "2026-11-28T08:39:20Z".to_owned(),
                error: "a.toml:1:1: first\nb.toml:2:2: second".to_owned(),
            })
            .unwrap();
        client
            .write_record(&Record::Started {
                time: "2026-11-28T08:39:20Z".to_owned(),
                backend: "kill",
                backend_reason: "forced".to_owned(),
                policies: vec!["one".to_owned(), "two".to_owned()],
                rules: 3,
                entries: 4,
                pinned: None,
                adopted: false,
                adoption_refused: None,
                protected: false,
                features: Features::kill_backend(),
            })
            .unwrap();
        client
            .write_record(&Record::Stopped {
                time: "2026-11-28T08:39:20Z".to_owned(),
                events: 5,
                events_lost: 0,
                pinned: None,
                records_dropped: [("file", 0), ("stdout", 7)].into_iter().collect(),
            })
            .unwrap();
        let mut buffer = vec![0; 64 * 1024];

        let length = server.recv(&mut buffer).unwrap();
        let failed = parse(&buffer[..length]);
        assert_eq!(
            value(&failed, "BLOCKER_ERROR"),
            "a.toml:1:1: first\nb.toml:2:2: second"
        );
        assert_eq!(value(&failed, "PRIORITY"), "3");
        assert!(value(&failed, "MESSAGE").ends_with("second"));

        let length = server.recv(&mut buffer).unwrap();
        let started = parse(&buffer[..length]);
        let policies: Vec<_> = started
            .iter()
            .filter(|(name, _)| name == "BLOCKER_POLICIES")
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(policies, ["one", "two"]);
        assert_eq!(value(&started, "PRIORITY"), "6");

        let length = server.recv(&mut buffer).unwrap();
        let stopped = parse(&buffer[..length]);
        assert_eq!(value(&stopped, "BLOCKER_RECORDS_DROPPED_STDOUT"), "7");
        assert_eq!(value(&stopped, "BLOCKER_RECORDS_DROPPED_FILE"), "0");
    }

    #[test]
    fn a_start_that_replaced_pins_it_refused_is_a_warning_saying_why() {
        let (_temp, server, mut client) = journal();
        let reason = "link pin `file_mprotect`: it attaches this build's bprm_check_content \
                      program instead";
        let record = Record::Started {
            time: "2026-11-28T08:39:20Z".to_owned(),
            backend: "lsm",
            backend_reason: "`bpf` is an active LSM".to_owned(),
            policies: vec!["one".to_owned()],
            rules: 1,
            entries: 1,
            pinned: Some("/sys/fs/bpf/blocker/0011223344556677".to_owned()),
            adopted: false,
            adoption_refused: Some(reason.to_owned()),
            protected: true,
            features: Features::kill_backend(),
        };
        client.write_record(&record).unwrap();
        let mut buffer = vec![0; 64 * 1024];
        let length = server.recv(&mut buffer).unwrap();
        let started = parse(&buffer[..length]);
        assert_eq!(value(&started, "PRIORITY"), "4");
        assert_eq!(value(&started, "BLOCKER_ADOPTION_REFUSED"), reason);
        assert!(value(&started, "MESSAGE").ends_with(reason), "{started:?}");
    }

    #[test]
    fn an_entry_too_large_for_a_datagram_goes_in_a_sealed_memfd() {
        let (_temp, server, mut client) = journal();
        let error = "x".repeat(4 * 1024 * 1024);
        client
            .write_record(&Record::ReloadFailed {
                time: "2026-11-28T08:39:20Z".to_owned(),
                error: error.clone(),
            })
            .unwrap();

        let mut payload = [0u8; 16];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = recvmsg(
            &server,
            &mut [io::IoSliceMut::new(&mut payload)],
            &mut control,
            RecvFlags::empty(),
        )
        .unwrap();
        assert_eq!(received.bytes, 0, "the datagram itself is empty");
        let descriptors: Vec<OwnedFd> = control
            .drain()
            .flat_map(|message| match message {
                RecvAncillaryMessage::ScmRights(descriptors) => descriptors.collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(descriptors.len(), 1);
        let seals = rustix::fs::fcntl_get_seals(&descriptors[0]).unwrap();
        assert!(seals.contains(SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW));

        let mut entry = Vec::new();
        let mut memfd = File::from(descriptors.into_iter().next().unwrap());
        // The sender's offset is shared and at the end.
        memfd.seek(io::SeekFrom::Start(0)).unwrap();
        memfd.read_to_end(&mut entry).unwrap();
        let fields = parse(&entry);
        assert_eq!(value(&fields, "BLOCKER_ERROR"), error);
        assert_eq!(value(&fields, "SYSLOG_IDENTIFIER"), "blocker");
    }
}
