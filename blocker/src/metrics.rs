//! The daemon's state for Prometheus, in the text exposition format 0.0.4: decisions counted
//! from the kernel's events, losses, reloads, what is loaded and how it is enforced. Written as
//! a node_exporter textfile ([`Exporter`]) and, optionally, served on a loopback address
//! ([`endpoint`]).
//!
//! Counting is part of the per-event path: an event adds one to a cell picked by the numbers it
//! carries (rule id, action, operation), without a string. Names and labels are made only when
//! the metrics are rendered, at most about once a second.

pub mod endpoint;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::{self, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::SystemTime,
};

use blocker_common::{Action, KernelEvent, Operation};
use bytes::Bytes;

use crate::{
    atomic_file::Published,
    escape::escaped,
    kernel::coverage::{Feature, Features, State},
    policy,
    resolve::RuleInfo,
};

/// node_exporter's textfile directory as Debian's `prometheus-node-exporter` sets it up.
pub const TEXTFILE_DIRECTORY: &str = "/var/lib/prometheus/node-exporter";
/// blocker's file in it.
pub const TEXTFILE_NAME: &str = "blocker.prom";
/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The `rule` label of decisions whose rule id the daemon does not know (`#` is never in a
/// rule id).
pub const UNKNOWN_RULE: &str = "#unknown";
/// The `action` and `operation` labels of numbers this build does not know.
const UNKNOWN: &str = "unknown";

/// The textfile where node_exporter looks for it, if its directory exists.
pub fn default_textfile() -> Option<PathBuf> {
    default_textfile_named(TEXTFILE_NAME)
}

/// The textfile `name` where node_exporter looks for it, if its directory exists.
pub fn default_textfile_named(name: &str) -> Option<PathBuf> {
    let directory = Path::new(TEXTFILE_DIRECTORY);
    directory.is_dir().then(|| directory.join(name))
}

/// Where the metrics go.
#[derive(Clone, Debug, Default)]
pub struct MetricsOptions {
    /// The node_exporter textfile, if any.
    pub file: Option<PathBuf>,
    /// The loopback address of the HTTP endpoint, if any (port 0: any free port).
    pub listen: Option<SocketAddr>,
}

/// The operations a decision is about; the others are tamper attempts.
const DECISION_OPERATIONS: [Operation; 3] = [Operation::Exec, Operation::Mmap, Operation::Mprotect];

const ACTIONS: usize = Action::ALL.len() + 1;
const OPERATIONS: usize = DECISION_OPERATIONS.len() + 1;
const TAMPER_ATTEMPTS: usize = Operation::ALL.len() + 1;

/// The cell of an action number: its place among the known ones, or the last for an unknown.
fn action_slot(wire: u32) -> usize {
    Action::ALL
        .iter()
        .position(|action| action.wire() == wire)
        .unwrap_or(ACTIONS - 1)
}

/// The cell of an operation number among `known`, or the last for any other.
fn operation_slot(known: &[Operation], wire: u32) -> usize {
    known
        .iter()
        .position(|operation| operation.wire() == wire)
        .unwrap_or(known.len())
}

fn action_label(slot: usize) -> &'static str {
    Action::ALL
        .get(slot)
        .map_or(UNKNOWN, |action| action.name())
}

fn operation_label(known: &[Operation], slot: usize) -> &'static str {
    known
        .get(slot)
        .map_or(UNKNOWN, |operation| operation.name())
}

/// The decisions of one rule, by action and operation.
type Cells = [[u64; OPERATIONS]; ACTIONS];

/// A rule as its decisions are labelled.
struct RuleRow {
    rule_id: u32,
    rule: String,
    policy: String,
    /// The rule's own action while the rule is in force: its series exist from the start, at 0.
    action_in_force: Option<policy::Action>,
    cells: Cells,
}

impl RuleRow {
    fn new(rule_id: u32, rule: String, policy: String) -> Self {
        Self {
            rule_id,
            rule,
            policy,
            action_in_force: None,
            cells: [[0; OPERATIONS]; ACTIONS],
        }
    }

    fn counted_any(&self) -> bool {
        self.cells.iter().flatten().any(|&count| count > 0)
    }
}

/// Decisions and refused tamper attempts counted from the kernel's events: a row per rule the
/// kernel may name (those in force and those reloads removed), one for any other rule id.
pub struct DecisionCounts {
    row_of_rule: HashMap<u32, usize>,
    /// The first is the unknown rules'.
    rows: Vec<RuleRow>,
    tamper: [u64; TAMPER_ATTEMPTS],
    /// Events counted, so that a change is seen without looking at every cell.
    counted: u64,
}

impl Default for DecisionCounts {
    fn default() -> Self {
        Self {
            row_of_rule: HashMap::new(),
            rows: vec![RuleRow::new(0, UNKNOWN_RULE.to_owned(), String::new())],
            tamper: [0; TAMPER_ATTEMPTS],
            counted: 0,
        }
    }
}

impl DecisionCounts {
    /// Counts the decision an exec or mapping event reports.
    pub fn count_decision(&mut self, event: &KernelEvent) {
        let row = self.row_of_rule.get(&event.rule_id).copied().unwrap_or(0);
        let operation = operation_slot(&DECISION_OPERATIONS, event.operation);
        self.rows[row].cells[action_slot(event.action)][operation] += 1;
        self.counted += 1;
    }

    /// Counts a tamper attempt the kernel refused.
    pub fn count_tamper(&mut self, event: &KernelEvent) {
        self.tamper[operation_slot(Operation::ALL, event.operation)] += 1;
        self.counted += 1;
    }

    /// Names the rules events may carry from now on. Counts carry over for a rule that keeps its
    /// id, name and policy; a rule no longer named keeps its series if anything was counted for
    /// it (a counter does not go back), and is forgotten otherwise.
    pub fn name_rules<'a>(&mut self, rules: impl IntoIterator<Item = &'a RuleInfo>) {
        let mut rows = std::mem::take(&mut self.rows).into_iter();
        let unknown = rows.next().expect("the unknown rules' row comes first");
        let mut previous: HashMap<(u32, String, String), RuleRow> = rows
            .map(|row| ((row.rule_id, row.rule.clone(), row.policy.clone()), row))
            .collect();
        self.rows = vec![unknown];
        self.row_of_rule.clear();
        for info in rules {
            let key = (info.rule_id, info.id.clone(), info.policy.clone());
            let mut row = previous
                .remove(&key)
                .unwrap_or_else(|| RuleRow::new(key.0, key.1, key.2));
            row.action_in_force = Some(info.action);
            self.row_of_rule.insert(info.rule_id, self.rows.len());
            self.rows.push(row);
        }
        self.rows.extend(
            previous
                .into_values()
                .filter(RuleRow::counted_any)
                .map(|row| RuleRow {
                    action_in_force: None,
                    ..row
                }),
        );
    }

    fn render(&self, out: &mut Exposition) {
        // Summed by label values: two rows may carry the same ones (a rule whose id changed
        // number after a hash collision), and the format allows each series once.
        let mut series: BTreeMap<(&str, &str, &str, &str), u64> = BTreeMap::new();
        for row in &self.rows {
            if let Some(action) = row.action_in_force {
                let slot = action_slot(action.kernel_value());
                for operation in 0..DECISION_OPERATIONS.len() {
                    series
                        .entry(decision_labels(row, slot, operation))
                        .or_default();
                }
            }
            for (action, cells) in row.cells.iter().enumerate() {
                for (operation, &count) in cells.iter().enumerate() {
                    if count > 0 {
                        *series
                            .entry(decision_labels(row, action, operation))
                            .or_default() += count;
                    }
                }
            }
        }
        out.family(
            "blocker_decisions_total",
            "counter",
            "Banned files the kernel was asked to run or map, by the action taken, the \
             operation, and the rule and policy that ban them.",
        );
        for ((action, operation, rule, policy), count) in series {
            out.sample(
                "blocker_decisions_total",
                &[
                    ("action", action),
                    ("operation", operation),
                    ("rule", rule),
                    ("policy", policy),
                ],
                count,
            );
        }
        out.family(
            "blocker_tamper_attempts_refused_total",
            "counter",
            "Tamper attempts the kernel refused while protection is on, by attempt.",
        );
        for (slot, &count) in self.tamper.iter().enumerate() {
            if count > 0 {
                out.sample(
                    "blocker_tamper_attempts_refused_total",
                    &[("attempt", operation_label(Operation::ALL, slot))],
                    count,
                );
            }
        }
    }
}

fn decision_labels(
    row: &RuleRow,
    action: usize,
    operation: usize,
) -> (&'static str, &'static str, &str, &str) {
    (
        action_label(action),
        operation_label(&DECISION_OPERATIONS, operation),
        &row.rule,
        &row.policy,
    )
}

/// Something the daemon does now and then whose outcome is watched: when it last happened,
/// whether it succeeded, and how often each way. Another (a policy sync) is one more variant
/// here and a call of [`Metrics::record`] where it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// A policy reload (SIGHUP, a change in the policy directory, `blocker policy`).
    Reload,
}

impl Activity {
    const ALL: [Activity; 1] = [Activity::Reload];

    /// The word in its metrics' names.
    fn noun(self) -> &'static str {
        match self {
            Activity::Reload => "reload",
        }
    }

    /// What it is, for the help texts.
    fn description(self) -> &'static str {
        match self {
            Activity::Reload => "policy reload",
        }
    }
}

/// The outcomes of one [`Activity`].
#[derive(Clone, Copy, Default)]
struct Outcomes {
    /// When it last ended (seconds since the epoch), and whether it succeeded.
    last: Option<(f64, bool)>,
    succeeded: u64,
    failed: u64,
}

/// What the daemon reads from its state at each export: the values that are set rather than
/// counted here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Levels {
    pub rules: usize,
    pub entries: usize,
    pub events_delivered: u64,
    pub events_lost: u64,
    pub records_suppressed: u64,
    /// Per sink, the records it never got.
    pub records_dropped: BTreeMap<&'static str, u64>,
}

/// Everything the metrics say.
pub struct Metrics {
    pub decisions: DecisionCounts,
    started: f64,
    backend: &'static str,
    /// Each feature of the kernel side by its name in the `started` record, and whether it is
    /// wholly on.
    features: Vec<(String, bool)>,
    levels: Levels,
    outcomes: [Outcomes; Activity::ALL.len()],
    /// Something other than a count changed since the last render.
    changed: bool,
    /// [`DecisionCounts::counted`] at the last render.
    counted_at_render: Option<u64>,
}

impl Metrics {
    /// The metrics of a daemon that started at `started` with `backend` and `features`; its
    /// policy, loaded then, counts as the last reload, a success.
    pub fn new(started: SystemTime, backend: &'static str, features: &Features) -> Self {
        let started = seconds_since_epoch(started);
        let mut outcomes = [Outcomes::default(); Activity::ALL.len()];
        outcomes[Activity::Reload as usize].last = Some((started, true));
        Self {
            decisions: DecisionCounts::default(),
            started,
            backend,
            features: feature_states(features),
            levels: Levels::default(),
            outcomes,
            changed: true,
            counted_at_render: None,
        }
    }

    /// Notes that `activity` ended at `at`, and how.
    pub fn record(&mut self, activity: Activity, succeeded: bool, at: SystemTime) {
        let outcomes = &mut self.outcomes[activity as usize];
        outcomes.last = Some((seconds_since_epoch(at), succeeded));
        if succeeded {
            outcomes.succeeded += 1;
        } else {
            outcomes.failed += 1;
        }
        self.changed = true;
    }

    pub fn set_levels(&mut self, levels: Levels) {
        if levels != self.levels {
            self.levels = levels;
            self.changed = true;
        }
    }

    /// Whether anything changed since the last render.
    pub fn changed(&self) -> bool {
        self.changed || self.counted_at_render != Some(self.decisions.counted)
    }

    /// The exposition of every metric.
    pub fn render(&mut self) -> String {
        self.changed = false;
        self.counted_at_render = Some(self.decisions.counted);
        let mut out = Exposition::default();
        out.family(
            "blocker_build_info",
            "gauge",
            "The running blocker's version; always 1.",
        );
        out.sample(
            "blocker_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        out.single(
            "blocker_start_time_seconds",
            "gauge",
            "When the daemon started, in seconds since the epoch.",
            Seconds(self.started),
        );
        out.family(
            "blocker_backend_info",
            "gauge",
            "The backend that enforces denials (lsm: refused with EPERM; kill: killed before \
             the new program runs); always 1.",
        );
        out.sample("blocker_backend_info", &[("backend", self.backend)], 1);
        out.family(
            "blocker_feature_enabled",
            "gauge",
            "Whether each enforcement feature of the started record is wholly in force (1) or \
             off or partial (0).",
        );
        for (feature, on) in &self.features {
            out.sample(
                "blocker_feature_enabled",
                &[("feature", feature)],
                u8::from(*on),
            );
        }
        let levels = &self.levels;
        out.single(
            "blocker_rules_loaded",
            "gauge",
            "Rules of the policy in force.",
            levels.rules,
        );
        out.single(
            "blocker_entries_loaded",
            "gauge",
            "Files banned by identity: entries of the kernel's ban map.",
            levels.entries,
        );
        self.decisions.render(&mut out);
        out.single(
            "blocker_events_delivered_total",
            "counter",
            "Events read from the kernel and handed to the sinks.",
            levels.events_delivered,
        );
        out.single(
            "blocker_events_lost_total",
            "counter",
            "Events the kernel dropped because the ring buffer was full; enforcement was not \
             affected.",
            levels.events_lost,
        );
        out.single(
            "blocker_records_suppressed_total",
            "counter",
            "Records of repeated attempts (same user, file and operation) the kernel's limit \
             suppressed; the attempts were enforced.",
            levels.records_suppressed,
        );
        out.family(
            "blocker_records_dropped_total",
            "counter",
            "Records a sink never got: it fell behind or failed. Enforcement was not affected.",
        );
        for (sink, &dropped) in &levels.records_dropped {
            out.sample("blocker_records_dropped_total", &[("sink", sink)], dropped);
        }
        for activity in Activity::ALL {
            self.render_outcomes(activity, &mut out);
        }
        out.text
    }

    fn render_outcomes(&self, activity: Activity, out: &mut Exposition) {
        let outcomes = &self.outcomes[activity as usize];
        let (noun, description) = (activity.noun(), activity.description());
        if let Some((at, succeeded)) = outcomes.last {
            out.single(
                &format!("blocker_last_{noun}_timestamp_seconds"),
                "gauge",
                &format!("When the last {description} ended, in seconds since the epoch."),
                Seconds(at),
            );
            out.single(
                &format!("blocker_last_{noun}_success"),
                "gauge",
                &format!("Whether the last {description} succeeded (1) or failed (0)."),
                u8::from(succeeded),
            );
        }
        let total = format!("blocker_{noun}s_total");
        out.family(
            &total,
            "counter",
            &format!(
                "{description}s by result.",
                description = capitalized(description)
            ),
        );
        out.sample(&total, &[("result", "success")], outcomes.succeeded);
        out.sample(&total, &[("result", "failure")], outcomes.failed);
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

pub(crate) fn seconds_since_epoch(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// The features by their names in the `started` record (its serialization), so the two never
/// differ.
fn feature_states(features: &Features) -> Vec<(String, bool)> {
    let serde_json::Value::Object(named) =
        serde_json::to_value(features).expect("features serialize")
    else {
        unreachable!("features serialize to an object");
    };
    named
        .into_iter()
        .map(|(name, feature)| {
            let on = serde_json::from_value::<Feature>(feature)
                .is_ok_and(|feature| feature.state == State::On);
            (name, on)
        })
        .collect()
}

/// A timestamp, with millisecond precision.
pub(crate) struct Seconds(pub f64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.0)
    }
}

/// Text in the exposition format being written.
#[derive(Default)]
pub(crate) struct Exposition {
    pub text: String,
}

impl Exposition {
    /// The HELP and TYPE lines of a metric (`help` is this module's own text, never user data).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        debug_assert!(!help.contains(['\\', '\n']));
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", LabelValue(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A metric of one series without labels.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value as the exposition format quotes it: backslash, double quote and line feed
/// escaped. Label values come from policy files (rule ids, policy names).
struct LabelValue<'a>(&'a str);

impl fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in self.0.split_inclusive(['\\', '"', '\n']) {
            let (text, special) = match part.char_indices().last() {
                Some((at, special @ ('\\' | '"' | '\n'))) => (&part[..at], Some(special)),
                _ => (part, None),
            };
            f.write_str(text)?;
            match special {
                Some('\n') => f.write_str("\\n")?,
                Some(special) => write!(f, "\\{special}")?,
                None => {}
            }
        }
        Ok(())
    }
}

/// Takes the metrics where they go: the textfile, replaced whole, and the endpoint's body.
pub struct Exporter {
    file: Option<Published>,
    endpoint: Option<endpoint::Endpoint>,
}

impl Exporter {
    pub fn new(file: Option<PathBuf>, endpoint: Option<endpoint::Endpoint>) -> Self {
        if let Some(file) = &file {
            log::info!("metrics: writing {}", escaped(file));
        }
        Self {
            file: file.map(|path| Published::new(path, "metrics", "")),
            endpoint,
        }
    }

    /// Where the endpoint listens, for the status document.
    pub fn endpoint_address(&self) -> Option<SocketAddr> {
        self.endpoint.as_ref().map(endpoint::Endpoint::address)
    }

    /// Whether the metrics go anywhere.
    pub fn active(&self) -> bool {
        self.file.is_some() || self.endpoint.is_some()
    }

    /// Renders and exports `metrics` if they changed since the last export.
    pub fn export(&mut self, metrics: &mut Metrics) {
        if !self.active() || !metrics.changed() {
            return;
        }
        let text = metrics.render();
        if let Some(file) = &mut self.file {
            file.replace(text.as_bytes());
        }
        if let Some(endpoint) = &self.endpoint {
            endpoint.publish(Bytes::from(text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::coverage::Feature;

    fn rule(rule_id: u32, id: &str, policy: &str, action: policy::Action) -> RuleInfo {
        RuleInfo {
            rule_id,
            id: id.to_owned(),
            policy: policy.to_owned(),
            reason: None,
            url: None,
            telling: policy::Telling::default(),
            action,
        }
    }

    fn event(rule_id: u32, action: Action, operation: Operation) -> KernelEvent {
        // SAFETY: every bit pattern, zeroes included, is a valid KernelEvent.
        let mut event: KernelEvent = unsafe { std::mem::zeroed() };
        event.rule_id = rule_id;
        event.action = action.wire();
        event.operation = operation.wire();
        event
    }

    fn features() -> Features {
        Features {
            exec: Feature::on(),
            exec_content: Feature::off("no IMA"),
            verdict_cache: Feature::off("no IMA"),
            executable_mappings: Feature::on(),
            mapping_content: Feature::off("no IMA"),
            package_updates: Feature::on(),
            tamper_protection: Feature::off("not asked for"),
        }
    }

    fn metrics() -> Metrics {
        Metrics::new(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_250),
            "lsm",
            &features(),
        )
    }

    /// The lines of `text` for `name` with a value, without HELP and TYPE.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .collect()
    }

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed_only() {
        let shown = |text: &str| LabelValue(text).to_string();
        assert_eq!(shown("plain-rule_1.x"), "plain-rule_1.x");
        assert_eq!(shown(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(shown("line\nnext"), "line\\nnext");
        assert_eq!(shown("\\\n\"\\"), "\\\\\\n\\\"\\\\");
        assert_eq!(shown("tab\tand é"), "tab\tand é");
        assert_eq!(shown(""), "");
    }

    #[test]
    fn decisions_are_counted_by_rule_action_and_operation() {
        let mut metrics = metrics();
        metrics.decisions.name_rules(&[
            rule(7, "wechat", "apps", policy::Action::Deny),
            rule(9, "tiktok", "apps", policy::Action::Audit),
        ]);
        for _ in 0..3 {
            metrics
                .decisions
                .count_decision(&event(7, Action::Deny, Operation::Exec));
        }
        metrics
            .decisions
            .count_decision(&event(7, Action::Deny, Operation::Mmap));
        metrics
            .decisions
            .count_decision(&event(12345, Action::Audit, Operation::Exec));
        metrics
            .decisions
            .count_decision(&event(9, Action::Audit, Operation::Exec));
        let text = metrics.render();
        assert_eq!(
            samples(&text, "blocker_decisions_total"),
            [
                r##"blocker_decisions_total{action="audit",operation="exec",rule="#unknown",policy=""} 1"##,
                r##"blocker_decisions_total{action="audit",operation="exec",rule="tiktok",policy="apps"} 1"##,
                r##"blocker_decisions_total{action="audit",operation="mmap",rule="tiktok",policy="apps"} 0"##,
                r##"blocker_decisions_total{action="audit",operation="mprotect",rule="tiktok",policy="apps"} 0"##,
                r##"blocker_decisions_total{action="deny",operation="exec",rule="wechat",policy="apps"} 3"##,
                r##"blocker_decisions_total{action="deny",operation="mmap",rule="wechat",policy="apps"} 1"##,
                r##"blocker_decisions_total{action="deny",operation="mprotect",rule="wechat",policy="apps"} 0"##,
            ]
        );
    }

    #[test]
    fn unknown_actions_operations_and_tamper_attempts_get_their_own_labels() {
        let mut metrics = metrics();
        let mut odd = event(1, Action::Deny, Operation::Exec);
        odd.action = 99;
        odd.operation = 99;
        metrics.decisions.count_decision(&odd);
        metrics
            .decisions
            .count_tamper(&event(0, Action::Deny, Operation::Signal));
        metrics
            .decisions
            .count_tamper(&event(0, Action::Deny, Operation::Signal));
        let text = metrics.render();
        assert_eq!(
            samples(&text, "blocker_decisions_total"),
            [
                r##"blocker_decisions_total{action="unknown",operation="unknown",rule="#unknown",policy=""} 1"##
            ]
        );
        assert_eq!(
            samples(&text, "blocker_tamper_attempts_refused_total"),
            [r#"blocker_tamper_attempts_refused_total{attempt="signal"} 2"#]
        );
    }

    #[test]
    fn counts_outlive_reloads_and_rules_removed_keep_what_they_counted() {
        let mut metrics = metrics();
        let kept = rule(1, "kept", "p", policy::Action::Deny);
        let removed = rule(2, "removed", "p", policy::Action::Deny);
        let idle = rule(3, "idle", "p", policy::Action::Deny);
        metrics.decisions.name_rules([&kept, &removed, &idle]);
        for rule_id in [1, 2] {
            metrics
                .decisions
                .count_decision(&event(rule_id, Action::Deny, Operation::Exec));
        }
        metrics.decisions.name_rules([&kept]);
        metrics
            .decisions
            .count_decision(&event(1, Action::Deny, Operation::Exec));
        metrics
            .decisions
            .count_decision(&event(2, Action::Deny, Operation::Exec));
        let text = metrics.render();
        let exec = |rule: &str, count: u64| {
            format!(
                r##"blocker_decisions_total{{action="deny",operation="exec",rule="{rule}",policy="{}"}} {count}"##,
                if rule == UNKNOWN_RULE { "" } else { "p" }
            )
        };
        let decisions = samples(&text, "blocker_decisions_total");
        assert!(decisions.contains(&exec("kept", 2).as_str()), "{text}");
        assert!(decisions.contains(&exec("removed", 1).as_str()), "{text}");
        assert!(
            decisions.contains(&exec(UNKNOWN_RULE, 1).as_str()),
            "{text}"
        );
        assert!(!text.contains("idle"), "{text}");
    }

    #[test]
    fn hostile_policy_names_stay_inside_their_label() {
        let mut metrics = metrics();
        let hostile = "evil\"} 1\nblocker_decisions_total{rule=\"x\\";
        metrics
            .decisions
            .name_rules([&rule(5, "r", hostile, policy::Action::Deny)]);
        metrics
            .decisions
            .count_decision(&event(5, Action::Deny, Operation::Exec));
        let text = metrics.render();
        assert_eq!(
            samples(&text, "blocker_decisions_total")[0],
            r##"blocker_decisions_total{action="deny",operation="exec",rule="r",policy="evil\"} 1\nblocker_decisions_total{rule=\"x\\"} 1"##
        );
        assert_eq!(text.matches("\nblocker_decisions_total{").count(), 3);
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let mut metrics = metrics();
        metrics.set_levels(Levels {
            rules: 2,
            entries: 5,
            events_delivered: 4,
            events_lost: 1,
            records_suppressed: 0,
            records_dropped: BTreeMap::from([("file", 3), ("stdout", 0)]),
        });
        metrics.record(
            Activity::Reload,
            false,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_100),
        );
        let text = metrics.render();
        let mut described = Vec::new();
        for line in text.lines() {
            if let Some(help) = line.strip_prefix("# HELP ") {
                described.push(help.split(' ').next().unwrap().to_owned());
            } else if let Some(kind) = line.strip_prefix("# TYPE ") {
                let (name, kind) = kind.split_once(' ').unwrap();
                assert_eq!(Some(&name.to_owned()), described.last());
                assert!(["counter", "gauge"].contains(&kind));
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(Some(&name.to_owned()), described.last(), "{line}");
            }
        }
        for expected in [
            "blocker_build_info{version=\"0.1.0\"} 1",
            "blocker_start_time_seconds 1700000000.250",
            "blocker_backend_info{backend=\"lsm\"} 1",
            "blocker_feature_enabled{feature=\"exec\"} 1",
            "blocker_feature_enabled{feature=\"exec_content\"} 0",
            "blocker_feature_enabled{feature=\"tamper_protection\"} 0",
            "blocker_rules_loaded 2",
            "blocker_entries_loaded 5",
            "blocker_events_lost_total 1",
            "blocker_records_dropped_total{sink=\"file\"} 3",
            "blocker_last_reload_timestamp_seconds 1700000100.000",
            "blocker_last_reload_success 0",
            "blocker_reloads_total{result=\"failure\"} 1",
            "blocker_reloads_total{result=\"success\"} 0",
        ] {
            assert!(
                text.lines().any(|line| line == expected),
                "{expected}:\n{text}"
            );
        }
    }

    #[test]
    fn the_policy_loaded_at_the_start_is_the_last_reload_until_one_happens() {
        let text = metrics().render();
        assert!(text.contains("\nblocker_last_reload_timestamp_seconds 1700000000.250\n"));
        assert!(text.contains("\nblocker_last_reload_success 1\n"));
    }

    #[test]
    fn a_render_is_due_only_after_a_change() {
        let mut metrics = metrics();
        assert!(metrics.changed());
        metrics.render();
        assert!(!metrics.changed());
        metrics.set_levels(Levels::default());
        assert!(!metrics.changed(), "the same levels again");
        metrics
            .decisions
            .count_decision(&event(1, Action::Deny, Operation::Exec));
        assert!(metrics.changed());
        metrics.render();
        metrics.record(Activity::Reload, true, SystemTime::now());
        assert!(metrics.changed());
    }

    #[test]
    fn the_textfile_is_replaced_whole_and_readable_by_everyone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(TEXTFILE_NAME);
        let mut exporter = Exporter::new(Some(file.clone()), None);
        let mut metrics = metrics();
        exporter.export(&mut metrics);
        let first = std::fs::read_to_string(&file).unwrap();
        assert!(first.contains("\nblocker_rules_loaded 0\n"));
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o644
        );
        metrics.set_levels(Levels {
            rules: 3,
            ..Levels::default()
        });
        exporter.export(&mut metrics);
        assert!(std::fs::read_to_string(&file)
            .unwrap()
            .contains("\nblocker_rules_loaded 3\n"));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, [TEXTFILE_NAME], "no temporary file left behind");
    }
}
