//! Measurements of a run: when and at which hop each change reached each node, bytes by
//! message kind, convergence over time, and the invariant violations.

use std::collections::BTreeMap;

use fleetmesh_node::sync::{KindCounters, Stats};
use serde::Serialize;
use sha2::Sha256;

use crate::scenario::Scenario;
use crate::sim::DrawnFaults;
use crate::store::ChainIx;
use crate::templates::Templates;

/// Hop value of a node that has not received a change.
const NO_HOP: u8 = u8::MAX;

/// A running hash of processed events.
#[derive(Default)]
pub struct Trace {
    pub(crate) hasher: Sha256,
    pub(crate) events: u64,
}

/// A change written during the run, followed node by node.
struct Tracked {
    tenant: u16,
    written_at: u64,
    /// Microseconds from writing to storing, per node (`u64::MAX`: not stored).
    delay_us: Vec<u64>,
    /// Hop count at first storing, per node: the author is 0, a receiver is its sender's + 1.
    hops: Vec<u8>,
}

/// One point of the convergence curve.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Virtual time, in seconds.
    pub t_s: f64,
    /// Nodes up and joined.
    pub live: usize,
    /// Live nodes that hold every change of their tenant.
    pub converged: usize,
}

/// Spread of the changes written during the run, over the live nodes of their tenant at the
/// end. Each figure is the median over changes, with the maximum beside it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Spread {
    /// Changes followed.
    pub changes: usize,
    /// Milliseconds to reach 50, 90, 99 and 100 % of nodes: median over changes.
    pub time_ms: [f64; 4],
    /// The same, maximum over changes.
    pub time_ms_max: [f64; 4],
    /// Hops within which 50, 90, 99 and 100 % of nodes received a change: median over changes.
    pub hops: [f64; 4],
    /// The same, maximum over changes.
    pub hops_max: [f64; 4],
    /// Changes that did not reach every live node of their tenant.
    pub incomplete: usize,
    /// Number of (node, change) deliveries per hop count, over all followed changes.
    pub hop_histogram: Vec<u64>,
}

/// Byte figures over all nodes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bytes {
    /// Bytes received by kind, summed over nodes.
    pub received_by_kind: BTreeMap<String, u64>,
    /// Received changes that were new (first deliveries), summed over nodes.
    pub changes_new: u64,
    /// Encoded bytes of those.
    pub change_bytes_new: u64,
    /// Received changes the node already had.
    pub changes_duplicate: u64,
    /// Encoded bytes of those.
    pub change_bytes_duplicate: u64,
    /// Duplicate change bytes over all change bytes received.
    pub duplicate_share: f64,
    /// Bytes of change-carrying and change-steering messages (changes, repair, ihave, graft,
    /// request, prune) received per first delivery of a change.
    pub per_delivery: f64,
    /// The floor: a change's encoded size in a message of its own, averaged over deliveries.
    pub per_delivery_floor: f64,
    /// Reconciliation bytes (summary and ranges) received per node per hour of virtual time.
    pub recon_per_node_hour: f64,
    /// Bytes received per node, sorted ascending (for the plot).
    pub per_node_received: Vec<u64>,
    /// Change-path bytes received per node, in the same order as `per_node_received`.
    pub per_node_change_path: Vec<u64>,
    /// Bytes offered to the simulated network, including lost and duplicated copies.
    pub wire_bytes: u64,
}

/// Everything a run measured.
#[derive(Serialize)]
pub struct Metrics {
    /// Scenario name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Nodes at the start.
    pub nodes: usize,
    /// Nodes including those that join.
    pub nodes_total: usize,
    /// Sites.
    pub sites: usize,
    /// Tenants.
    pub tenants: usize,
    /// The fault rates drawn for this run.
    pub faults: DrawnFaults,
    /// Where the document facts came from.
    pub documents: String,
    /// Packages in the first template.
    pub packages: usize,
    /// End of the safety phase, in seconds.
    pub safety_end_s: f64,
    /// End of the run, in seconds.
    pub end_s: f64,
    /// Start of the measurement, in seconds.
    pub measure_from_s: f64,
    /// When every live node had converged, in microseconds.
    #[serde(skip)]
    pub converged_at: Option<u64>,
    /// Seconds from the end of the safety phase until every live node converged.
    pub convergence_s: Option<f64>,
    /// Invariant violations, empty when the run passed.
    pub violations: Vec<String>,
    /// Changes written during the run.
    pub changes_written: usize,
    /// Spread of those changes.
    pub spread: Spread,
    /// Byte figures.
    pub bytes: Bytes,
    /// Convergence curve.
    pub samples: Vec<Sample>,
    /// Messages lost by the loss fault.
    pub messages_lost: u64,
    /// Messages delivered twice by the duplication fault.
    pub messages_duplicated: u64,
    /// Messages dropped because their link went down in flight.
    pub messages_dropped_in_flight: u64,
    /// Sends by an engine to a peer whose link was down (the engine should not do that).
    pub sends_on_down_links: u64,
    /// Sends to a node id with no link.
    pub unknown_peer_sends: u64,
    /// Disconnects requested by engines.
    pub engine_disconnects: u64,
    /// The first few disconnect reasons.
    pub disconnect_reasons: Vec<String>,
    /// Node crashes.
    pub crashes: u64,
    /// Processed events by kind (message kinds for deliveries).
    pub events: BTreeMap<&'static str, u64>,
    /// Nodes that joined during the run.
    pub joined: u64,
    /// Distinct changes verified with ed25519.
    pub verifications: u64,
    /// Distinct changes signed.
    pub signed_changes: u64,
    /// Overlay entries over all nodes at the end (memory figure).
    pub overlay_entries: u64,
    /// Sum of engine counters over all nodes and incarnations.
    #[serde(skip)]
    totals: Stats,
    #[serde(skip)]
    per_node: Vec<(u64, u64)>,
    /// Per-node counters at the start of the measurement (empty: all zero).
    #[serde(skip)]
    pub(crate) baseline: Vec<Stats>,
    #[serde(skip)]
    tracked: BTreeMap<(ChainIx, u64), Tracked>,
    #[serde(skip)]
    nodes_len: usize,
}

impl Metrics {
    /// Starts the measurements of a run.
    pub fn new(
        scenario: &Scenario,
        seed: u64,
        drawn: &DrawnFaults,
        templates: &Templates,
        nodes_total: usize,
    ) -> Metrics {
        Metrics {
            scenario: scenario.name.clone(),
            seed,
            nodes: scenario.fleet.nodes,
            nodes_total,
            sites: scenario.fleet.sites,
            tenants: scenario.fleet.tenants,
            faults: drawn.clone(),
            documents: templates.source.describe(),
            packages: templates.packages,
            safety_end_s: scenario.faults.duration_s,
            end_s: 0.0,
            measure_from_s: scenario.workload.measure_from_s,
            converged_at: None,
            convergence_s: None,
            violations: Vec::new(),
            changes_written: 0,
            spread: Spread::default(),
            bytes: Bytes::default(),
            samples: Vec::new(),
            messages_lost: 0,
            messages_duplicated: 0,
            messages_dropped_in_flight: 0,
            sends_on_down_links: 0,
            unknown_peer_sends: 0,
            engine_disconnects: 0,
            disconnect_reasons: Vec::new(),
            crashes: 0,
            events: BTreeMap::new(),
            joined: 0,
            verifications: 0,
            signed_changes: 0,
            overlay_entries: 0,
            totals: Stats::default(),
            per_node: Vec::new(),
            baseline: Vec::new(),
            tracked: BTreeMap::new(),
            nodes_len: nodes_total,
        }
    }

    /// Reports whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub(crate) fn violation(&mut self, text: String) {
        // A broken run can produce one violation per node, so keep only the first 50.
        if self.violations.len() < 50 {
            self.violations.push(text);
        }
    }

    pub(crate) fn written(&mut self, chain: ChainIx, seq: u64, author: u32, tenant: u16, at: u64) {
        self.changes_written += 1;
        let mut delay_us = vec![u64::MAX; self.nodes_len];
        let mut hops = vec![NO_HOP; self.nodes_len];
        delay_us[author as usize] = 0;
        hops[author as usize] = 0;
        self.tracked.insert(
            (chain, seq),
            Tracked {
                tenant,
                written_at: at,
                delay_us,
                hops,
            },
        );
    }

    pub(crate) fn arrived(
        &mut self,
        chain: ChainIx,
        seq: u64,
        node: u32,
        from: Option<u32>,
        at: u64,
    ) {
        let Some(tracked) = self.tracked.get_mut(&(chain, seq)) else {
            return;
        };
        let slot = node as usize;
        if tracked.delay_us[slot] != u64::MAX {
            return;
        }
        tracked.delay_us[slot] = at.saturating_sub(tracked.written_at);
        let sender_hop = from.map_or(NO_HOP, |from| tracked.hops[from as usize]);
        tracked.hops[slot] = if sender_hop == NO_HOP {
            NO_HOP
        } else {
            sender_hop.saturating_add(1).min(NO_HOP - 1)
        };
    }

    pub(crate) fn count_event(&mut self, kind: &'static str) {
        *self.events.entry(kind).or_insert(0) += 1;
    }

    pub(crate) fn sample(&mut self, at: u64, live: usize, converged: usize) {
        self.samples.push(Sample {
            t_s: at as f64 / 1e6,
            live,
            converged,
        });
    }

    pub(crate) fn safety_end(&mut self, at: u64) {
        self.safety_end_s = at as f64 / 1e6;
    }

    pub(crate) fn node_stats(&mut self, node: usize, joined: bool, stats: &Stats) {
        if !joined {
            return;
        }
        let stats = &match self.baseline.get(node) {
            Some(before) => subtract_stats(stats, before),
            None => stats.clone(),
        };
        add_counters(&mut self.totals.bytes_received, &stats.bytes_received);
        self.totals.changes_new += stats.changes_new;
        self.totals.change_bytes_new += stats.change_bytes_new;
        self.totals.changes_duplicate += stats.changes_duplicate;
        self.totals.change_bytes_duplicate += stats.change_bytes_duplicate;
        let received = stats.bytes_received.total();
        self.per_node
            .push((received, change_path(&stats.bytes_received)));
    }

    /// Computes the derived figures once the run has ended.
    pub(crate) fn finish(&mut self, end: u64, live_per_tenant: &BTreeMap<u16, Vec<u32>>) {
        self.end_s = end as f64 / 1e6;
        self.compute_spread(live_per_tenant);
        self.compute_bytes();
        self.tracked.clear();
    }

    fn compute_spread(&mut self, live_per_tenant: &BTreeMap<u16, Vec<u32>>) {
        let mut times: Vec<[f64; 4]> = Vec::new();
        let mut hops: Vec<[f64; 4]> = Vec::new();
        let mut histogram = vec![0u64; 64];
        let mut incomplete = 0;
        for tracked in self.tracked.values() {
            // The target is every live node of the author's tenant at the end.
            let Some(members) = live_per_tenant.get(&tracked.tenant) else {
                continue;
            };
            let mut delays: Vec<u64> = members
                .iter()
                .map(|node| tracked.delay_us[*node as usize])
                .collect();
            let mut hop_list: Vec<u8> = members
                .iter()
                .map(|node| tracked.hops[*node as usize])
                .collect();
            delays.sort_unstable();
            hop_list.sort_unstable();
            if delays.last().is_some_and(|delay| *delay == u64::MAX) {
                incomplete += 1;
            }
            for hop in &hop_list {
                if *hop != NO_HOP {
                    histogram[usize::from(*hop).min(63)] += 1;
                }
            }
            let quantile =
                |q: f64| ((q * members.len() as f64).ceil() as usize).clamp(1, members.len()) - 1;
            let mut time_row = [0.0; 4];
            let mut hop_row = [0.0; 4];
            for (slot, q) in [0.5, 0.9, 0.99, 1.0].into_iter().enumerate() {
                let delay = delays[quantile(q)];
                time_row[slot] = if delay == u64::MAX {
                    f64::INFINITY
                } else {
                    delay as f64 / 1e3
                };
                let hop = hop_list[quantile(q)];
                hop_row[slot] = if hop == NO_HOP {
                    f64::INFINITY
                } else {
                    f64::from(hop)
                };
            }
            times.push(time_row);
            hops.push(hop_row);
        }
        while histogram.last() == Some(&0) {
            histogram.pop();
        }
        self.spread = Spread {
            changes: times.len(),
            time_ms: column_stat(&times, median),
            time_ms_max: column_stat(&times, maximum),
            hops: column_stat(&hops, median),
            hops_max: column_stat(&hops, maximum),
            incomplete,
            hop_histogram: histogram,
        };
    }

    fn compute_bytes(&mut self) {
        let received = &self.totals.bytes_received;
        let mut by_kind = BTreeMap::new();
        for kind in fleetmesh_node::sync::MessageKind::ALL {
            by_kind.insert(kind.as_str().to_string(), received.get(kind));
        }
        let totals = &self.totals;
        let all_change_bytes = totals.change_bytes_new + totals.change_bytes_duplicate;
        let duration_h = ((self.end_s - self.measure_from_s) / 3_600.0).max(1e-9);
        self.per_node.sort_unstable();
        let nodes = self.per_node.len().max(1) as f64;
        self.bytes = Bytes {
            received_by_kind: by_kind,
            changes_new: totals.changes_new,
            change_bytes_new: totals.change_bytes_new,
            changes_duplicate: totals.changes_duplicate,
            change_bytes_duplicate: totals.change_bytes_duplicate,
            duplicate_share: ratio(totals.change_bytes_duplicate, all_change_bytes),
            per_delivery: ratio(change_path(received), totals.changes_new),
            // A change alone in a message adds the version byte, the tag and a count of 1.
            per_delivery_floor: ratio(totals.change_bytes_new, totals.changes_new) + 3.0,
            recon_per_node_hour: (received.summary + received.ranges) as f64 / nodes / duration_h,
            per_node_received: self.per_node.iter().map(|(all, _)| *all).collect(),
            per_node_change_path: self.per_node.iter().map(|(_, change)| *change).collect(),
            wire_bytes: self.bytes.wire_bytes,
        };
    }

    /// Adds bytes offered to the network.
    pub(crate) fn add_wire(&mut self, len: u64) {
        self.bytes.wire_bytes += len;
    }
}

fn subtract_stats(after: &Stats, before: &Stats) -> Stats {
    let kinds = |after: &KindCounters, before: &KindCounters| KindCounters {
        summary: after.summary - before.summary,
        ranges: after.ranges - before.ranges,
        changes: after.changes - before.changes,
        repair: after.repair - before.repair,
        ihave: after.ihave - before.ihave,
        graft: after.graft - before.graft,
        request: after.request - before.request,
        prune: after.prune - before.prune,
    };
    Stats {
        messages_sent: kinds(&after.messages_sent, &before.messages_sent),
        bytes_sent: kinds(&after.bytes_sent, &before.bytes_sent),
        messages_received: kinds(&after.messages_received, &before.messages_received),
        bytes_received: kinds(&after.bytes_received, &before.bytes_received),
        changes_new: after.changes_new - before.changes_new,
        change_bytes_new: after.change_bytes_new - before.change_bytes_new,
        changes_duplicate: after.changes_duplicate - before.changes_duplicate,
        change_bytes_duplicate: after.change_bytes_duplicate - before.change_bytes_duplicate,
        ..Stats::default()
    }
}

fn change_path(counters: &KindCounters) -> u64 {
    counters.changes
        + counters.repair
        + counters.ihave
        + counters.graft
        + counters.request
        + counters.prune
}

fn add_counters(total: &mut KindCounters, more: &KindCounters) {
    total.summary += more.summary;
    total.ranges += more.ranges;
    total.changes += more.changes;
    total.repair += more.repair;
    total.ihave += more.ihave;
    total.graft += more.graft;
    total.request += more.request;
    total.prune += more.prune;
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn maximum(values: &mut [f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn column_stat(rows: &[[f64; 4]], stat: fn(&mut [f64]) -> f64) -> [f64; 4] {
    let mut out = [0.0; 4];
    if rows.is_empty() {
        return out;
    }
    for (column, value) in out.iter_mut().enumerate() {
        let mut values: Vec<f64> = rows.iter().map(|row| row[column]).collect();
        *value = stat(&mut values);
    }
    out
}
