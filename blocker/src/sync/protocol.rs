//! The messages of Santa's sync protocol (`santa.sync.v1`, in its JSON form) that blocker
//! sends and reads. Responses are read by hand from JSON values, leniently where the protocol
//! is (unknown fields, enums by name or number, deprecated spellings) and strictly where a
//! mistake would change what is enforced: every malformed field is an error naming its stage
//! and field, and nothing of that sync is applied.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::scan::{parse_sha256, to_hex};

/// Events per upload when the server names no batch size (Santa's default).
pub const DEFAULT_BATCH_SIZE: usize = 50;
/// The largest batch size taken from a server.
const MAX_BATCH_SIZE: usize = 10_000;
/// Longest rule identifier taken (a SHA-256 is 64; Apple's signing ids are longer).
const MAX_IDENTIFIER_BYTES: usize = 1024;
/// Longest `custom_msg` or `custom_url` taken: they travel in every event of their rule.
const MAX_CUSTOM_BYTES: usize = 4096;

/// A sync stage: its name in the URL and in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Preflight,
    EventUpload,
    RuleDownload,
    Postflight,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Preflight => "preflight",
            Stage::EventUpload => "eventupload",
            Stage::RuleDownload => "ruledownload",
            Stage::Postflight => "postflight",
        }
    }
}

/// An enum of the protocol with its JSON names (current and deprecated) and number; a value's
/// first name is the one blocker writes.
pub trait ProtocolEnum: Copy + PartialEq + 'static {
    const VALUES: &'static [(&'static str, i64, Self)];

    /// The name the protocol spells this value with.
    fn name(self) -> &'static str {
        Self::VALUES
            .iter()
            .find(|(_, _, candidate)| *candidate == self)
            .map(|(name, _, _)| *name)
            .expect("every value has a name")
    }
}

/// Santa's client modes. blocker enforces its blocklist in every mode: `MONITOR` is Santa's
/// "unknown programs run, the blocklist is enforced", which is blocker's `enforce` mode, not its
/// `monitor` dry run; `LOCKDOWN` (unknown programs refused) is not implemented yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ClientMode {
    Monitor,
    Lockdown,
    Standalone,
}

impl ProtocolEnum for ClientMode {
    const VALUES: &'static [(&'static str, i64, Self)] = &[
        ("MONITOR", 1, Self::Monitor),
        ("LOCKDOWN", 2, Self::Lockdown),
        ("STANDALONE", 3, Self::Standalone),
    ];
}

/// How the downloaded rules combine with those of earlier syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncType {
    /// On top of the rules kept: add, replace, remove.
    #[serde(rename = "NORMAL")]
    Normal,
    /// Instead of the rules kept (Santa keeps transitive rules, which blocker has none of).
    #[serde(rename = "CLEAN")]
    Clean,
    /// Instead of the rules kept.
    #[serde(rename = "CLEAN_ALL")]
    CleanAll,
}

impl SyncType {
    pub fn is_clean(self) -> bool {
        self != Self::Normal
    }
}

impl ProtocolEnum for SyncType {
    const VALUES: &'static [(&'static str, i64, Self)] = &[
        ("NORMAL", 1, Self::Normal),
        ("SYNC_TYPE_UNSPECIFIED", 0, Self::Normal),
        ("normal", 1, Self::Normal),
        ("CLEAN", 2, Self::Clean),
        ("clean", 2, Self::Clean),
        ("CLEAN_ALL", 3, Self::CleanAll),
        ("clean_all", 3, Self::CleanAll),
    ];
}

/// What a rule's identifier names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleType {
    /// The SHA-256 of the whole file: the only type with a meaning on Linux.
    Binary,
    Certificate,
    TeamId,
    SigningId,
    CdHash,
}

impl ProtocolEnum for RuleType {
    const VALUES: &'static [(&'static str, i64, Self)] = &[
        ("BINARY", 1, Self::Binary),
        ("CERTIFICATE", 2, Self::Certificate),
        ("TEAMID", 3, Self::TeamId),
        ("SIGNINGID", 4, Self::SigningId),
        ("CDHASH", 5, Self::CdHash),
    ];
}

/// What a rule asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RulePolicy {
    Allowlist,
    /// An allowlist entry whose outputs Santa allows too; blocker has no transitive rules, so
    /// as Santa without them, it is an allowlist entry.
    AllowlistCompiler,
    Blocklist,
    /// A ban the user is not notified of.
    SilentBlocklist,
    Remove,
    /// A CEL program deciding at exec time: blocker evaluates none, so these are skipped.
    Cel,
}

impl ProtocolEnum for RulePolicy {
    const VALUES: &'static [(&'static str, i64, Self)] = &[
        ("ALLOWLIST", 1, Self::Allowlist),
        ("WHITELIST", 1, Self::Allowlist),
        ("ALLOWLIST_COMPILER", 2, Self::AllowlistCompiler),
        ("WHITELIST_COMPILER", 2, Self::AllowlistCompiler),
        ("BLOCKLIST", 3, Self::Blocklist),
        ("BLACKLIST", 3, Self::Blocklist),
        ("SILENT_BLOCKLIST", 4, Self::SilentBlocklist),
        ("SILENT_BLACKLIST", 4, Self::SilentBlocklist),
        ("REMOVE", 5, Self::Remove),
        ("CEL", 6, Self::Cel),
    ];
}

/// `field` of `object`, an enum given by name or number; `None` if absent or null.
fn enum_field<T: ProtocolEnum>(object: &Map<String, Value>, field: &str) -> Result<Option<T>> {
    let found = match object.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(name)) => T::VALUES.iter().find(|(known, _, _)| known == name),
        Some(Value::Number(number)) => {
            let number = number.as_i64();
            T::VALUES
                .iter()
                .find(|(_, known, _)| Some(*known) == number)
        }
        Some(other) => bail!("{field}: expected a name, found {}", kind(other)),
    };
    match found {
        Some((_, _, value)) => Ok(Some(*value)),
        None => {
            let names: Vec<&str> = T::VALUES.iter().map(|(name, _, _)| *name).collect();
            bail!("{field}: {} is none of {}", object[field], names.join(", "))
        }
    }
}

fn string_field<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<&'a str>> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.len() <= max => Ok(Some(text)),
        Some(Value::String(text)) => bail!("{field}: {} bytes, more than {max}", text.len()),
        Some(other) => bail!("{field}: expected a string, found {}", kind(other)),
    }
}

fn bool_field(object: &Map<String, Value>, field: &str) -> Result<Option<bool>> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(other) => bail!("{field}: expected true or false, found {}", kind(other)),
    }
}

fn count_field(object: &Map<String, Value>, field: &str) -> Result<Option<u64>> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number
            .as_u64()
            .map(Some)
            .with_context(|| format!("{field}: {number} is not a count")),
        Some(other) => bail!("{field}: expected a number, found {}", kind(other)),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A response body as the JSON object every stage answers with.
fn response_object(body: &[u8]) -> Result<Map<String, Value>> {
    let value: Value = serde_json::from_slice(body).context("the response is not JSON")?;
    match value {
        Value::Object(object) => Ok(object),
        other => bail!("the response is {}, not a JSON object", kind(&other)),
    }
}

#[derive(Serialize)]
pub struct PreflightRequest<'a> {
    pub serial_num: &'a str,
    pub hostname: &'a str,
    pub os_version: &'a str,
    pub os_build: &'a str,
    pub model_identifier: &'a str,
    pub santa_version: &'a str,
    pub primary_user: &'a str,
    pub client_mode: ClientMode,
    pub request_clean_sync: bool,
    pub binary_rule_count: usize,
    pub certificate_rule_count: usize,
    pub compiler_rule_count: usize,
    pub transitive_rule_count: usize,
    pub teamid_rule_count: usize,
    pub signingid_rule_count: usize,
    pub cdhash_rule_count: usize,
    pub machine_id: &'a str,
    pub rules_hash: &'a str,
}

/// What a preflight response sets for this sync.
#[derive(Debug, PartialEq, Eq)]
pub struct Preflight {
    pub client_mode: Option<ClientMode>,
    pub sync_type: SyncType,
    pub batch_size: usize,
}

impl Preflight {
    /// Reads a preflight response; `requested_clean` is what the request asked for, which
    /// turns the deprecated `clean_sync` into `CLEAN_ALL` (as Santa does).
    pub fn read(body: &[u8], requested_clean: bool) -> Result<Self> {
        let read = || -> Result<Self> {
            let object = response_object(body)?;
            let client_mode = enum_field(&object, "client_mode")?;
            let deprecated_clean = bool_field(&object, "clean_sync")?.unwrap_or(false);
            let sync_type = match enum_field(&object, "sync_type")? {
                Some(sync_type) => sync_type,
                None if deprecated_clean && requested_clean => SyncType::CleanAll,
                None if deprecated_clean => SyncType::Clean,
                None => SyncType::Normal,
            };
            let batch_size = match count_field(&object, "batch_size")? {
                None | Some(0) => DEFAULT_BATCH_SIZE,
                Some(size) => usize::try_from(size)
                    .ok()
                    .filter(|&size| size <= MAX_BATCH_SIZE)
                    .with_context(|| format!("batch_size: {size} is more than {MAX_BATCH_SIZE}"))?,
            };
            Ok(Self {
                client_mode,
                sync_type,
                batch_size,
            })
        };
        read().context(Stage::Preflight.name())
    }
}

/// One rule as the server sent it, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadedRule {
    pub identifier: String,
    pub policy: RulePolicy,
    pub rule_type: RuleType,
    pub custom_msg: Option<String>,
    pub custom_url: Option<String>,
}

/// One page of a rule download.
#[derive(Debug, PartialEq, Eq)]
pub struct RulePage {
    pub rules: Vec<DownloadedRule>,
    /// Set when more pages follow: sent back to ask for the next.
    pub cursor: Option<String>,
}

#[derive(Serialize)]
pub struct RuleDownloadRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<&'a str>,
    pub machine_id: &'a str,
}

impl RulePage {
    /// Reads page `number` (from 1) of a rule download; errors name the page, and the rule's
    /// index in it.
    pub fn read(body: &[u8], number: usize) -> Result<Self> {
        let read = || -> Result<Self> {
            let object = response_object(body)?;
            let cursor = string_field(&object, "cursor", MAX_IDENTIFIER_BYTES)?
                .filter(|cursor| !cursor.is_empty())
                .map(str::to_owned);
            let rules = match object.get("rules") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(rules)) => rules
                    .iter()
                    .enumerate()
                    .map(|(index, rule)| read_rule(rule).with_context(|| format!("rules[{index}]")))
                    .collect::<Result<_>>()?,
                Some(other) => bail!("rules: expected an array, found {}", kind(other)),
            };
            Ok(Self { rules, cursor })
        };
        read().with_context(|| format!("{}: page {number}", Stage::RuleDownload.name()))
    }
}

fn read_rule(rule: &Value) -> Result<DownloadedRule> {
    let Value::Object(rule) = rule else {
        bail!("expected an object, found {}", kind(rule));
    };
    let identifier = string_field(rule, "identifier", MAX_IDENTIFIER_BYTES)?
        .filter(|identifier| !identifier.is_empty())
        .or(string_field(rule, "sha256", MAX_IDENTIFIER_BYTES)?)
        .context("identifier: missing")?;
    let policy = enum_field(rule, "policy")?.context("policy: missing")?;
    let rule_type = enum_field(rule, "rule_type")?.context("rule_type: missing")?;
    let custom = |field| -> Result<Option<String>> {
        Ok(string_field(rule, field, MAX_CUSTOM_BYTES)?
            .filter(|text| !text.is_empty())
            .map(str::to_owned))
    };
    let identifier = if rule_type == RuleType::Binary {
        let hash = parse_sha256(identifier).map_err(|problem| {
            anyhow!("identifier: {identifier:?} is not the SHA-256 a BINARY rule names: {problem}")
        })?;
        to_hex(&hash)
    } else {
        identifier.to_owned()
    };
    let custom_url = custom("custom_url")?;
    if let Some(url) = &custom_url {
        crate::policy::check_url(url).map_err(|problem| anyhow!("custom_url: {problem}"))?;
    }
    Ok(DownloadedRule {
        identifier,
        policy,
        rule_type,
        custom_msg: custom("custom_msg")?,
        custom_url,
    })
}

#[derive(Serialize)]
pub struct PostflightRequest<'a> {
    pub rules_received: usize,
    pub rules_processed: usize,
    pub machine_id: &'a str,
    pub sync_type: SyncType,
    pub rules_hash: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "AB00000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn preflight_takes_names_numbers_and_the_deprecated_clean_flag() {
        let read = |json: &str, requested| Preflight::read(json.as_bytes(), requested).unwrap();
        assert_eq!(
            read("{}", false),
            Preflight {
                client_mode: None,
                sync_type: SyncType::Normal,
                batch_size: DEFAULT_BATCH_SIZE
            }
        );
        let preflight = read(
            r#"{"client_mode":"LOCKDOWN","sync_type":"CLEAN","batch_size":7,"other":[1]}"#,
            false,
        );
        assert_eq!(preflight.client_mode, Some(ClientMode::Lockdown));
        assert_eq!(preflight.sync_type, SyncType::Clean);
        assert_eq!(preflight.batch_size, 7);
        assert_eq!(
            read(r#"{"client_mode":1}"#, false).client_mode,
            Some(ClientMode::Monitor)
        );
        assert_eq!(
            read(r#"{"clean_sync":true}"#, false).sync_type,
            SyncType::Clean
        );
        assert_eq!(
            read(r#"{"clean_sync":true}"#, true).sync_type,
            SyncType::CleanAll
        );
    }

    #[test]
    fn malformed_preflights_name_the_field() {
        for (json, expected) in [
            (
                "[]",
                "preflight: the response is an array, not a JSON object",
            ),
            ("{", "preflight: the response is not JSON"),
            (
                r#"{"client_mode":"PARTY"}"#,
                "client_mode: \"PARTY\" is none of",
            ),
            (r#"{"sync_type":true}"#, "sync_type: expected a name"),
            (r#"{"batch_size":-1}"#, "batch_size: -1 is not a count"),
            (
                r#"{"batch_size":1000000}"#,
                "batch_size: 1000000 is more than",
            ),
        ] {
            let error = format!("{:#}", Preflight::read(json.as_bytes(), false).unwrap_err());
            assert!(error.starts_with("preflight"), "{error}");
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn rules_are_read_with_their_spellings() {
        let page = RulePage::read(
            format!(
                r#"{{"rules":[{{"identifier":"{HASH}","policy":"BLACKLIST","rule_type":"BINARY",
                "custom_msg":"no","custom_url":"https://wiki.example/x"}},
                {{"identifier":"EQHXZ8M8AV","policy":1,"rule_type":"TEAMID"}},
                {{"identifier":"x","policy":"REMOVE","rule_type":"CDHASH","custom_msg":""}}],
                "cursor":"2"}}"#
            )
            .as_bytes(),
            1,
        )
        .unwrap();
        assert_eq!(page.cursor.as_deref(), Some("2"));
        assert_eq!(
            page.rules[0],
            DownloadedRule {
                identifier: HASH.to_ascii_lowercase(),
                policy: RulePolicy::Blocklist,
                rule_type: RuleType::Binary,
                custom_msg: Some("no".to_owned()),
                custom_url: Some("https://wiki.example/x".to_owned()),
            }
        );
        assert_eq!(page.rules[1].rule_type, RuleType::TeamId);
        assert_eq!(page.rules[1].policy, RulePolicy::Allowlist);
        assert_eq!(page.rules[2].rule_type, RuleType::CdHash);
        assert_eq!(page.rules[2].custom_msg, None);
        assert_eq!(RulePage::read(br#"{"cursor":""}"#, 1).unwrap().cursor, None);
    }

    #[test]
    fn malformed_rules_name_their_index_and_field() {
        for (rule, expected) in [
            (
                r#"{"policy":"BLOCKLIST","rule_type":"BINARY"}"#,
                "rules[0]: identifier: missing",
            ),
            (
                r#"{"identifier":"abc","policy":"BLOCKLIST","rule_type":"BINARY"}"#,
                "rules[0]: identifier: \"abc\" is not the SHA-256",
            ),
            (
                &format!(r#"{{"identifier":"{HASH}","policy":"BLOCKLIST","rule_type":"PATH"}}"#),
                "rules[0]: rule_type: \"PATH\" is none of",
            ),
            (
                &format!(r#"{{"identifier":"{HASH}","policy":"MAYBE","rule_type":"BINARY"}}"#),
                "rules[0]: policy: \"MAYBE\" is none of",
            ),
            (
                &format!(
                    r#"{{"identifier":"{HASH}","policy":"BLOCKLIST","rule_type":"BINARY","custom_url":"javascript:x"}}"#
                ),
                "rules[0]: custom_url",
            ),
            ("7", "rules[0]: expected an object, found a number"),
        ] {
            let body = format!(r#"{{"rules":[{rule}]}}"#);
            let error = format!("{:#}", RulePage::read(body.as_bytes(), 3).unwrap_err());
            assert!(error.starts_with("ruledownload: page 3: "), "{error}");
            assert!(error.contains(expected), "{rule}: {error}");
        }
    }
}
