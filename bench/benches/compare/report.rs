//! The rows of the result, printed as one table or as JSON.

use std::fmt;

use serde::Serialize;

use crate::measure::Stats;

/// A measured amount.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "unit", content = "value", rename_all = "snake_case")]
pub enum Quantity {
    /// Nanoseconds per call (or of one delay).
    Nanos(f64),
    /// Calls per second.
    PerSecond(f64),
    /// Bytes.
    Bytes(f64),
}

impl Quantity {
    fn value(self) -> f64 {
        match self {
            Quantity::Nanos(v) | Quantity::PerSecond(v) | Quantity::Bytes(v) => v,
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Quantity::Nanos(ns) if ns < 1_000.0 => write!(f, "{ns:.0} ns"),
            Quantity::Nanos(ns) if ns < 1_000_000.0 => write!(f, "{:.1} µs", ns / 1e3),
            Quantity::Nanos(ns) => write!(f, "{:.2} ms", ns / 1e6),
            Quantity::PerSecond(r) if r >= 1_000.0 => write!(f, "{:.1} k/s", r / 1e3),
            Quantity::PerSecond(r) => write!(f, "{r:.0} /s"),
            Quantity::Bytes(b) => write!(f, "{b:.0} B"),
        }
    }
}

/// What a row must reach.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    /// idem / baseline ≤ x.
    RatioAtMost(f64),
    /// idem / baseline ≥ x.
    RatioAtLeast(f64),
    /// idem − baseline ≤ x ns.
    OverheadAtMost(f64),
    /// idem ≤ x (same unit as idem's).
    AtMost(Quantity),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Target::RatioAtMost(x) => write!(f, "≤ {x}×"),
            Target::RatioAtLeast(x) => write!(f, "≥ {x}×"),
            Target::OverheadAtMost(ns) => write!(f, "≤ +{}", Quantity::Nanos(ns)),
            Target::AtMost(q) => write!(f, "≤ {q}"),
        }
    }
}

/// What idem was compared with.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub name: String,
    pub value: Quantity,
    pub stats: Option<Stats>,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub section: String,
    pub name: String,
    pub idem: Quantity,
    pub stats: Option<Stats>,
    pub baseline: Option<Baseline>,
    pub target: Option<Target>,
    /// idem / baseline (for things sampled in turn, the median of the per-pair ratios).
    pub ratio: Option<f64>,
    /// idem − baseline, for latencies (likewise paired).
    pub overhead_ns: Option<f64>,
    /// Whether the target is met (no target: none).
    pub met: Option<bool>,
}

impl Row {
    fn measured(&self) -> String {
        match (self.target, self.overhead_ns, self.ratio) {
            (Some(Target::OverheadAtMost(_)), Some(ns), _) => {
                let sign = if ns < 0.0 { "−" } else { "+" };
                format!("{sign}{}", Quantity::Nanos(ns.abs()))
            }
            (Some(Target::AtMost(_)), _, _) => self.idem.to_string(),
            (_, _, Some(ratio)) => format!("{ratio:.2}×"),
            _ => String::new(),
        }
    }
}

/// The rows of a run and where it ran.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub context: Vec<(String, String)>,
    pub rows: Vec<Row>,
    #[serde(skip)]
    section: String,
}

impl Report {
    /// Starts a section: the rows added next belong to it.
    pub fn section(&mut self, name: &str) {
        self.section = name.to_owned();
        eprintln!("== {name}");
    }

    /// Adds a row.
    pub fn add(
        &mut self,
        name: &str,
        idem: (Quantity, Option<Stats>),
        baseline: Option<(&str, Quantity, Option<Stats>)>,
        target: Option<Target>,
    ) {
        let (idem, stats) = idem;
        let baseline = baseline.map(|(name, value, stats)| Baseline {
            name: name.to_owned(),
            value,
            stats,
        });
        // Sampled in turn with the baseline: the median of the per-pair ratios (differences).
        let paired = stats.as_ref().filter(|_| baseline.is_some());
        let ratio = match paired.and_then(|s| s.paired_ratio) {
            Some(ratio) => Some(ratio),
            None => baseline
                .as_ref()
                .map(|base| idem.value() / base.value.value()),
        };
        let overhead_ns = match (&baseline, idem, paired.and_then(|s| s.paired_difference)) {
            (Some(_), Quantity::Nanos(_), Some(difference)) => Some(difference),
            (Some(base), Quantity::Nanos(ns), None) => Some(ns - base.value.value()),
            _ => None,
        };
        let met = target.map(|target| match target {
            Target::RatioAtMost(x) => ratio.is_some_and(|r| r <= x),
            Target::RatioAtLeast(x) => ratio.is_some_and(|r| r >= x),
            Target::OverheadAtMost(x) => overhead_ns.is_some_and(|o| o <= x),
            Target::AtMost(q) => idem.value() <= q.value(),
        });
        let row = Row {
            section: self.section.clone(),
            name: name.to_owned(),
            idem,
            stats,
            baseline,
            target,
            ratio,
            overhead_ns,
            met,
        };
        eprintln!(
            "   {}: {} {}",
            row.name,
            row.idem,
            row.baseline
                .as_ref()
                .map(|b| format!("vs {} {} → {}", b.name, b.value, row.measured()))
                .unwrap_or_default()
        );
        self.rows.push(row);
    }

    /// Adds a row comparing `subject` with `base`, sampled in turn (see `measure`), each in
    /// `unit` (`Quantity::Nanos` or `Quantity::PerSecond`).
    pub fn add_pair(
        &mut self,
        row: &str,
        base_name: &str,
        (base, subject): (Stats, Stats),
        unit: fn(f64) -> Quantity,
        target: Option<Target>,
    ) {
        self.add(
            row,
            (unit(subject.median), Some(subject)),
            Some((base_name, unit(base.median), Some(base))),
            target,
        );
    }

    /// The table, in Markdown.
    pub fn table(&self) -> String {
        let header = ["measure", "idem", "baseline", "measured", "target", "met"];
        let mut lines: Vec<[String; 6]> = Vec::new();
        let mut section = "";
        let mut sections = Vec::new();
        for row in &self.rows {
            if row.section != section {
                section = &row.section;
                sections.push(lines.len());
                lines.push([
                    format!("**{section}**"),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            lines.push([
                row.name.clone(),
                row.idem.to_string(),
                row.baseline
                    .as_ref()
                    .map(|b| format!("{} {}", b.value, b.name))
                    .unwrap_or_default(),
                row.measured(),
                row.target.map(|t| t.to_string()).unwrap_or_default(),
                match row.met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "**no**".to_owned(),
                    None => String::new(),
                },
            ]);
        }
        let width = |i: usize| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..6).map(width).collect();
        let render = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            format!("| {} |", padded.join(" | "))
        };
        let mut out = String::new();
        for (k, v) in &self.context {
            out.push_str(&format!("{k}: {v}\n"));
        }
        out.push('\n');
        out.push_str(&render(&header.map(str::to_owned)));
        out.push('\n');
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        for line in &lines {
            out.push_str(&render(line));
            out.push('\n');
        }
        let targets = self.rows.iter().filter(|r| r.met.is_some()).count();
        let met = self.rows.iter().filter(|r| r.met == Some(true)).count();
        out.push_str(&format!("\n{met} of {targets} targets met.\n"));
        out
    }
}
