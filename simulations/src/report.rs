//! Run reports: Markdown, JSON and SVG plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::metrics::Metrics;

/// Everything about a run that the report shows besides the metrics.
pub struct RunInfo {
    /// The command that reproduces the run.
    pub command: String,
    /// Wall time of the run, in seconds.
    pub wall_s: f64,
    /// Engine settings that differ from the defaults, as `key = value` lines.
    pub engine: Vec<String>,
}

/// Writes `NAME-seedS.md`, `.json` and the SVG plots into `dir` and returns the Markdown path.
pub fn write(dir: &Path, metrics: &Metrics, info: &RunInfo) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create the output directory {}", dir.display()))?;
    let stem = format!(
        "{}-n{}-seed{}",
        metrics.scenario, metrics.nodes, metrics.seed
    );

    let json_path = dir.join(format!("{stem}.json"));
    let json = serde_json::json!({
        "command": info.command,
        "wall_s": info.wall_s,
        "engine": info.engine,
        "metrics": metrics,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("failed to write {}", json_path.display()))?;

    let convergence = format!("{stem}-converged.svg");
    let bytes = format!("{stem}-bytes.svg");
    plot_convergence(&dir.join(&convergence), metrics)?;
    plot_bytes(&dir.join(&bytes), metrics)?;

    let markdown = markdown(metrics, info, &convergence, &bytes);
    let md_path = dir.join(format!("{stem}.md"));
    std::fs::write(&md_path, markdown)
        .with_context(|| format!("failed to write {}", md_path.display()))?;
    Ok(md_path)
}

fn format_ms(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.1}")
    } else {
        "never".to_string()
    }
}

fn format_hops(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.0}")
    } else {
        "never".to_string()
    }
}

/// Returns the Markdown report.
pub fn markdown(
    metrics: &Metrics,
    info: &RunInfo,
    convergence_svg: &str,
    bytes_svg: &str,
) -> String {
    let mut out = String::new();
    let verdict = if metrics.passed() { "PASSED" } else { "FAILED" };
    let _ = writeln!(
        out,
        "# {} (seed {}): {verdict}\n",
        metrics.scenario, metrics.seed
    );
    let _ = writeln!(out, "Command: `{}`  ", info.command);
    let _ = writeln!(out, "Wall time: {:.1} s  ", info.wall_s);
    let _ = writeln!(
        out,
        "Fleet: {} nodes ({} with joining nodes), {} sites, {} tenants; documents: {}, {} packages\n",
        metrics.nodes, metrics.nodes_total, metrics.sites, metrics.tenants, metrics.documents, metrics.packages
    );
    let faults = &metrics.faults;
    let _ = writeln!(
        out,
        "Faults drawn: loss {:.3}, duplicate {:.3}, reorder jitter {:.0} ms, crashes {:.3} per node-hour, clock skew ±{:.0} ms, random site outages {:.3} per site-hour\n",
        faults.loss, faults.duplicate, faults.reorder_jitter_ms, faults.crashes_per_node_hour, faults.clock_skew_ms, faults.site_outages_per_site_hour
    );
    if !info.engine.is_empty() {
        let _ = writeln!(out, "Engine settings: {}\n", info.engine.join(", "));
    }

    let _ = writeln!(out, "## Invariants\n");
    if metrics.violations.is_empty() {
        let _ = writeln!(out, "All held: identical heads on every live node of a tenant, only verified changes stored, no acknowledged change lost, no foreign tenant data.\n");
    } else {
        for violation in &metrics.violations {
            let _ = writeln!(out, "- {violation}");
        }
        let _ = writeln!(
            out,
            "\nSEED={}; reproduce with `{}`\n",
            metrics.seed, info.command
        );
    }
    match metrics.convergence_s {
        Some(seconds) => {
            let _ = writeln!(
                out,
                "Converged {seconds:.1} s after the faults stopped (safety phase {:.0} s).\n",
                metrics.safety_end_s
            );
        }
        None => {
            let _ = writeln!(out, "Did not converge within the bound.\n");
        }
    }

    let spread = &metrics.spread;
    let floor_hops = (metrics.nodes_total as f64).log2().ceil();
    let _ = writeln!(
        out,
        "## Spread of {} changes written during the run\n",
        spread.changes
    );
    let _ = writeln!(
        out,
        "| reached | time (ms), median | time (ms), max | hops, median | hops, max |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    for (slot, label) in ["50 %", "90 %", "99 %", "100 %"].iter().enumerate() {
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} |",
            format_ms(spread.time_ms[slot]),
            format_ms(spread.time_ms_max[slot]),
            format_hops(spread.hops[slot]),
            format_hops(spread.hops_max[slot])
        );
    }
    let _ = writeln!(
        out,
        "\nFloor: ceil(log2 {}) = {floor_hops} hops. Changes that missed a live node: {}. Hop histogram (deliveries at hop 0, 1, ...): {:?}\n",
        metrics.nodes_total, spread.incomplete, spread.hop_histogram
    );

    let bytes = &metrics.bytes;
    let _ = writeln!(out, "## Bytes\n");
    let _ = writeln!(out, "| figure | value |");
    let _ = writeln!(out, "| --- | --- |");
    let _ = writeln!(
        out,
        "| change-path bytes per delivered change | {:.1} |",
        bytes.per_delivery
    );
    let _ = writeln!(
        out,
        "| floor (change alone in one message) | {:.1} |",
        bytes.per_delivery_floor
    );
    let _ = writeln!(
        out,
        "| duplicate share of change bytes | {:.1} % |",
        bytes.duplicate_share * 100.0
    );
    let _ = writeln!(
        out,
        "| first deliveries / duplicates | {} / {} |",
        bytes.changes_new, bytes.changes_duplicate
    );
    let _ = writeln!(
        out,
        "| reconciliation bytes per node per hour | {:.0} |",
        bytes.recon_per_node_hour
    );
    for (kind, value) in &bytes.received_by_kind {
        let _ = writeln!(out, "| received: {kind} | {value} |");
    }
    let _ = writeln!(out, "\n## Counters\n");
    let _ = writeln!(
        out,
        "Lost {}, duplicated {}, dropped in flight {}, sends on down links {}, engine disconnects {}, crashes {}, joined {}, ed25519 verifications {}, changes signed {}, overlay entries at the end {}.\n",
        metrics.messages_lost,
        metrics.messages_duplicated,
        metrics.messages_dropped_in_flight,
        metrics.sends_on_down_links,
        metrics.engine_disconnects,
        metrics.crashes,
        metrics.joined,
        metrics.verifications,
        metrics.signed_changes,
        metrics.overlay_entries
    );
    for reason in &metrics.disconnect_reasons {
        let _ = writeln!(out, "- disconnect: {reason}");
    }
    let _ = writeln!(
        out,
        "\n![converged]({convergence_svg})\n\n![bytes]({bytes_svg})"
    );
    out
}

fn plot_convergence(path: &Path, metrics: &Metrics) -> Result<()> {
    let root = SVGBackend::new(path, (720, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let end = metrics
        .samples
        .last()
        .map_or(1.0, |sample| sample.t_s)
        .max(1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: fraction of live nodes converged", metrics.scenario),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..end, 0.0..1.05)?;
    chart
        .configure_mesh()
        .x_desc("virtual time (s)")
        .y_desc("converged")
        .draw()?;
    let points: Vec<(f64, f64)> = metrics
        .samples
        .iter()
        .map(|sample| {
            (
                sample.t_s,
                sample.converged as f64 / sample.live.max(1) as f64,
            )
        })
        .collect();
    chart
        .draw_series(LineSeries::new(points, &BLUE))?
        .label("converged / live")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    let safety = metrics.safety_end_s;
    chart
        .draw_series(LineSeries::new(vec![(safety, 0.0), (safety, 1.05)], &RED))?
        .label("faults stop")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

fn plot_bytes(path: &Path, metrics: &Metrics) -> Result<()> {
    let root = SVGBackend::new(path, (720, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let bytes = &metrics.bytes;
    let count = bytes.per_node_received.len().max(1);
    let top = bytes.per_node_received.last().copied().unwrap_or(1).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: bytes received per node", metrics.scenario),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("nodes, sorted by bytes received (fraction)")
        .y_desc("bytes")
        .draw()?;
    let fraction = |index: usize| index as f64 / count as f64;
    let all: Vec<(f64, f64)> = bytes
        .per_node_received
        .iter()
        .enumerate()
        .map(|(index, value)| (fraction(index), *value as f64))
        .collect();
    let mut change_path = bytes.per_node_change_path.clone();
    change_path.sort_unstable();
    let change_path: Vec<(f64, f64)> = change_path
        .iter()
        .enumerate()
        .map(|(index, value)| (fraction(index), *value as f64))
        .collect();
    chart
        .draw_series(LineSeries::new(all, &BLUE))?
        .label("all messages")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(change_path, &GREEN))?
        .label("change path (changes, repair, ihave, graft, request, prune)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    let floor = bytes.per_delivery_floor * bytes.changes_new as f64 / count as f64;
    chart
        .draw_series(LineSeries::new(vec![(0.0, floor), (1.0, floor)], &RED))?
        .label("floor: each change received once")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
