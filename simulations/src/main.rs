//! The `fleetmesh-sim` command: run one scenario with one seed, or sweep a range of seeds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use fleetmesh_sim::report::{self, RunInfo};
use fleetmesh_sim::scenario::Scenario;
use fleetmesh_sim::sim::{self, RunOptions};
use fleetmesh_sim::templates::Templates;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fleetmesh-sim",
    about = "Deterministic fleet simulator for the fleetmesh sync engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario with one seed and write its report.
    Run {
        #[command(flatten)]
        common: Common,
        /// Seed of the run (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run one scenario with a range of seeds and report the failing ones.
    Sweep {
        #[command(flatten)]
        common: Common,
        /// Seeds to run, as FIRST..END (END excluded) or FIRST..=LAST.
        #[arg(long, default_value = "1..51")]
        seeds: String,
        /// Runs in parallel (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
    },
}

#[derive(Args)]
struct Common {
    /// Scenario file, or the name of a file in simulations/scenarios/ (e.g. one-change).
    scenario: String,
    /// Number of nodes at the start; sites and joining nodes scale with it.
    #[arg(long)]
    nodes: Option<usize>,
    /// Directory for reports and plots.
    #[arg(long, default_value = "simulations/out")]
    out: PathBuf,
    /// Override a scenario value, as section.key=value (e.g. engine.wan_peer_weight=0.5).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Root directory whose dpkg status gives the node documents' packages.
    #[arg(long)]
    fixture_root: Option<PathBuf>,
}

impl Common {
    fn scenario_path(&self) -> Result<PathBuf> {
        let direct = PathBuf::from(&self.scenario);
        if direct.is_file() {
            return Ok(direct);
        }
        let named = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios")
            .join(format!("{}.toml", self.scenario));
        if named.is_file() {
            return Ok(named);
        }
        bail!(
            "scenario {:?} not found: pass a TOML file or one of the names in {}",
            self.scenario,
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("scenarios")
                .display()
        )
    }

    fn load(&self) -> Result<(Scenario, Templates)> {
        let path = self.scenario_path()?;
        let scenario = Scenario::load(&path, &self.overrides, self.nodes)?;
        let root = self
            .fixture_root
            .clone()
            .unwrap_or_else(fleetmesh_sim::default_fixture_root);
        let templates = Templates::build(
            &root,
            scenario.documents.templates,
            scenario.documents.chain_length,
        )?;
        Ok((scenario, templates))
    }

    fn command(&self, seed: u64, nodes: usize) -> String {
        let mut command = format!(
            "cargo run -p fleetmesh-sim --release -- run {} --nodes {nodes} --seed {seed}",
            self.scenario
        );
        for item in &self.overrides {
            command.push_str(&format!(" --set {item}"));
        }
        if let Some(root) = &self.fixture_root {
            command.push_str(&format!(" --fixture-root {}", root.display()));
        }
        command
    }
}

fn engine_settings(scenario: &Scenario) -> Vec<String> {
    let value = serde_json::to_value(&scenario.engine).unwrap_or_default();
    let mut out = Vec::new();
    if let Some(map) = value.as_object() {
        for (key, value) in map {
            if !value.is_null() {
                out.push(format!("{key} = {value}"));
            }
        }
    }
    out
}

fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let invalid =
        || format!("invalid --seeds {text:?}: expected FIRST..END or FIRST..=LAST, e.g. 1..201");
    let (first, rest, inclusive) = if let Some((first, last)) = text.split_once("..=") {
        (first, last, true)
    } else if let Some((first, end)) = text.split_once("..") {
        (first, end, false)
    } else {
        bail!(invalid());
    };
    let first: u64 = first.trim().parse().with_context(invalid)?;
    let last: u64 = rest.trim().parse().with_context(invalid)?;
    let end = if inclusive {
        last.saturating_add(1)
    } else {
        last
    };
    if end <= first {
        bail!("--seeds {text:?} is empty");
    }
    Ok((first..end).collect())
}

fn run_one(common: &Common, seed: Option<u64>) -> Result<bool> {
    let (scenario, templates) = common.load()?;
    let seed = seed.unwrap_or(scenario.seed);
    let nodes = scenario.fleet.nodes;
    let engine = engine_settings(&scenario);
    let command = common.command(seed, nodes);
    println!("running {} with {nodes} nodes, seed {seed}", scenario.name);
    let started = Instant::now();
    let outcome = sim::run(scenario, &templates, &RunOptions { seed, trace: false })?;
    let wall_s = started.elapsed().as_secs_f64();
    let metrics = &outcome.metrics;
    println!(
        "faults drawn: loss {:.3}, duplicate {:.3}, reorder jitter {:.0} ms, crashes {:.3}/node-hour, clock skew {:.0} ms, site outages {:.3}/site-hour",
        metrics.faults.loss,
        metrics.faults.duplicate,
        metrics.faults.reorder_jitter_ms,
        metrics.faults.crashes_per_node_hour,
        metrics.faults.clock_skew_ms,
        metrics.faults.site_outages_per_site_hour
    );
    let info = RunInfo {
        command: command.clone(),
        wall_s,
        engine,
    };
    let path = report::write(&common.out, metrics, &info)?;
    let spread = &metrics.spread;
    println!(
        "{} changes: 99% in {:.1} ms / {:.0} hops, 100% in {:.1} ms; {:.1} change-path bytes per delivery (floor {:.1}); duplicates {:.1}%; wall {wall_s:.1} s",
        spread.changes,
        spread.time_ms[2],
        spread.hops[2],
        spread.time_ms[3],
        metrics.bytes.per_delivery,
        metrics.bytes.per_delivery_floor,
        metrics.bytes.duplicate_share * 100.0
    );
    println!("report: {}", path.display());
    if metrics.passed() {
        println!("invariants held");
        Ok(true)
    } else {
        for violation in &metrics.violations {
            eprintln!("violation: {violation}");
        }
        eprintln!("SEED={seed}");
        eprintln!("reproduce: {command}");
        Ok(false)
    }
}

struct SweepRow {
    seed: u64,
    passed: bool,
    hops99: f64,
    time100_ms: f64,
    duplicate_share: f64,
    convergence_s: Option<f64>,
    first_violation: Option<String>,
}

fn sweep(common: &Common, seeds: &str, jobs: Option<usize>) -> Result<bool> {
    let seeds = parse_seeds(seeds)?;
    let (scenario, templates) = common.load()?;
    let nodes = scenario.fleet.nodes;
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    println!(
        "sweeping {} with {nodes} nodes over {} seeds ({}..={}), {jobs} jobs",
        scenario.name,
        seeds.len(),
        seeds[0],
        seeds[seeds.len() - 1]
    );
    let started = Instant::now();
    let templates = Arc::new(templates);
    let next = AtomicUsize::new(0);
    let rows: Mutex<Vec<SweepRow>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());

    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(index) else { break };
                let result = sim::run(scenario.clone(), &templates, &RunOptions { seed, trace: false });
                match result {
                    Ok(outcome) => {
                        let metrics = outcome.metrics;
                        let row = SweepRow {
                            seed,
                            passed: metrics.passed(),
                            hops99: metrics.spread.hops[2],
                            time100_ms: metrics.spread.time_ms[3],
                            duplicate_share: metrics.bytes.duplicate_share,
                            convergence_s: metrics.convergence_s,
                            first_violation: metrics.violations.first().cloned(),
                        };
                        if !row.passed {
                            eprintln!(
                                "SEED={seed} failed: {}\nreproduce: {}",
                                row.first_violation.as_deref().unwrap_or("(no text)"),
                                common.command(seed, nodes)
                            );
                        }
                        // One line per finished seed, so that an interrupted sweep's log
                        // still shows which seeds ran and whether they passed.
                        let mut rows = rows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        println!(
                            "seed {seed} {}: hops to 99% {}, time to 100% {} ms; {} runs done, {:.0} s",
                            if row.passed { "passed" } else { "FAILED" },
                            finite_text(row.hops99, 0),
                            finite_text(row.time100_ms, 1),
                            rows.len() + 1,
                            started.elapsed().as_secs_f64()
                        );
                        rows.push(row);
                    }
                    Err(err) => {
                        let text = format!("SEED={seed} could not run: {err:#}");
                        eprintln!("{text}");
                        errors.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(text);
                    }
                }
            });
        }
    });

    let mut rows = rows
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let errors = errors
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    rows.sort_by_key(|row| row.seed);
    let wall_s = started.elapsed().as_secs_f64();
    let failed: Vec<&SweepRow> = rows.iter().filter(|row| !row.passed).collect();
    let mut hops: Vec<f64> = rows
        .iter()
        .map(|row| row.hops99)
        .filter(|v| v.is_finite())
        .collect();
    let mut times: Vec<f64> = rows
        .iter()
        .map(|row| row.time100_ms)
        .filter(|v| v.is_finite())
        .collect();
    let mut duplicates: Vec<f64> = rows.iter().map(|row| row.duplicate_share).collect();
    let mut convergence: Vec<f64> = rows.iter().filter_map(|row| row.convergence_s).collect();
    let summary = format!(
        "{} runs, {} passed, {} failed, {} errors in {wall_s:.1} s wall; medians: hops to 99% {}, time to 100% {} ms, duplicate share {:.1}%, convergence after faults {} s",
        rows.len() + errors.len(),
        rows.len() - failed.len(),
        failed.len(),
        errors.len(),
        median_text(&mut hops, 0),
        median_text(&mut times, 1),
        median(&mut duplicates).unwrap_or(0.0) * 100.0,
        median_text(&mut convergence, 1),
    );
    println!("{summary}");

    std::fs::create_dir_all(&common.out).with_context(|| {
        format!(
            "failed to create the output directory {}",
            common.out.display()
        )
    })?;
    let path = common.out.join(format!(
        "sweep-{}-n{nodes}-{}seeds.json",
        scenario.name,
        seeds.len()
    ));
    let json = serde_json::json!({
        "scenario": scenario.name,
        "nodes": nodes,
        "seeds": [seeds[0], seeds[seeds.len() - 1]],
        "wall_s": wall_s,
        "summary": summary,
        "failed": failed.iter().map(|row| serde_json::json!({
            "seed": row.seed,
            "violation": row.first_violation,
            "command": common.command(row.seed, nodes),
        })).collect::<Vec<_>>(),
        "errors": errors,
        "runs": rows.iter().map(|row| serde_json::json!({
            "seed": row.seed,
            "passed": row.passed,
            "hops99": finite(row.hops99),
            "time100_ms": finite(row.time100_ms),
            "duplicate_share": row.duplicate_share,
            "convergence_s": row.convergence_s,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    println!("sweep report: {}", path.display());
    Ok(failed.is_empty() && errors.is_empty())
}

fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

fn finite_text(value: f64, decimals: usize) -> String {
    match finite(value) {
        Some(value) => format!("{value:.decimals$}"),
        None => "n/a".to_string(),
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    Some(values[values.len() / 2])
}

fn median_text(values: &mut [f64], decimals: usize) -> String {
    match median(values) {
        Some(value) => format!("{value:.decimals$}"),
        None => "n/a".to_string(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run { common, seed } => run_one(common, *seed),
        Command::Sweep {
            common,
            seeds,
            jobs,
        } => sweep(common, seeds, *jobs),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
