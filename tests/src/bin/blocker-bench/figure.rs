//! Figures and how they are reported: each measured figure is a summary of several samples,
//! printed as one JSON line behind [`MARKER`] for `cargo xtask bench` to collect.

use std::{io::Write, sync::OnceLock, time::Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

/// Starts every line that carries a record for xtask; anything else on the output is progress.
pub const MARKER: &str = "BLOCKER-BENCH:";

/// Median, quartiles and range of a set of samples, and how far the median can be trusted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
    /// A confidence interval of the median: see [`median_interval`].
    pub median_low: f64,
    pub median_high: f64,
    /// The probability that the interval holds the true median.
    pub median_confidence: f64,
}

impl Summary {
    /// Fails on an empty set or a sample that is not a finite number: a figure that could not
    /// be measured must not look like one that was.
    pub fn of(values: &[f64]) -> Result<Self> {
        if values.is_empty() {
            bail!("no samples");
        }
        if let Some(bad) = values.iter().find(|value| !value.is_finite()) {
            bail!("a sample is {bad}");
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (median_low, median_high, median_confidence) = median_interval(&sorted);
        Ok(Self {
            median: quantile(&sorted, 0.5),
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            samples: sorted.len(),
            median_low,
            median_high,
            median_confidence,
        })
    }

    fn to_json(self) -> Value {
        json!({
            "median": self.median,
            "q1": self.q1,
            "q3": self.q3,
            "min": self.min,
            "max": self.max,
            "samples": self.samples,
            "median_low": self.median_low,
            "median_high": self.median_high,
            "median_confidence": self.median_confidence,
        })
    }
}

/// The narrowest interval between order statistics, `[x(k), x(n+1-k)]`, that holds the true
/// median with a probability of at least 95 %, whatever the distribution (each sample falls
/// below the median with probability ½, so the count below is binomial), and that probability.
/// Fewer than six samples cannot reach 95 %: their interval is the whole range.
fn median_interval(sorted: &[f64]) -> (f64, f64, f64) {
    let n = sorted.len();
    // P(X ≤ j) for X ~ Binomial(n, ½), accumulated term by term.
    let mut term = 0.5f64.powi(n as i32);
    let mut below = term;
    let mut k = 1;
    // Widening from [x(k), x(n+1-k)] to [x(k+1), x(n-k)] loses coverage 2·P(X = k).
    while k < n.div_ceil(2) {
        term *= (n - k + 1) as f64 / k as f64;
        if 2.0 * (below + term) > 0.05 {
            break;
        }
        below += term;
        k += 1;
    }
    (sorted[k - 1], sorted[n - k], 1.0 - 2.0 * below)
}

/// The `q` quantile of sorted values, interpolating linearly between neighbours (the usual
/// definition, R's type 7), so that four samples still have distinct quartiles.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let fraction = position - below as f64;
    sorted[below] + (sorted[above] - sorted[below]) * fraction
}

/// Where a figure was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    /// This machine's kernel, where blocker runs its `kill` backend.
    Host,
    /// Debian's kernel under QEMU, where blocker runs its `lsm` backend.
    Vm,
}

impl Environment {
    pub fn name(self) -> &'static str {
        match self {
            Environment::Host => "host",
            Environment::Vm => "vm",
        }
    }

    /// The backend blocker is forced to use here, so a figure never silently measures the other.
    pub fn backend(self) -> &'static str {
        match self {
            Environment::Host => "kill",
            Environment::Vm => "lsm",
        }
    }
}

/// One measured figure.
pub struct Figure {
    /// Stable and unique, e.g. `exec.host.blocker-100k`; `report.json` and the targets refer to it.
    pub id: String,
    pub environment: Environment,
    /// The table section: `exec latency`, `content hash at exec`, ...
    pub group: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub summary: Summary,
    /// How many times the measured operation ran in all (execs, scans, starts).
    pub repetitions: u64,
    /// A ratio measured side by side with another figure, sample by sample.
    pub ratio: Option<Ratio>,
    /// What exactly was measured, with counts a reader may want to check.
    pub detail: String,
    /// Parts of the figure, for report.json only (e.g. each program's share of the kernel's
    /// cost).
    pub breakdown: Option<Value>,
}

pub struct Ratio {
    /// What the ratio divides, e.g. `÷ no blocker`.
    pub definition: String,
    pub summary: Summary,
}

impl Ratio {
    /// Sample-by-sample quotients `numerators[i] / denominators[i]`.
    pub fn paired(definition: &str, numerators: &[f64], denominators: &[f64]) -> Result<Self> {
        if numerators.len() != denominators.len() {
            bail!(
                "{} samples against {} for the ratio {definition}",
                numerators.len(),
                denominators.len()
            );
        }
        let quotients: Vec<f64> = numerators
            .iter()
            .zip(denominators)
            .map(|(numerator, denominator)| numerator / denominator)
            .collect();
        Ok(Self {
            definition: definition.to_owned(),
            summary: Summary::of(&quotients)?,
        })
    }
}

impl Figure {
    pub fn to_json(&self) -> Value {
        json!({
            "kind": "figure",
            "id": self.id,
            "environment": self.environment.name(),
            "group": self.group,
            "name": self.name,
            "unit": self.unit,
            "summary": self.summary.to_json(),
            "repetitions": self.repetitions,
            "ratio": self.ratio.as_ref().map(|ratio| json!({
                "definition": ratio.definition,
                "summary": ratio.summary.to_json(),
            })),
            "detail": self.detail,
            "breakdown": self.breakdown,
        })
    }
}

/// Prints `record` behind the marker on stdout, flushed, so it survives a crash that follows.
pub fn emit(record: &Value) {
    let mut stdout = std::io::stdout().lock();
    // A bench whose output is gone has no one to report to; ignoring the error is all it can do.
    let _ = writeln!(stdout, "{MARKER} {record}");
    let _ = stdout.flush();
}

/// A line for the reader of the progress output, with the seconds since the first one.
pub fn progress(text: &str) {
    static FIRST: OnceLock<Instant> = OnceLock::new();
    let since_first = FIRST.get_or_init(Instant::now).elapsed().as_secs_f64();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "bench: [{since_first:6.1} s] {text}");
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_with_interpolated_quartiles() {
        let summary = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(
            summary,
            Summary {
                median: 2.5,
                q1: 1.75,
                q3: 3.25,
                min: 1.0,
                max: 4.0,
                samples: 4,
                median_low: 1.0,
                median_high: 4.0,
                median_confidence: 0.875,
            }
        );
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.median, one.q1, one.q3), (7.0, 7.0, 7.0));
    }

    #[test]
    fn bounds_the_median_with_order_statistics() {
        // Five samples: only the whole range, which misses the median when all five fall on one
        // side of it (2 × 1/32).
        let five: Vec<f64> = (1..=5).map(f64::from).collect();
        assert_eq!(median_interval(&five), (1.0, 5.0, 1.0 - 2.0 / 32.0));
        // Twenty samples: [x(6), x(15)], the textbook interval, 95.9 %.
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        let (low, high, confidence) = median_interval(&twenty);
        assert_eq!((low, high), (6.0, 15.0));
        assert!((confidence - 0.9586).abs() < 1e-4, "{confidence}");
    }

    #[test]
    fn refuses_what_was_not_measured() {
        assert_eq!(Summary::of(&[]).unwrap_err().to_string(), "no samples");
        assert_eq!(
            Summary::of(&[1.0, f64::NAN]).unwrap_err().to_string(),
            "a sample is NaN"
        );
        assert!(Ratio::paired("÷ x", &[1.0], &[0.0]).is_err());
        assert!(Ratio::paired("÷ x", &[1.0, 2.0], &[1.0]).is_err());
    }

    #[test]
    fn pairs_ratios_sample_by_sample() {
        let ratio = Ratio::paired("÷ none", &[2.0, 3.0, 30.0], &[1.0, 3.0, 10.0]).unwrap();
        assert_eq!(ratio.summary.median, 2.0);
        assert_eq!((ratio.summary.min, ratio.summary.max), (1.0, 3.0));
    }
}
