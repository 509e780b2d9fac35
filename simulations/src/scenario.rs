//! Scenario files: the fleet, the network, the workload and the faults of a run, as TOML.
//!
//! A fault rate can be a number or a `[min, max]` range. A range is drawn once per run from the
//! seed, so a sweep over seeds also sweeps the fault rates, and each run prints what it drew.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A number, or a `[min, max]` range drawn once per run.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Range {
    /// A fixed value.
    Fixed(f64),
    /// A uniform range, inclusive.
    Between([f64; 2]),
}

impl Default for Range {
    fn default() -> Self {
        Range::Fixed(0.0)
    }
}

impl Range {
    /// Returns the value, drawing from the range when it is one.
    pub fn draw(&self, rng: &mut impl Rng) -> f64 {
        match *self {
            Range::Fixed(value) => value,
            Range::Between([low, high]) if high > low => rng.gen_range(low..=high),
            Range::Between([low, _]) => low,
        }
    }

    fn check(&self, name: &str, min: f64, max: f64) -> Result<()> {
        let (low, high) = match *self {
            Range::Fixed(value) => (value, value),
            Range::Between([low, high]) => (low, high),
        };
        if !(low.is_finite() && high.is_finite()) || low < min || high > max || low > high {
            bail!("{name} must lie in {min}..={max} with min <= max, got {self:?}");
        }
        Ok(())
    }
}

/// A scenario as read from its file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used for output file names.
    pub name: String,
    /// One paragraph on what the scenario shows.
    #[serde(default)]
    pub description: String,
    /// Seed of a run without `--seed`.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Nodes, sites and tenants.
    pub fleet: FleetSpec,
    /// Template documents.
    #[serde(default)]
    pub documents: DocumentsSpec,
    /// Peers, latencies and bandwidth.
    #[serde(default)]
    pub topology: TopologySpec,
    /// Settings of the sync engine that differ from its defaults.
    #[serde(default)]
    pub engine: EngineSpec,
    /// Changes written during the safety phase.
    #[serde(default)]
    pub workload: WorkloadSpec,
    /// The safety phase and its faults.
    pub faults: FaultSpec,
    /// The convergence phase.
    #[serde(default)]
    pub convergence: ConvergenceSpec,
}

fn default_seed() -> u64 {
    1
}

/// Nodes, sites and tenants.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Number of nodes at the start.
    pub nodes: usize,
    /// Number of sites, with nodes spread evenly. `--nodes` scales it.
    pub sites: usize,
    /// Number of tenants. Site `s` belongs to tenant `s % tenants`.
    #[serde(default = "one")]
    pub tenants: usize,
    /// Each node's document starts with a history of 1 to this many changes, which every node
    /// already holds.
    #[serde(default = "default_history")]
    pub history_max: u64,
}

fn one() -> usize {
    1
}

fn default_history() -> u64 {
    4
}

/// Template documents (see the templates module).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocumentsSpec {
    /// Number of distinct template documents.
    pub templates: usize,
    /// Changes per template chain, genesis included: the most changes one node can write.
    pub chain_length: usize,
}

impl Default for DocumentsSpec {
    fn default() -> Self {
        DocumentsSpec {
            templates: 4,
            chain_length: 128,
        }
    }
}

/// Peers, latencies and bandwidth.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologySpec {
    /// Same-site peers each node dials, at most.
    pub lan_peers: usize,
    /// Other-site peers of its tenant each node dials.
    pub wan_peers: usize,
    /// Other-site peers of another tenant each node dials (they share no data).
    pub foreign_peers: usize,
    /// One-way LAN latency, in milliseconds.
    pub lan_latency_ms: f64,
    /// One-way WAN latency of a site pair, in milliseconds, drawn per pair.
    pub wan_latency_ms: [f64; 2],
    /// Bandwidth of each site's WAN uplink, in megabits per second.
    pub site_uplink_mbit: f64,
    /// Bandwidth of each node's network interface, in megabits per second.
    pub node_link_mbit: f64,
    /// Delay before a link that can come back up reconnects, in milliseconds.
    pub reconnect_ms: f64,
}

impl Default for TopologySpec {
    fn default() -> Self {
        TopologySpec {
            lan_peers: 8,
            wan_peers: 2,
            foreign_peers: 0,
            lan_latency_ms: 0.5,
            wan_latency_ms: [10.0, 80.0],
            site_uplink_mbit: 20.0,
            node_link_mbit: 1_000.0,
            reconnect_ms: 2_000.0,
        }
    }
}

/// Settings of `fleetmesh_node::sync::Config`. An absent field keeps the engine's default.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// `Config::anti_entropy_interval_ms`.
    pub anti_entropy_interval_ms: Option<u64>,
    /// `Config::ihave_interval_ms`.
    pub ihave_interval_ms: Option<u64>,
    /// `Config::ihave_peers_max`.
    pub ihave_peers_max: Option<usize>,
    /// `Config::graft_timeout_ms`.
    pub graft_timeout_ms: Option<u64>,
    /// `Config::wan_peer_weight`.
    pub wan_peer_weight: Option<f64>,
    /// `Config::recon_items_max`.
    pub recon_items_max: Option<u64>,
    /// `Config::max_pending`.
    pub max_pending: Option<usize>,
}

/// Changes written during the safety phase.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Changes each node writes per simulated day (upgrades, reboots, configuration edits in
    /// the templates' mix), as a Poisson process.
    #[serde(default)]
    pub changes_per_node_day: f64,
    /// Single changes at fixed times, each on one random node.
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Changes on random nodes before `measure_from_s`, so that the eager push links have
    /// thinned out to a tree as in a fleet that has been running for a while.
    #[serde(default)]
    pub warmup_changes: usize,
    /// Start of the measurement, in seconds: changes written earlier are not followed, and
    /// byte counters start here.
    #[serde(default)]
    pub measure_from_s: f64,
}

/// One change written at a fixed time.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Time from the start of the run, in seconds.
    pub at_s: f64,
}

/// The safety phase and its faults.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Length of the safety phase, in seconds.
    pub duration_s: f64,
    /// Chance that a message is lost.
    #[serde(default)]
    pub loss: Range,
    /// Chance that a message is delivered twice.
    #[serde(default)]
    pub duplicate: Range,
    /// Extra random delay per message, in milliseconds, which reorders messages on a link.
    #[serde(default)]
    pub reorder_jitter_ms: Range,
    /// Node crashes per node per hour.
    #[serde(default)]
    pub crashes_per_node_hour: Range,
    /// How long a crashed node stays down, in seconds.
    #[serde(default = "default_down")]
    pub crash_down_s: [f64; 2],
    /// Largest clock offset of a node, in milliseconds (each node draws from ± this).
    #[serde(default)]
    pub clock_skew_ms: Range,
    /// Random WAN outages per site per hour.
    #[serde(default)]
    pub site_outages_per_site_hour: Range,
    /// How long a random site outage lasts, in seconds.
    #[serde(default = "default_outage")]
    pub site_outage_s: [f64; 2],
    /// Scheduled WAN outages.
    #[serde(default)]
    pub outages: Vec<Outage>,
    /// Nodes that join during the run.
    #[serde(default)]
    pub joins: Vec<Join>,
}

fn default_down() -> [f64; 2] {
    [10.0, 300.0]
}

fn default_outage() -> [f64; 2] {
    [60.0, 900.0]
}

/// A scheduled WAN outage of one site: its LAN keeps working.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// The site index.
    pub site: usize,
    /// Start, in seconds from the start of the run.
    pub at_s: f64,
    /// Length, in seconds.
    pub duration_s: f64,
}

/// New nodes joining at once, spread over random sites.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// Time, in seconds from the start of the run.
    pub at_s: f64,
    /// Number of joining nodes at the scenario's fleet size. `--nodes` scales it.
    pub nodes: usize,
}

/// The convergence phase.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConvergenceSpec {
    /// Longest time for every live node to converge after the faults stop, in seconds.
    pub bound_s: f64,
}

impl Default for ConvergenceSpec {
    fn default() -> Self {
        ConvergenceSpec { bound_s: 600.0 }
    }
}

impl Scenario {
    /// Reads a scenario file, applies `section.key=value` overrides and `nodes`, and checks it.
    pub fn load(path: &Path, overrides: &[String], nodes: Option<usize>) -> Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "failed to read scenario {}; pass a file from simulations/scenarios/",
                path.display()
            )
        })?;
        let mut value: toml::Value = toml::from_str(&text)
            .with_context(|| format!("invalid TOML in scenario {}", path.display()))?;
        for item in overrides {
            apply_override(&mut value, item)?;
        }
        let mut scenario: Scenario = value
            .try_into()
            .with_context(|| format!("invalid scenario {}", path.display()))?;
        if let Some(nodes) = nodes {
            scenario.scale_to(nodes)?;
        }
        scenario.check()?;
        Ok(scenario)
    }

    /// Scales the fleet to `nodes`, keeping nodes per site and the share of joining nodes.
    pub fn scale_to(&mut self, nodes: usize) -> Result<()> {
        if nodes < 2 {
            bail!("--nodes must be at least 2, got {nodes}");
        }
        let per_site = (self.fleet.nodes as f64 / self.fleet.sites.max(1) as f64).max(1.0);
        let ratio = nodes as f64 / self.fleet.nodes.max(1) as f64;
        self.fleet.sites = ((nodes as f64 / per_site).round() as usize).max(1);
        for join in &mut self.faults.joins {
            join.nodes = ((join.nodes as f64 * ratio).round() as usize).max(1);
        }
        self.fleet.nodes = nodes;
        // A tenant needs a site of its own; a small fleet keeps as many tenants as it has sites.
        self.fleet.tenants = self.fleet.tenants.min(self.fleet.sites);
        Ok(())
    }

    fn check(&self) -> Result<()> {
        let fleet = &self.fleet;
        if fleet.nodes < 2 || fleet.sites == 0 || fleet.sites > fleet.nodes {
            bail!(
                "[fleet] needs at least 2 nodes and 1 to {} sites, got {} nodes and {} sites",
                fleet.nodes,
                fleet.nodes,
                fleet.sites
            );
        }
        if fleet.tenants == 0 || fleet.tenants > fleet.sites || fleet.tenants > 999 {
            bail!(
                "[fleet] tenants must be 1 to min(sites, 999), got {}",
                fleet.tenants
            );
        }
        if fleet.history_max == 0 || fleet.history_max as usize >= self.documents.chain_length {
            bail!(
                "[fleet] history_max must be 1 to [documents] chain_length - 1, got {}",
                fleet.history_max
            );
        }
        if self.documents.templates == 0 || self.documents.chain_length < 2 {
            bail!("[documents] needs templates >= 1 and chain_length >= 2");
        }
        let topology = &self.topology;
        let positive = [
            ("lan_latency_ms", topology.lan_latency_ms),
            ("site_uplink_mbit", topology.site_uplink_mbit),
            ("node_link_mbit", topology.node_link_mbit),
        ];
        for (name, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                bail!("[topology] {name} must be a positive number, got {value}");
            }
        }
        let [low, high] = topology.wan_latency_ms;
        if !(low.is_finite() && high.is_finite() && 0.0 < low && low <= high) {
            bail!("[topology] wan_latency_ms must be [min, max] with 0 < min <= max");
        }
        if !(topology.reconnect_ms.is_finite() && topology.reconnect_ms >= 0.0) {
            bail!("[topology] reconnect_ms must be zero or more");
        }
        if let Some(weight) = self.engine.wan_peer_weight {
            if !(0.0..=1.0).contains(&weight) {
                bail!("[engine] wan_peer_weight must be 0.0 to 1.0, got {weight}");
            }
        }
        let workload = &self.workload;
        if !(workload.changes_per_node_day.is_finite() && workload.changes_per_node_day >= 0.0) {
            bail!("[workload] changes_per_node_day must be zero or more");
        }
        let faults = &self.faults;
        if !(faults.duration_s.is_finite() && faults.duration_s > 0.0) {
            bail!(
                "[faults] duration_s must be positive, got {}",
                faults.duration_s
            );
        }
        if !(0.0..faults.duration_s).contains(&workload.measure_from_s) {
            bail!(
                "[workload] measure_from_s = {} lies outside the safety phase 0..{}",
                workload.measure_from_s,
                faults.duration_s
            );
        }
        if workload.warmup_changes > 0 && workload.measure_from_s <= 0.0 {
            bail!("[workload] warmup_changes needs measure_from_s > 0 to write them before");
        }
        for probe in &workload.probes {
            if !(0.0..faults.duration_s).contains(&probe.at_s) {
                bail!(
                    "[[workload.probes]] at_s = {} lies outside the safety phase 0..{}",
                    probe.at_s,
                    faults.duration_s
                );
            }
        }
        faults.loss.check("[faults] loss", 0.0, 0.5)?;
        faults.duplicate.check("[faults] duplicate", 0.0, 0.5)?;
        faults
            .reorder_jitter_ms
            .check("[faults] reorder_jitter_ms", 0.0, 60_000.0)?;
        faults
            .crashes_per_node_hour
            .check("[faults] crashes_per_node_hour", 0.0, 60.0)?;
        faults
            .clock_skew_ms
            .check("[faults] clock_skew_ms", 0.0, 86_400_000.0)?;
        faults.site_outages_per_site_hour.check(
            "[faults] site_outages_per_site_hour",
            0.0,
            60.0,
        )?;
        for (name, [low, high]) in [
            ("crash_down_s", faults.crash_down_s),
            ("site_outage_s", faults.site_outage_s),
        ] {
            if !(low.is_finite() && high.is_finite() && 0.0 <= low && low <= high) {
                bail!("[faults] {name} must be [min, max] with 0 <= min <= max");
            }
        }
        for outage in &faults.outages {
            if outage.site >= fleet.sites {
                bail!(
                    "[[faults.outages]] site = {} does not exist: sites are 0..{}",
                    outage.site,
                    fleet.sites
                );
            }
            if !(outage.at_s >= 0.0 && outage.duration_s > 0.0) {
                bail!("[[faults.outages]] needs at_s >= 0 and duration_s > 0");
            }
        }
        for join in &faults.joins {
            if !(0.0..faults.duration_s).contains(&join.at_s) || join.nodes == 0 {
                bail!(
                    "[[faults.joins]] needs at_s inside the safety phase 0..{} and nodes >= 1",
                    faults.duration_s
                );
            }
        }
        if !(self.convergence.bound_s.is_finite() && self.convergence.bound_s > 0.0) {
            bail!("[convergence] bound_s must be positive");
        }
        Ok(())
    }
}

/// Applies `section.key=value` to a TOML tree; the value is parsed as a TOML value, or taken as
/// a string when it does not parse.
fn apply_override(root: &mut toml::Value, item: &str) -> Result<()> {
    let (path, raw) = item.split_once('=').ok_or_else(|| {
        anyhow!(
            "invalid --set {item:?}: expected section.key=value, e.g. engine.wan_peer_weight=0.5"
        )
    })?;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let mut node = root;
    let parts: Vec<&str> = path.trim().split('.').collect();
    for (depth, part) in parts.iter().enumerate() {
        let table = node
            .as_table_mut()
            .ok_or_else(|| anyhow!("invalid --set {item:?}: {part:?} is not inside a table"))?;
        if depth + 1 == parts.len() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    bail!("invalid --set {item:?}: empty key")
}
