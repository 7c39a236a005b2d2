//! Results: one record per scenario, system and metric; ratios; the targets of issue 5; JSON and
//! Markdown output.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{Profile, rathole, systems::System};

/// One figure.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Scenario name, e.g. `1-bulk`.
    pub scenario: String,
    /// System label, e.g. `tether`.
    pub system: String,
    /// Metric name, e.g. `upload_throughput`.
    pub metric: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// The sizes used.
    pub profile: Profile,
    /// CPU, cores, kernel, memory.
    pub machine: serde_json::Value,
    /// Versions of everything measured.
    pub versions: serde_json::Value,
    /// Wall-clock duration of the run, seconds.
    pub elapsed_secs: f64,
    /// Things the reader must know (systems not measured, caveats).
    pub notes: Vec<String>,
    /// The figures.
    pub results: Vec<Record>,
}

impl Results {
    /// An empty result set for a run with `profile`.
    pub fn new(profile: &Profile, rathole_bin: Option<&Path>) -> Self {
        let versions = serde_json::json!({
            "tether": env!("CARGO_PKG_VERSION"),
            "tether_commit": crate::proc_stats::git_commit(),
            "rustc": crate::proc_stats::rustc_version(),
            "rustls": "0.23 (ring provider, Tether's cipher order)",
            "rathole": rathole_bin.and_then(rathole::version).unwrap_or_else(|| "not available".into()),
        });
        Self {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            profile: profile.clone(),
            machine: crate::proc_stats::machine(),
            versions,
            elapsed_secs: 0.0,
            notes: Vec::new(),
            results: Vec::new(),
        }
    }

    /// Adds a note.
    pub fn note(&mut self, text: &str) {
        eprintln!("note: {text}");
        self.notes.push(text.to_owned());
    }

    /// Adds a figure.
    pub fn add(&mut self, scenario: &str, system: System, metric: &str, value: f64, unit: &str) {
        self.add_labelled(scenario, system.label(), metric, value, unit);
    }

    /// Adds a figure for a system outside [`System`] (e.g. the bare TLS server).
    pub fn add_labelled(&mut self, scenario: &str, system: &str, metric: &str, value: f64, unit: &str) {
        eprintln!("  {scenario:<24} {system:<14} {metric:<28} {value:>12.2} {unit}");
        self.results.push(Record {
            scenario: scenario.into(),
            system: system.into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
        });
    }

    /// A figure, if recorded.
    pub fn get(&self, scenario: &str, system: &str, metric: &str) -> Option<f64> {
        self.results
            .iter()
            .find(|r| r.scenario == scenario && r.system == system && r.metric == metric)
            .map(|r| r.value)
    }

    /// For every system with `metric` in `scenario`, records its ratio to `base`'s value as
    /// `<metric>_vs_<base>` (unit `x`).
    pub fn ratios(&mut self, scenario: &str, metric: &str, base: System) {
        let Some(base_value) = self.get(scenario, base.label(), metric) else {
            return;
        };
        let systems: Vec<String> = self
            .results
            .iter()
            .filter(|r| r.scenario == scenario && r.metric == metric && r.system != base.label())
            .map(|r| r.system.clone())
            .collect();
        for system in systems {
            if let Some(v) = self.get(scenario, &system, metric) {
                let name = format!("{metric}_vs_{}", base.label().replace('-', "_"));
                self.add_labelled(scenario, &system, &name, v / base_value, "x");
            }
        }
    }

    /// Problems a smoke run must fail on: scenarios without figures, non-positive or non-finite
    /// values (`only` restricts the scenarios expected).
    pub fn sanity(&self, only: &[u8]) -> Vec<String> {
        let mut problems = Vec::new();
        for (n, name) in crate::scenario::NAMES.iter().enumerate() {
            let n = n as u8 + 1;
            if !only.is_empty() && !only.contains(&n) {
                continue;
            }
            let records: Vec<&Record> = self.results.iter().filter(|r| r.scenario == *name).collect();
            for system in [System::Tether, System::Tls] {
                if !records.iter().any(|r| r.system == system.label()) {
                    problems.push(format!("{name}: no figures for {}", system.label()));
                }
            }
            for r in records {
                // Added latency may be negative (direct TCP), CPU use of an idle process zero.
                let signed = r.metric.starts_with("added_");
                let may_be_zero = r.metric.ends_with("cpu");
                let bad = if signed {
                    false
                } else if may_be_zero {
                    r.value < 0.0
                } else {
                    r.value <= 0.0
                };
                if !r.value.is_finite() || bad {
                    problems.push(format!(
                        "{name}/{}/{}: insane value {}",
                        r.system, r.metric, r.value
                    ));
                }
            }
        }
        problems
    }

    /// The targets: (description, figure, met).
    pub fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        use crate::scenario::{bulk, fairness, idle, ping_pong, setup};
        let t = System::Tether.label();
        let mut out = Vec::new();
        let mut check =
            |what: &str, value: Option<f64>, shown: &dyn Fn(f64) -> String, ok: &dyn Fn(f64) -> bool| {
                out.push((
                    what.to_owned(),
                    value.map_or("not measured".into(), shown),
                    value.map(ok),
                ));
            };
        for dir in ["upload", "download"] {
            check(
                &format!("1 bulk {dir}: >= 0.40x direct TLS"),
                self.get(bulk::NAME, t, &format!("{dir}_throughput_vs_direct_tls")),
                &|v| format!("{v:.2}x"),
                &|v| v >= 0.40,
            );
            let tether = self.get(bulk::NAME, t, &format!("{dir}_throughput"));
            let noise = self.get(
                bulk::NAME,
                System::RatholeNoise.label(),
                &format!("{dir}_throughput"),
            );
            check(
                &format!("1 bulk {dir}: ahead of rathole noise"),
                tether.zip(noise).map(|(a, b)| a / b),
                &|v| format!("{v:.2}x rathole noise"),
                &|v| v > 1.0,
            );
        }
        check(
            "3 ping-pong: added p99 <= 150 us over direct TLS",
            self.get(ping_pong::NAME, t, "added_p99"),
            &|v| format!("{v:.0} us"),
            &|v| v <= 150.0,
        );
        check(
            "4 setup: >= 5,000 setups/s",
            self.get(setup::NAME, t, "setups_per_sec"),
            &|v| format!("{v:.0}/s"),
            &|v| v >= 5000.0,
        );
        check(
            "4 setup: time to first byte p99 <= 1 ms",
            self.get(setup::NAME, t, "ttfb_p99"),
            &|v| format!("{v:.0} us"),
            &|v| v <= 1000.0,
        );
        check(
            "5 idle: <= 16 KiB relay memory per device connection",
            self.get(idle::NAME, t, "rss_per_connection"),
            &|v| format!("{v:.1} KiB"),
            &|v| v <= 16.0,
        );
        check(
            "7 fairness: interactive p99 loaded <= 2x unloaded",
            self.get(fairness::NAME, t, "p99_loaded_vs_unloaded"),
            &|v| format!("{v:.2}x"),
            &|v| v <= 2.0,
        );
        out
    }
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One Markdown table per scenario (rows: metrics, columns: systems), then the targets.
pub fn markdown_tables(results: &Results) -> String {
    let mut md = String::new();
    for name in crate::scenario::NAMES {
        let records: Vec<&Record> = results.results.iter().filter(|r| r.scenario == name).collect();
        if records.is_empty() {
            continue;
        }
        let mut systems: Vec<&str> = Vec::new();
        let mut metrics: Vec<(&str, &str)> = Vec::new();
        for r in &records {
            if !systems.contains(&r.system.as_str()) {
                systems.push(&r.system);
            }
            if !metrics.iter().any(|(m, _)| *m == r.metric) {
                metrics.push((&r.metric, &r.unit));
            }
        }
        let _ = writeln!(md, "\n#### {name}\n");
        let _ = writeln!(md, "| metric | unit | {} |", systems.join(" | "));
        let _ = writeln!(md, "|---|---|{}", "---:|".repeat(systems.len()));
        for (metric, unit) in metrics {
            let cells: Vec<String> = systems
                .iter()
                .map(|s| {
                    results
                        .get(name, s, metric)
                        .map_or_else(|| "–".into(), format_value)
                })
                .collect();
            let _ = writeln!(md, "| {metric} | {unit} | {} |", cells.join(" | "));
        }
    }
    let _ = writeln!(
        md,
        "\n#### Targets (issue 5)\n\n| target | Tether | met |\n|---|---:|:---:|"
    );
    for (what, shown, met) in results.targets() {
        let mark = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(md, "| {what} | {shown} | {mark} |");
    }
    md
}

/// Start and end markers of the generated part of `docs/benchmarks.md`.
const BEGIN: &str = "<!-- BEGIN GENERATED: tether-bench; edits between these markers are overwritten -->";
const END: &str = "<!-- END GENERATED -->";

/// The generated section: run facts, notes and tables.
fn generated(results: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}\n");
    let (m, v) = (&results.machine, &results.versions);
    let _ = writeln!(
        md,
        "Run: {} ({} profile, {:.0} s). Machine: {} ({} cores, {} GiB, Linux {}, load average {} at start). \
         Versions: tether {} (commit {}), {}, rustls {}, {}.\n",
        results.date,
        results.profile.name,
        results.elapsed_secs,
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["loadavg"].as_str().unwrap_or("?"),
        v["tether"].as_str().unwrap_or("?"),
        v["tether_commit"].as_str().unwrap_or("?"),
        v["rustc"].as_str().unwrap_or("?"),
        v["rustls"].as_str().unwrap_or("?"),
        v["rathole"].as_str().unwrap_or("?"),
    );
    for note in &results.notes {
        let _ = writeln!(md, "* {note}");
    }
    md.push_str(&markdown_tables(results));
    let _ = writeln!(md, "\n{END}");
    md
}

/// Writes the JSON report.
///
/// # Errors
/// File errors.
pub fn write_json(results: &Results, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(results)? + "\n")?;
    Ok(())
}

/// Writes the generated section into `path`, keeping any text outside the markers.
///
/// # Errors
/// File errors.
pub fn write_markdown(results: &Results, path: &Path) -> anyhow::Result<()> {
    let section = generated(results);
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let text = match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!(
                "{}{}{}",
                &existing[..b],
                section.trim_end(),
                &existing[e + END.len()..]
            )
        }
        _ => format!("# Benchmarks\n\n{section}"),
    };
    std::fs::write(path, text)?;
    Ok(())
}
