//! Results: one record per scenario, system and metric; ratios; the targets of issue 14; JSON and
//! Markdown output.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{
    Profile, chisel, frp, rathole,
    systems::{Binaries, System},
};

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
    pub fn new(profile: &Profile, bins: &Binaries) -> Self {
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "not available".into());
        let versions = serde_json::json!({
            "tether": env!("CARGO_PKG_VERSION"),
            "tether_commit": crate::proc_stats::git_commit(),
            "rustc": crate::proc_stats::rustc_version(),
            "rustls": "0.23 (ring provider, Tether's cipher order)",
            "rathole": or_none(bins.rathole.as_deref().and_then(rathole::version)),
            "frp": or_none(bins.frps.as_deref().and_then(frp::version)),
            "chisel": or_none(bins.chisel.as_deref().and_then(chisel::version)),
            "openssl": or_none(crate::tls_identity::openssl_version()),
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
        // A zero base (a CPU reading below one clock tick in a smoke run) has no ratio.
        let Some(base_value) = self.get(scenario, base.label(), metric).filter(|v| *v != 0.0) else {
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
    /// values (`only` restricts the scenarios expected; `wan`: the WAN profile ran).
    pub fn sanity(&self, only: &[u8], wan: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let wan_numbers = [1u8, 2, 7];
        let expected = crate::scenario::NAMES
            .iter()
            .enumerate()
            .map(|(n, name)| (n as u8 + 1, *name))
            .chain(
                wan_numbers
                    .into_iter()
                    .zip(crate::scenario::WAN_NAMES)
                    .filter(|_| wan),
            );
        for (n, name) in expected {
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
                // CPU readings have 10 ms ticks: a smoke run's tiny transfers may take none.
                let may_be_zero = r.metric.contains("cpu");
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
        // Every process-based system but direct TCP must report its relay-role CPU.
        for name in [crate::scenario::bulk::NAME, crate::scenario::setup::NAME] {
            let ran = self.results.iter().any(|r| r.scenario == name);
            for system in [System::Tether, System::Tls] {
                let has = self.results.iter().any(|r| {
                    r.scenario == name && r.system == system.label() && r.metric.contains("relay_cpu")
                });
                if ran && !has {
                    problems.push(format!("{name}: no relay CPU figure for {}", system.label()));
                }
            }
        }
        problems
    }

    /// Issue 14's targets: (description, figure, met). `None`: not judged by this run alone.
    pub fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        use crate::scenario::{bulk, fairness, idle, parallel, setup};
        let t = System::Tether.label();
        let rtls = System::RatholeTls.label();
        let mut out = Vec::new();
        let mut check =
            |what: &str, value: Option<f64>, shown: &dyn Fn(f64) -> String, ok: &dyn Fn(f64) -> bool| {
                out.push((
                    what.to_owned(),
                    value.map_or("not measured".into(), shown),
                    value.map(ok),
                ));
            };
        let x = |v: f64| format!("{v:.2}x");
        check(
            "mux: stream setups/s >= 1.5x direct TLS",
            self.get(setup::NAME, t, "setups_per_sec_vs_direct_tls"),
            &x,
            &|v| v >= 1.5,
        );
        check(
            "mux: time to first byte p99 <= 0.5 ms (loopback)",
            self.get(setup::NAME, t, "ttfb_p99"),
            &|v| format!("{v:.0} us"),
            &|v| v <= 500.0,
        );
        check(
            "window: interactive p99 next to a saturating neighbour <= 2x direct TLS's loaded p99",
            self.get(fairness::NAME, t, "p99_loaded_vs_direct_tls"),
            &x,
            &|v| v <= 2.0,
        );
        for dir in ["upload", "download"] {
            check(
                &format!("window: WAN bulk {dir} >= 0.8x direct TLS"),
                self.get(bulk::WAN_NAME, t, &format!("{dir}_throughput_vs_direct_tls")),
                &x,
                &|v| v >= 0.8,
            );
        }
        for dir in ["upload", "download"] {
            let metric = format!("{dir}_throughput");
            let ours = self.get(bulk::NAME, t, &metric);
            let theirs = self.get(bulk::NAME, rtls, &metric);
            check(
                &format!("bulk: one stream {dir} >= 1.2x rathole-tls"),
                ours.zip(theirs).map(|(a, b)| a / b),
                &|v| format!("{v:.2}x rathole-tls"),
                &|v| v >= 1.2,
            );
        }
        check(
            "bulk: 10 streams on one device connection >= 0.9x 10 direct TLS connections",
            self.get(parallel::NAME, t, "aggregate_throughput_vs_direct_tls"),
            &x,
            &|v| v >= 0.9,
        );
        let ours = self.get(parallel::NAME, t, "relay_cpu_per_gib");
        let theirs = self.get(parallel::NAME, rtls, "relay_cpu_per_gib");
        check(
            "bulk: 10 streams, relay CPU-seconds per GiB below rathole-tls's server",
            ours.zip(theirs).map(|(a, b)| a / b),
            &|v| format!("{:.2} s/GiB ({v:.2}x rathole-tls)", ours.unwrap_or_default()),
            &|v| v < 1.0,
        );
        check(
            "idle: <= 16 KiB relay memory per idle device connection",
            self.get(idle::NAME, t, "rss_per_connection"),
            &|v| format!("{v:.1} KiB"),
            &|v| v <= 16.0,
        );
        check(
            "idle: 100,000 idle devices on one relay (RSS, keepalive CPU, connect rate recorded)",
            self.get(idle::NAME, t, "connections"),
            &|v| format!("{v:.0} devices"),
            &|v| v >= 100_000.0,
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
    for name in crate::scenario::NAMES
        .into_iter()
        .chain(crate::scenario::WAN_NAMES)
    {
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
        "\n#### Targets (issue 14)\n\n| target | Tether | met |\n|---|---:|:---:|"
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
         Versions: tether {} (commit {}), {}, rustls {}, {}, {}, {}, {}.\n",
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
        v["frp"].as_str().unwrap_or("?"),
        v["chisel"].as_str().unwrap_or("?"),
        v["openssl"].as_str().unwrap_or("?"),
    );
    let w = &results.profile.wan;
    let _ = writeln!(
        md,
        "WAN profile: {} ms each way, {} Mbit/s each way (userspace impairment wire between two \
         network namespaces; the device's leg crosses it).\n",
        w.delay_ms, w.rate_mbit
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
