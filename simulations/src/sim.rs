//! The discrete-event simulation: nodes, links, faults and the event loop.
//!
//! Time is virtual, in microseconds. Events sit in a binary heap ordered by time and then by the
//! order in which they were scheduled, so two runs with the same seed process the same events in
//! the same order. Every random draw comes from ChaCha streams derived from the run's seed, one
//! stream per purpose, and nothing iterates a hash map where the order could reach the output.
//!
//! Each node runs a real `fleetmesh_node::sync::Engine` over a [`SimStore`]. The engine's `now`
//! is the virtual time in milliseconds plus the node's clock offset.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use fleetmesh_model::{NodeId, TenantId};
use fleetmesh_node::sync::{
    Action, ChainIndex, Config, Engine, LocalInfo, Message, PeerInfo, Prefix, Stats,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::metrics::{Metrics, Trace};
use crate::queue::EventQueue;
use crate::scenario::Scenario;
use crate::store::{ChainIx, Disk, Fleet, NodeIdMap, SimStore, SimVerifier};
use crate::templates::Templates;

type SimEngine = Engine<SimStore, SimVerifier>;

/// Offset added to every engine clock, so that negative clock offsets stay positive.
const CLOCK_EPOCH_MS: i64 = 1_000_000_000_000;

/// Microseconds per second.
const SECOND: u64 = 1_000_000;

/// The fault rates a run drew from its scenario's ranges.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DrawnFaults {
    /// Chance that a message is lost.
    pub loss: f64,
    /// Chance that a message is delivered twice.
    pub duplicate: f64,
    /// Extra random delay per message, in milliseconds.
    pub reorder_jitter_ms: f64,
    /// Node crashes per node per hour.
    pub crashes_per_node_hour: f64,
    /// Largest clock offset, in milliseconds.
    pub clock_skew_ms: f64,
    /// Random WAN outages per site per hour.
    pub site_outages_per_site_hour: f64,
}

/// Random streams, one per purpose, so that a change in one area does not shift the others.
struct Streams {
    topology: ChaCha8Rng,
    network: ChaCha8Rng,
    workload: ChaCha8Rng,
    faults: ChaCha8Rng,
}

fn stream(seed: u64, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(purpose);
    rng
}

struct Node {
    site: u32,
    tenant: u16,
    chain: ChainIx,
    engine: Option<SimEngine>,
    disk: Rc<RefCell<Disk>>,
    /// Has joined the fleet (false for a node waiting for its join time).
    joined: bool,
    incarnation: u32,
    timer_at: Option<u64>,
    clock_offset_ms: i64,
    /// `(peer, link)` pairs.
    links: Vec<(u32, u32)>,
    /// Counters of crashed incarnations.
    past_stats: Stats,
    /// Changes of its tenant the node does not hold yet.
    missing: u64,
    /// Time the node's interface is busy until.
    nic_free_at: u64,
    /// Root summary at the last crash, checked at restart.
    crash_snapshot: Option<(u128, u64)>,
}

impl Node {
    fn live(&self) -> bool {
        self.joined && self.engine.is_some()
    }

    /// Counters of every incarnation so far.
    fn total_stats(&self) -> Stats {
        let mut stats = self.past_stats.clone();
        if let Some(engine) = self.engine.as_ref() {
            add_stats(&mut stats, engine.stats());
        }
        stats
    }
}

struct Link {
    a: u32,
    b: u32,
    wan: bool,
    latency_us: u64,
    up: bool,
    /// Incremented whenever the link goes down, so that messages in flight are dropped.
    epoch: u32,
    /// Disconnected by an engine: stays down until this time.
    banned_until: u64,
    /// Last arrival per direction (a to b, b to a), to keep links in order without jitter.
    last_arrival: [u64; 2],
    retry_scheduled: bool,
}

enum Event {
    Deliver {
        link: u32,
        epoch: u32,
        to: u32,
        message: Message,
    },
    Timer {
        node: u32,
        incarnation: u32,
    },
    Probe,
    Warmup,
    MeasureStart,
    NextWrite,
    Crash,
    Restart {
        node: u32,
    },
    OutageStart {
        site: u32,
        until: u64,
    },
    OutageEnd {
        site: u32,
    },
    RandomOutage,
    Reconnect {
        link: u32,
    },
    Join {
        count: usize,
    },
    Sample,
    SafetyEnd,
}

/// Options of one run that do not come from the scenario file.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The seed.
    pub seed: u64,
    /// Record a hash of every processed event (for the determinism test).
    pub trace: bool,
}

/// The outcome of one run.
pub struct Outcome {
    /// Measurements and invariant results.
    pub metrics: Metrics,
    /// Hash of the event trace, when requested.
    pub trace_hash: Option<String>,
}

/// One simulation run.
pub struct Sim {
    scenario: Scenario,
    seed: u64,
    drawn: DrawnFaults,
    fleet: Rc<RefCell<Fleet>>,
    nodes: Vec<Node>,
    links: Vec<Link>,
    sites: Vec<SiteState>,
    node_of: NodeIdMap<u32>,
    site_latency_us: Vec<Vec<u64>>,
    queue: EventQueue<Event>,
    sequence: u64,
    now: u64,
    safety: bool,
    safety_end: u64,
    rng: Streams,
    /// Nodes waiting to join, in join order.
    waiting: Vec<u32>,
    metrics: Metrics,
    trace: Option<Trace>,
    /// Chains written since the last rebase, each with the index of the node that lacked its
    /// latest change at the last check (0 before the first check).
    dirty: BTreeMap<ChainIx, u32>,
    /// Changes written now are followed node by node.
    measuring: bool,
}

struct SiteState {
    tenant: u16,
    members: Vec<u32>,
    /// WAN outages in force (scheduled and random can overlap).
    outages: u32,
    uplink_free_at: u64,
}

impl Sim {
    /// Builds the fleet of `scenario`: nodes at the shared base, links, and the first events.
    pub fn new(scenario: Scenario, templates: &Templates, options: &RunOptions) -> Result<Sim> {
        let seed = options.seed;
        let mut faults_rng = stream(seed, 1);
        let faults = &scenario.faults;
        let drawn = DrawnFaults {
            loss: faults.loss.draw(&mut faults_rng),
            duplicate: faults.duplicate.draw(&mut faults_rng),
            reorder_jitter_ms: faults.reorder_jitter_ms.draw(&mut faults_rng),
            crashes_per_node_hour: faults.crashes_per_node_hour.draw(&mut faults_rng),
            clock_skew_ms: faults.clock_skew_ms.draw(&mut faults_rng),
            site_outages_per_site_hour: faults.site_outages_per_site_hour.draw(&mut faults_rng),
        };
        let mut rng = Streams {
            topology: stream(seed, 2),
            network: stream(seed, 3),
            workload: stream(seed, 4),
            faults: faults_rng,
        };

        let tenant_names: Vec<TenantId> = (0..scenario.fleet.tenants)
            .map(|index| TenantId::new(&format!("tenant-{index:03}")))
            .collect::<Result<_, _>>()
            .map_err(|err| anyhow!("tenant name: {err}"))?;
        let fleet = Rc::new(RefCell::new(Fleet::new(tenant_names)));

        let site_count = scenario.fleet.sites;
        let mut sites: Vec<SiteState> = (0..site_count)
            .map(|site| SiteState {
                tenant: (site % scenario.fleet.tenants) as u16,
                members: Vec::new(),
                outages: 0,
                uplink_free_at: 0,
            })
            .collect();
        let [low, high] = scenario.topology.wan_latency_ms;
        let mut site_latency_us = vec![vec![0u64; site_count]; site_count];
        // Both halves of the symmetric matrix are written in one pass, so indices read best.
        #[allow(clippy::needless_range_loop)]
        for a in 0..site_count {
            for b in a + 1..site_count {
                let ms = if high > low {
                    rng.topology.gen_range(low..=high)
                } else {
                    low
                };
                site_latency_us[a][b] = (ms * 1_000.0) as u64;
                site_latency_us[b][a] = (ms * 1_000.0) as u64;
            }
        }

        // Existing nodes hold the base; joining nodes are created now and start later.
        let joining: usize = scenario.faults.joins.iter().map(|join| join.nodes).sum();
        let total = scenario.fleet.nodes + joining;
        let mut nodes = Vec::with_capacity(total);
        let mut node_of = NodeIdMap::default();
        let skew = drawn.clock_skew_ms;
        for index in 0..total {
            let existing = index < scenario.fleet.nodes;
            let site = if existing {
                index * site_count / scenario.fleet.nodes
            } else {
                rng.topology.gen_range(0..site_count)
            };
            let tenant = sites[site].tenant;
            let template = Arc::clone(&templates.templates[index % templates.templates.len()]);
            let history = if existing {
                rng.workload.gen_range(1..=scenario.fleet.history_max)
            } else {
                0
            };
            let chain = fleet
                .borrow_mut()
                .add_chain(tenant, template, history, history);
            let node_id = fleet.borrow().chains[chain as usize].node;
            node_of.insert(node_id, index as u32);
            sites[site].members.push(index as u32);
            let clock_offset_ms = if skew > 0.0 {
                rng.faults.gen_range(-skew..=skew) as i64
            } else {
                0
            };
            nodes.push(Node {
                site: site as u32,
                tenant,
                chain,
                engine: None,
                disk: Rc::new(RefCell::new(Disk::new(tenant, existing))),
                joined: existing,
                incarnation: 0,
                timer_at: None,
                clock_offset_ms,
                links: Vec::new(),
                past_stats: Stats::default(),
                missing: 0,
                nic_free_at: 0,
                crash_snapshot: None,
            });
        }

        let safety_end = (scenario.faults.duration_s * SECOND as f64) as u64;
        let waiting = (scenario.fleet.nodes..total)
            .map(|index| index as u32)
            .collect();
        let metrics = Metrics::new(&scenario, seed, &drawn, templates, total);
        let mut sim = Sim {
            scenario,
            seed,
            drawn,
            fleet,
            nodes,
            links: Vec::new(),
            sites,
            node_of,
            site_latency_us,
            queue: EventQueue::new(),
            sequence: 0,
            now: 0,
            safety: true,
            safety_end,
            rng,
            waiting,
            metrics,
            trace: options.trace.then(Trace::default),
            dirty: BTreeMap::new(),
            measuring: true,
        };

        for index in 0..sim.scenario.fleet.nodes as u32 {
            sim.pick_links(index);
        }
        for index in 0..sim.scenario.fleet.nodes as u32 {
            sim.start_engine(index);
        }
        for link in 0..sim.links.len() as u32 {
            sim.update_link(link);
        }
        sim.schedule_initial_events();
        Ok(sim)
    }

    fn schedule_initial_events(&mut self) {
        let probes: Vec<f64> = self
            .scenario
            .workload
            .probes
            .iter()
            .map(|p| p.at_s)
            .collect();
        for at_s in probes {
            self.schedule((at_s * SECOND as f64) as u64, Event::Probe);
        }
        let measure_from = (self.scenario.workload.measure_from_s * SECOND as f64) as u64;
        for _ in 0..self.scenario.workload.warmup_changes {
            let at = self.rng.workload.gen_range(0..measure_from.max(1));
            self.schedule(at, Event::Warmup);
        }
        if measure_from > 0 {
            self.measuring = false;
            self.schedule(measure_from, Event::MeasureStart);
        }
        if self.scenario.workload.changes_per_node_day > 0.0 {
            self.schedule_next_write();
        }
        if self.drawn.crashes_per_node_hour > 0.0 {
            let delay = self.exponential_fleet(self.drawn.crashes_per_node_hour);
            self.schedule(delay, Event::Crash);
        }
        if self.drawn.site_outages_per_site_hour > 0.0 {
            let rate = self.drawn.site_outages_per_site_hour * self.sites.len() as f64;
            let delay = exponential(&mut self.rng.faults, rate / 3_600.0);
            self.schedule(delay, Event::RandomOutage);
        }
        let outages: Vec<(usize, f64, f64)> = self
            .scenario
            .faults
            .outages
            .iter()
            .map(|o| (o.site, o.at_s, o.duration_s))
            .collect();
        for (site, at_s, duration_s) in outages {
            let at = (at_s * SECOND as f64) as u64;
            let until = at + (duration_s * SECOND as f64) as u64;
            self.schedule(
                at,
                Event::OutageStart {
                    site: site as u32,
                    until,
                },
            );
        }
        let joins: Vec<(f64, usize)> = self
            .scenario
            .faults
            .joins
            .iter()
            .map(|join| (join.at_s, join.nodes))
            .collect();
        for (at_s, count) in joins {
            self.schedule((at_s * SECOND as f64) as u64, Event::Join { count });
        }
        self.schedule(self.sample_interval(), Event::Sample);
        self.schedule(self.safety_end, Event::SafetyEnd);
    }

    fn sample_interval(&self) -> u64 {
        // About 400 samples over the safety phase, at least one per second.
        (self.safety_end / 400).max(SECOND)
    }

    fn exponential_fleet(&mut self, per_node_hour: f64) -> u64 {
        let rate = per_node_hour * self.scenario.fleet.nodes as f64 / 3_600.0;
        exponential(&mut self.rng.faults, rate)
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(at.max(self.now), self.sequence, event);
    }

    // Topology.

    /// Dials up to `lan_peers` same-site peers, `wan_peers` other-site peers of the tenant and
    /// `foreign_peers` of other tenants. Links are symmetric.
    fn pick_links(&mut self, index: u32) {
        let topology = self.scenario.topology.clone();
        let site = self.nodes[index as usize].site as usize;
        let tenant = self.nodes[index as usize].tenant;

        let mut lan: Vec<u32> = self.sites[site]
            .members
            .iter()
            .copied()
            .filter(|peer| *peer != index && self.nodes[*peer as usize].joined_or(index))
            .collect();
        lan.shuffle(&mut self.rng.topology);
        for peer in lan.into_iter().take(topology.lan_peers) {
            self.add_link(index, peer);
        }

        let same: Vec<usize> = (0..self.sites.len())
            .filter(|other| *other != site && self.sites[*other].tenant == tenant)
            .collect();
        let foreign: Vec<usize> = (0..self.sites.len())
            .filter(|other| *other != site && self.sites[*other].tenant != tenant)
            .collect();
        for (candidates, count) in [
            (same, topology.wan_peers),
            (foreign, topology.foreign_peers),
        ] {
            if candidates.is_empty() {
                continue;
            }
            for _ in 0..count {
                // A few tries to find a node that is not linked yet.
                for _ in 0..8 {
                    let other = candidates[self.rng.topology.gen_range(0..candidates.len())];
                    let members = &self.sites[other].members;
                    if members.is_empty() {
                        continue;
                    }
                    let peer = members[self.rng.topology.gen_range(0..members.len())];
                    if self.nodes[peer as usize].joined && !self.linked(index, peer) {
                        self.add_link(index, peer);
                        break;
                    }
                }
            }
        }
    }

    fn linked(&self, a: u32, b: u32) -> bool {
        self.nodes[a as usize]
            .links
            .iter()
            .any(|(peer, _)| *peer == b)
    }

    fn add_link(&mut self, a: u32, b: u32) {
        if self.linked(a, b) {
            return;
        }
        let (site_a, site_b) = (self.nodes[a as usize].site, self.nodes[b as usize].site);
        let wan = site_a != site_b;
        let latency_us = if wan {
            self.site_latency_us[site_a as usize][site_b as usize]
        } else {
            (self.scenario.topology.lan_latency_ms * 1_000.0) as u64
        };
        let link = self.links.len() as u32;
        self.links.push(Link {
            a,
            b,
            wan,
            latency_us,
            up: false,
            epoch: 0,
            banned_until: 0,
            last_arrival: [0, 0],
            retry_scheduled: false,
        });
        self.nodes[a as usize].links.push((b, link));
        self.nodes[b as usize].links.push((a, link));
    }

    fn link_between(&self, from: u32, to: u32) -> Option<u32> {
        self.nodes[from as usize]
            .links
            .iter()
            .find(|(peer, _)| *peer == to)
            .map(|(_, link)| *link)
    }

    /// Whether a link can be up now: both ends live, no WAN outage on a WAN link, not banned.
    fn link_possible(&self, link: u32) -> bool {
        let link = &self.links[link as usize];
        let (a, b) = (&self.nodes[link.a as usize], &self.nodes[link.b as usize]);
        if !(a.live() && b.live()) || link.banned_until > self.now {
            return false;
        }
        !link.wan
            || (self.sites[a.site as usize].outages == 0
                && self.sites[b.site as usize].outages == 0)
    }

    /// Takes a link down at once when it cannot be up, and schedules a reconnect when it can
    /// be up again.
    fn update_link(&mut self, link_ix: u32) {
        let possible = self.link_possible(link_ix);
        let link = &mut self.links[link_ix as usize];
        if link.up && !possible {
            link.up = false;
            link.epoch += 1;
            let (a, b) = (link.a, link.b);
            for (local, remote) in [(a, b), (b, a)] {
                let id = self.node_id(remote);
                let now = self.engine_now(local);
                if let Some(engine) = self.nodes[local as usize].engine.as_mut() {
                    engine.handle_disconnected(id, now);
                }
                self.drain(local);
            }
        } else if !link.up && possible && !link.retry_scheduled {
            link.retry_scheduled = true;
            // The first connections of a run come up at once; later ones after a reconnect.
            let delay = if self.now == 0 {
                0
            } else {
                let base = self.scenario.topology.reconnect_ms * 1_000.0;
                (base * self.rng.network.gen_range(0.5..1.5)) as u64
            };
            self.schedule(self.now + delay, Event::Reconnect { link: link_ix });
        }
    }

    fn reconnect(&mut self, link_ix: u32) {
        self.links[link_ix as usize].retry_scheduled = false;
        if self.links[link_ix as usize].up || !self.link_possible(link_ix) {
            if !self.links[link_ix as usize].up {
                // A ban may still be in force: try again after it.
                let banned_until = self.links[link_ix as usize].banned_until;
                if banned_until > self.now && self.nodes_live(link_ix) {
                    self.links[link_ix as usize].retry_scheduled = true;
                    self.schedule(banned_until, Event::Reconnect { link: link_ix });
                }
            }
            return;
        }
        let link = &mut self.links[link_ix as usize];
        link.up = true;
        link.epoch += 1;
        let (a, b) = (link.a, link.b);
        for (local, remote) in [(a, b), (b, a)] {
            let info = PeerInfo {
                site: site_name(self.nodes[remote as usize].site),
                tenants: vec![self.tenant_name(self.nodes[remote as usize].tenant)],
            };
            let id = self.node_id(remote);
            let now = self.engine_now(local);
            if let Some(engine) = self.nodes[local as usize].engine.as_mut() {
                engine.handle_connected(id, info, now);
            }
            self.drain(local);
        }
    }

    fn nodes_live(&self, link: u32) -> bool {
        let link = &self.links[link as usize];
        self.nodes[link.a as usize].live() && self.nodes[link.b as usize].live()
    }

    fn update_links_of(&mut self, node: u32) {
        let links: Vec<u32> = self.nodes[node as usize]
            .links
            .iter()
            .map(|(_, l)| *l)
            .collect();
        for link in links {
            self.update_link(link);
        }
    }

    // Engines.

    fn node_id(&self, node: u32) -> NodeId {
        self.fleet.borrow().chains[self.nodes[node as usize].chain as usize].node
    }

    fn tenant_name(&self, tenant: u16) -> TenantId {
        self.fleet.borrow().tenants[usize::from(tenant)].clone()
    }

    fn engine_now(&self, node: u32) -> u64 {
        let ms =
            (self.now / 1_000) as i64 + self.nodes[node as usize].clock_offset_ms + CLOCK_EPOCH_MS;
        ms.max(0) as u64
    }

    fn engine_config(&self, node: u32) -> Config {
        let spec = &self.scenario.engine;
        let defaults = Config::default();
        let incarnation = u64::from(self.nodes[node as usize].incarnation);
        Config {
            seed: self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (incarnation << 48),
            anti_entropy_interval_ms: spec
                .anti_entropy_interval_ms
                .unwrap_or(defaults.anti_entropy_interval_ms),
            ihave_interval_ms: spec.ihave_interval_ms.unwrap_or(defaults.ihave_interval_ms),
            ihave_peers_max: spec.ihave_peers_max.unwrap_or(defaults.ihave_peers_max),
            graft_timeout_ms: spec.graft_timeout_ms.unwrap_or(defaults.graft_timeout_ms),
            wan_peer_weight: spec.wan_peer_weight.unwrap_or(defaults.wan_peer_weight),
            recon_items_max: spec.recon_items_max.unwrap_or(defaults.recon_items_max),
            max_pending: spec.max_pending.unwrap_or(defaults.max_pending),
            ..defaults
        }
    }

    fn start_engine(&mut self, node: u32) {
        let local = LocalInfo {
            node: self.node_id(node),
            site: site_name(self.nodes[node as usize].site),
            tenants: vec![self.tenant_name(self.nodes[node as usize].tenant)],
        };
        let store = SimStore::new(
            Rc::clone(&self.fleet),
            Rc::clone(&self.nodes[node as usize].disk),
            self.nodes[node as usize].chain,
        );
        let verifier = SimVerifier::new(Rc::clone(&self.fleet));
        let engine = Engine::new(self.engine_config(node), local, store, verifier);
        let state = &mut self.nodes[node as usize];
        state.engine = Some(engine);
        state.timer_at = None;
    }

    /// Carries out every action the node's engine has queued, then re-arms its timer.
    fn drain(&mut self, node: u32) {
        loop {
            let action = match self.nodes[node as usize].engine.as_mut() {
                Some(engine) => engine.poll_action(),
                None => return,
            };
            let Some(action) = action else { break };
            match action {
                Action::Send { peer, message } => self.send(node, peer, message),
                Action::Disconnect { peer, reason } => self.engine_disconnect(node, peer, reason),
                Action::Applied { change, from } => {
                    let from = self.node_of.get(&from).copied();
                    self.applied(node, &change, from);
                }
            }
        }
        self.arm_timer(node);
    }

    fn arm_timer(&mut self, node: u32) {
        let state = &self.nodes[node as usize];
        let Some(engine) = state.engine.as_ref() else {
            return;
        };
        let Some(at_ms) = engine.poll_timeout() else {
            return;
        };
        let sim_ms = at_ms as i64 - CLOCK_EPOCH_MS - state.clock_offset_ms;
        let at = (sim_ms.max(0) as u64).saturating_mul(1_000).max(self.now);
        if state.timer_at.is_none_or(|armed| at < armed) {
            let incarnation = state.incarnation;
            self.nodes[node as usize].timer_at = Some(at);
            self.schedule(at, Event::Timer { node, incarnation });
        }
    }

    fn send(&mut self, from: u32, peer: NodeId, message: Message) {
        let Some(to) = self.node_of.get(&peer).copied() else {
            self.metrics.unknown_peer_sends += 1;
            return;
        };
        let Some(link_ix) = self.link_between(from, to) else {
            self.metrics.unknown_peer_sends += 1;
            return;
        };
        let len = message.encoded_len() as u64;
        self.metrics.add_wire(len);
        if !self.links[link_ix as usize].up {
            self.metrics.sends_on_down_links += 1;
            return;
        }

        // Interface, then the site uplink for WAN links, then latency.
        let node_rate = self.scenario.topology.node_link_mbit / 8.0; // bytes per microsecond
        let state = &mut self.nodes[from as usize];
        let mut departure = state.nic_free_at.max(self.now) + (len as f64 / node_rate) as u64;
        state.nic_free_at = departure;
        let link = &self.links[link_ix as usize];
        if link.wan {
            let site_rate = self.scenario.topology.site_uplink_mbit / 8.0;
            let site = &mut self.sites[self.nodes[from as usize].site as usize];
            departure = site.uplink_free_at.max(departure) + (len as f64 / site_rate) as u64;
            site.uplink_free_at = departure;
        }
        let mut arrival = departure + link.latency_us;

        // Faults, during the safety phase only.
        let mut copies = 1;
        if self.safety {
            if self.drawn.loss > 0.0 && self.rng.network.gen_bool(self.drawn.loss) {
                self.metrics.messages_lost += 1;
                return;
            }
            if self.drawn.duplicate > 0.0 && self.rng.network.gen_bool(self.drawn.duplicate) {
                copies = 2;
                self.metrics.messages_duplicated += 1;
            }
            if self.drawn.reorder_jitter_ms > 0.0 {
                arrival += (self
                    .rng
                    .network
                    .gen_range(0.0..self.drawn.reorder_jitter_ms)
                    * 1_000.0) as u64;
            }
        }
        let direction = usize::from(from != link.a);
        let reorder = self.safety && self.drawn.reorder_jitter_ms > 0.0;
        let link = &mut self.links[link_ix as usize];
        if !reorder {
            arrival = arrival.max(link.last_arrival[direction]);
        }
        link.last_arrival[direction] = link.last_arrival[direction].max(arrival);
        let epoch = link.epoch;
        if copies == 2 {
            let again = arrival + 1;
            self.schedule(
                again,
                Event::Deliver {
                    link: link_ix,
                    epoch,
                    to,
                    message: message.clone(),
                },
            );
        }
        self.schedule(
            arrival,
            Event::Deliver {
                link: link_ix,
                epoch,
                to,
                message,
            },
        );
    }

    fn deliver(&mut self, link_ix: u32, epoch: u32, to: u32, message: Message) {
        let link = &self.links[link_ix as usize];
        if !link.up || link.epoch != epoch {
            self.metrics.messages_dropped_in_flight += 1;
            return;
        }
        let from = if link.a == to { link.b } else { link.a };
        self.check_isolation(to, &message);
        let id = self.node_id(from);
        let now = self.engine_now(to);
        if let Some(engine) = self.nodes[to as usize].engine.as_mut() {
            engine.handle_message(id, message, now);
        }
        self.drain(to);
    }

    /// Records a message that carries data of a tenant the receiver does not replicate.
    fn check_isolation(&mut self, to: u32, message: &Message) {
        let foreign = {
            let fleet = self.fleet.borrow();
            let own = &fleet.tenants[usize::from(self.nodes[to as usize].tenant)];
            match message {
                Message::Summary { tenant, .. } | Message::Ranges { tenant, .. } => tenant != own,
                Message::Changes(changes) | Message::Repair(changes) => {
                    changes.iter().any(|change| change.doc().tenant != *own)
                }
                Message::IHave { heads }
                | Message::Graft { wants: heads }
                | Message::Request { wants: heads } => {
                    heads.iter().any(|head| head.doc.tenant != *own)
                }
                _ => false,
            }
        };
        if foreign {
            self.metrics.violation(format!(
                "node {to} received a {} message with data of another tenant",
                message.kind().as_str()
            ));
        }
    }

    fn engine_disconnect(&mut self, node: u32, peer: NodeId, reason: String) {
        self.metrics.engine_disconnects += 1;
        if self.metrics.disconnect_reasons.len() < 10 {
            self.metrics
                .disconnect_reasons
                .push(format!("node {node}: {reason}"));
        }
        let Some(to) = self.node_of.get(&peer).copied() else {
            return;
        };
        if let Some(link) = self.link_between(node, to) {
            // The production driver backs off before redialing; one minute here.
            self.links[link as usize].banned_until = self.now + 60 * SECOND;
            self.update_link(link);
        }
    }

    fn applied(&mut self, node: u32, change: &fleetmesh_model::SignedChange, from: Option<u32>) {
        let located = self.fleet.borrow().locate(&change.hash());
        let Some((chain, seq)) = located else {
            return;
        };
        let state = &mut self.nodes[node as usize];
        if change.doc().tenant == self.fleet.borrow().tenants[usize::from(state.tenant)] {
            state.missing = state.missing.saturating_sub(1);
        }
        let time = self.now;
        self.metrics.arrived(chain, seq, node, from, time);
    }

    // Workload.

    fn schedule_next_write(&mut self) {
        let rate = self.scenario.workload.changes_per_node_day * self.scenario.fleet.nodes as f64
            / 86_400.0;
        let delay = exponential(&mut self.rng.workload, rate);
        self.schedule(self.now + delay, Event::NextWrite);
    }

    fn random_live_node(&mut self) -> Option<u32> {
        for _ in 0..64 {
            let node = self.rng.workload.gen_range(0..self.nodes.len()) as u32;
            if self.nodes[node as usize].live() {
                return Some(node);
            }
        }
        None
    }

    /// Writes the next change of `node`'s document, stores it and hands it to the engine.
    fn write(&mut self, node: u32) -> Result<()> {
        let chain = self.nodes[node as usize].chain;
        let change = self.fleet.borrow_mut().write_next(chain)?;
        let seq = change.seq();
        let stored = self.nodes[node as usize]
            .engine
            .as_mut()
            .map(|engine| fleetmesh_node::sync::ChangeStore::insert(engine.store_mut(), &change));
        match stored {
            Some(Ok(())) => {}
            Some(Err(err)) => {
                return Err(anyhow!("node {node} could not store its own change: {err}"))
            }
            None => return Ok(()),
        }
        self.dirty.entry(chain).or_insert(0);

        // Every other node of the tenant that has joined now misses one more change.
        let tenant = self.nodes[node as usize].tenant;
        for (index, other) in self.nodes.iter_mut().enumerate() {
            if other.joined && other.tenant == tenant && index as u32 != node {
                other.missing += 1;
            }
        }
        if self.measuring {
            self.metrics.written(chain, seq, node, tenant, self.now);
        }
        let now = self.engine_now(node);
        if let Some(engine) = self.nodes[node as usize].engine.as_mut() {
            engine.handle_local_change(change, now);
        }
        self.drain(node);
        Ok(())
    }

    // Faults.

    fn crash(&mut self, node: u32) {
        let state = &mut self.nodes[node as usize];
        let Some(engine) = state.engine.take() else {
            return;
        };
        add_stats(&mut state.past_stats, engine.stats());
        let tenant = self.fleet.borrow().tenants[usize::from(state.tenant)].clone();
        let snapshot = engine.store().summary(&tenant, Prefix::ROOT);
        state.crash_snapshot = Some(snapshot);
        state.timer_at = None;
        state.incarnation += 1;
        drop(engine);
        self.metrics.crashes += 1;
        self.update_links_of(node);
    }

    fn restart(&mut self, node: u32) {
        if self.nodes[node as usize].engine.is_some() {
            return;
        }
        self.start_engine(node);
        let tenant = self.tenant_name(self.nodes[node as usize].tenant);
        let snapshot = self.nodes[node as usize]
            .engine
            .as_ref()
            .map(|engine| engine.store().summary(&tenant, Prefix::ROOT));
        if let Some(before) = self.nodes[node as usize].crash_snapshot.take() {
            if snapshot != Some(before) {
                self.metrics.violation(format!(
                    "node {node} restarted with a store that differs from the one it crashed with"
                ));
            }
        }
        self.update_links_of(node);
        self.drain(node);
    }

    fn outage(&mut self, site: u32, start: bool) {
        let state = &mut self.sites[site as usize];
        if start {
            state.outages += 1;
        } else {
            state.outages = state.outages.saturating_sub(1);
        }
        let members = state.members.clone();
        for node in members {
            self.update_links_of(node);
        }
    }

    fn join(&mut self, count: usize) {
        let joining: Vec<u32> = self
            .waiting
            .drain(..count.min(self.waiting.len()))
            .collect();
        for &node in &joining {
            self.nodes[node as usize].joined = true;
            let chain = self.nodes[node as usize].chain;
            // The new node's first collection, written before it connects.
            let missing: u64 = {
                let fleet = self.fleet.borrow();
                let tenant = self.nodes[node as usize].tenant;
                fleet
                    .chains
                    .iter()
                    .enumerate()
                    .filter(|(index, chain)| {
                        chain.tenant == tenant && self.nodes[*index].joined && *index as u32 != node
                    })
                    .map(|(_, chain)| chain.written)
                    .sum()
            };
            self.nodes[node as usize].missing = missing;
            self.start_engine(node);
            if let Err(err) = self.write(node) {
                self.metrics
                    .violation(format!("joining node {node} failed to write: {err:#}"));
            }
            let _ = chain;
        }
        for &node in &joining {
            self.pick_links(node);
        }
        for &node in &joining {
            self.update_links_of(node);
        }
        self.metrics.joined += joining.len() as u64;
    }

    fn end_safety(&mut self) {
        self.safety = false;
        // Faults off: restart crashed nodes, end outages, lift bans.
        for site in 0..self.sites.len() {
            self.sites[site].outages = 0;
        }
        for link in &mut self.links {
            link.banned_until = 0;
        }
        for node in 0..self.nodes.len() as u32 {
            if self.nodes[node as usize].joined && self.nodes[node as usize].engine.is_none() {
                self.restart(node);
            }
        }
        for link in 0..self.links.len() as u32 {
            self.update_link(link);
        }
    }

    // Sampling and rebasing.

    fn sample(&mut self) {
        let live = self.nodes.iter().filter(|node| node.live()).count();
        let converged = self
            .nodes
            .iter()
            .filter(|node| node.live() && node.missing == 0)
            .count();
        self.metrics.sample(self.now, live, converged);
        self.rebase();
    }

    /// Moves every chain that all base-holding nodes hold at its latest sequence number into
    /// the shared base, so that per-node overlays stay small.
    fn rebase(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for (chain, lagged) in dirty {
            let (tenant, written, base_seq) = {
                let fleet = self.fleet.borrow();
                let entry = &fleet.chains[chain as usize];
                (entry.tenant, entry.written, entry.base_seq)
            };
            if written == base_seq {
                continue;
            }

            // Find a base-holding node of the tenant that lacks the latest change. The one
            // found at the last check usually still lacks it, so it is tried first.
            let lagging = {
                let fleet = self.fleet.borrow();
                let lacks = |index: usize| {
                    let node = &self.nodes[index];
                    let disk = node.disk.borrow();
                    node.tenant == tenant && disk.has_base && disk.seq_of(&fleet, chain) != written
                };
                let lagged = lagged as usize;
                if lagged < self.nodes.len() && lacks(lagged) {
                    Some(lagged)
                } else {
                    (0..self.nodes.len()).find(|index| lacks(*index))
                }
            };
            if let Some(index) = lagging {
                self.dirty.insert(chain, index as u32);
                continue;
            }
            let delta = self.fleet.borrow_mut().rebase(chain, written);
            let fleet = self.fleet.borrow();
            for node in &self.nodes {
                if node.tenant == tenant {
                    node.disk.borrow_mut().follow_rebase(&fleet, chain, delta);
                }
            }
        }
    }

    // The loop.

    /// Runs the safety phase and the convergence phase, then checks the invariants.
    pub fn run(mut self) -> Result<Outcome> {
        let bound = (self.scenario.convergence.bound_s * SECOND as f64) as u64;
        let mut converged_at = None;
        while let Some((at, sequence, event)) = self.queue.pop() {
            if !self.safety && converged_at.is_none() && self.all_converged() {
                converged_at = Some(self.now);
                break;
            }
            if !self.safety && at > self.safety_end + bound {
                break;
            }
            self.now = at;
            self.metrics.count_event(event_kind(&event));
            if let Some(trace) = self.trace.as_mut() {
                trace.record(at, sequence, &event);
            }
            self.handle(event)?;
        }
        if converged_at.is_none() && !self.safety && self.all_converged() {
            converged_at = Some(self.now);
        }
        self.finish(converged_at)
    }

    fn all_converged(&self) -> bool {
        self.nodes
            .iter()
            .all(|node| !node.live() || node.missing == 0)
    }

    fn handle(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Deliver {
                link,
                epoch,
                to,
                message,
            } => self.deliver(link, epoch, to, message),
            Event::Timer { node, incarnation } => {
                let state = &mut self.nodes[node as usize];
                if state.incarnation != incarnation || state.timer_at != Some(self.now) {
                    return Ok(());
                }
                state.timer_at = None;
                let now = self.engine_now(node);
                if let Some(engine) = self.nodes[node as usize].engine.as_mut() {
                    engine.handle_timeout(now);
                }
                self.drain(node);
            }
            Event::Warmup => {
                if let Some(node) = self.random_live_node() {
                    self.write(node)?;
                }
            }
            Event::MeasureStart => {
                self.measuring = true;
                let baseline: Vec<Stats> = self.nodes.iter().map(Node::total_stats).collect();
                self.metrics.baseline = baseline;
            }
            Event::Probe => {
                if let Some(node) = self.random_live_node() {
                    self.write(node)?;
                }
            }
            Event::NextWrite => {
                if self.safety {
                    if let Some(node) = self.random_live_node() {
                        self.write(node)?;
                    }
                    self.schedule_next_write();
                }
            }
            Event::Crash => {
                if self.safety {
                    let node = self.rng.faults.gen_range(0..self.nodes.len()) as u32;
                    if self.nodes[node as usize].live() {
                        let [low, high] = self.scenario.faults.crash_down_s;
                        let down = self.rng.faults.gen_range(low..=high.max(low));
                        self.crash(node);
                        let at = self.now + (down * SECOND as f64) as u64;
                        self.schedule(at, Event::Restart { node });
                    }
                    let delay = self.exponential_fleet(self.drawn.crashes_per_node_hour);
                    self.schedule(self.now + delay, Event::Crash);
                }
            }
            Event::Restart { node } => self.restart(node),
            Event::OutageStart { site, until } => {
                if self.safety {
                    self.outage(site, true);
                    self.schedule(until, Event::OutageEnd { site });
                }
            }
            Event::OutageEnd { site } => {
                if self.safety {
                    self.outage(site, false);
                }
            }
            Event::RandomOutage => {
                if self.safety {
                    let site = self.rng.faults.gen_range(0..self.sites.len()) as u32;
                    let [low, high] = self.scenario.faults.site_outage_s;
                    let length = self.rng.faults.gen_range(low..=high.max(low));
                    let until = self.now + (length * SECOND as f64) as u64;
                    self.outage(site, true);
                    self.schedule(until, Event::OutageEnd { site });
                    let rate = self.drawn.site_outages_per_site_hour * self.sites.len() as f64;
                    let delay = exponential(&mut self.rng.faults, rate / 3_600.0);
                    self.schedule(self.now + delay, Event::RandomOutage);
                }
            }
            Event::Reconnect { link } => self.reconnect(link),
            Event::Join { count } => self.join(count),
            Event::Sample => {
                self.sample();
                let interval = self.sample_interval();
                self.schedule(self.now + interval, Event::Sample);
            }
            Event::SafetyEnd => {
                self.sample();
                self.end_safety();
                self.metrics.safety_end(self.now);
            }
        }
        Ok(())
    }

    // Invariants and results.

    fn finish(mut self, converged_at: Option<u64>) -> Result<Outcome> {
        self.sample();
        self.metrics.converged_at = converged_at;
        match converged_at {
            Some(at) => {
                self.metrics.convergence_s =
                    Some((at.saturating_sub(self.safety_end)) as f64 / SECOND as f64)
            }
            None => {
                let stuck = self
                    .nodes
                    .iter()
                    .filter(|node| node.live() && node.missing > 0)
                    .count();
                self.metrics.violation(format!(
                    "{stuck} live nodes had not converged {} s after the faults stopped",
                    self.scenario.convergence.bound_s
                ));
            }
        }
        self.check_invariants();

        // Counters: crashed incarnations plus the engines alive now.
        for (index, node) in self.nodes.iter().enumerate() {
            let stats = node.total_stats();
            self.metrics.node_stats(index, node.joined, &stats);
        }
        {
            let fleet = self.fleet.borrow();
            self.metrics.verifications = fleet.verifications;
            self.metrics.signed_changes = fleet.signed_changes;
            self.metrics.overlay_entries = self
                .nodes
                .iter()
                .map(|node| node.disk.borrow().overlay_len() as u64)
                .sum();
        }
        let live_per_tenant = self.live_per_tenant();
        self.metrics.finish(self.now, &live_per_tenant);
        let trace_hash = self.trace.take().map(|trace| trace.finish());
        Ok(Outcome {
            metrics: self.metrics,
            trace_hash,
        })
    }

    fn live_per_tenant(&self) -> BTreeMap<u16, Vec<u32>> {
        let mut out: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if node.live() {
                out.entry(node.tenant).or_default().push(index as u32);
            }
        }
        out
    }

    fn check_invariants(&mut self) {
        let fleet = Rc::clone(&self.fleet);
        let fleet = fleet.borrow();
        let mut problems = Vec::new();

        for (tenant, members) in self.live_per_tenant() {
            let chains: Vec<(ChainIx, u64)> = fleet
                .chains
                .iter()
                .enumerate()
                .filter(|(index, chain)| chain.tenant == tenant && self.nodes[*index].joined)
                .map(|(index, chain)| (index as ChainIx, chain.written))
                .collect();
            let name = fleet.tenants[usize::from(tenant)].clone();
            let mut summaries = BTreeMap::new();
            for &node in &members {
                let state = &self.nodes[node as usize];
                let disk = state.disk.borrow();
                let lagging = chains
                    .iter()
                    .filter(|(chain, written)| disk.seq_of(&fleet, *chain) != *written)
                    .count();
                if lagging > 0 {
                    problems.push(format!(
                        "node {node} of {name} differs from the authors' heads on {lagging} documents"
                    ));
                }
                if let Some(engine) = state.engine.as_ref() {
                    drop(disk);
                    let summary = engine.store().summary(&name, Prefix::ROOT);
                    *summaries.entry(summary).or_insert(0u64) += 1;
                    if engine.store().tenants() != vec![name.clone()] {
                        problems.push(format!(
                            "node {node} of {name} holds documents of tenants {:?}",
                            engine.store().tenants()
                        ));
                    }
                }
            }
            if summaries.len() > 1 {
                problems.push(format!(
                    "live nodes of {name} have {} different summaries",
                    summaries.len()
                ));
            }
        }

        for (index, node) in self.nodes.iter().enumerate() {
            if !node.joined {
                continue;
            }
            let disk = node.disk.borrow();
            for violation in &disk.violations {
                problems.push(format!("node {index}: {violation}"));
            }
            let own = &fleet.chains[node.chain as usize];
            if disk.seq_of(&fleet, node.chain) != own.written {
                problems.push(format!(
                    "node {index} lost its own acknowledged change {} (holds {})",
                    own.written,
                    disk.seq_of(&fleet, node.chain)
                ));
            }
            let foreign: Vec<u16> = disk
                .overlay_tenants(&fleet)
                .into_iter()
                .filter(|tenant| *tenant != node.tenant)
                .collect();
            if !foreign.is_empty() {
                problems.push(format!(
                    "node {index} holds documents of other tenants {foreign:?}"
                ));
            }
        }
        drop(fleet);
        for problem in problems {
            self.metrics.violation(problem);
        }
    }
}

impl Node {
    /// Whether the node can be dialed by `_dialer` now: it has joined.
    fn joined_or(&self, _dialer: u32) -> bool {
        self.joined
    }
}

fn event_kind(event: &Event) -> &'static str {
    match event {
        Event::Deliver { message, .. } => message.kind().as_str(),
        Event::Timer { .. } => "timer",
        Event::Reconnect { .. } => "reconnect",
        _ => "other",
    }
}

fn site_name(site: u32) -> String {
    format!("site-{site:04}")
}

/// Returns an exponentially distributed delay in microseconds for events at `rate` per second.
fn exponential(rng: &mut ChaCha8Rng, rate: f64) -> u64 {
    if rate <= 0.0 {
        return u64::MAX / 4;
    }
    let uniform: f64 = rng.gen_range(f64::EPSILON..1.0);
    ((-uniform.ln() / rate) * SECOND as f64) as u64
}

pub(crate) fn add_stats(total: &mut Stats, more: &Stats) {
    use fleetmesh_node::sync::MessageKind;
    let add_kinds = |total: &mut fleetmesh_node::sync::KindCounters,
                     more: &fleetmesh_node::sync::KindCounters| {
        for kind in MessageKind::ALL {
            let value = more.get(kind);
            match kind {
                MessageKind::Summary => total.summary += value,
                MessageKind::Ranges => total.ranges += value,
                MessageKind::Changes => total.changes += value,
                MessageKind::Repair => total.repair += value,
                MessageKind::IHave => total.ihave += value,
                MessageKind::Graft => total.graft += value,
                MessageKind::Request => total.request += value,
                MessageKind::Prune => total.prune += value,
            }
        }
    };
    add_kinds(&mut total.messages_sent, &more.messages_sent);
    add_kinds(&mut total.bytes_sent, &more.bytes_sent);
    add_kinds(&mut total.messages_received, &more.messages_received);
    add_kinds(&mut total.bytes_received, &more.bytes_received);
    total.changes_new += more.changes_new;
    total.change_bytes_new += more.change_bytes_new;
    total.changes_duplicate += more.changes_duplicate;
    total.change_bytes_duplicate += more.change_bytes_duplicate;
    total.changes_applied += more.changes_applied;
    total.changes_rejected += more.changes_rejected;
    total.pending_dropped += more.pending_dropped;
    total.changes_oversized += more.changes_oversized;
    total.store_errors += more.store_errors;
    total.recon_rounds += more.recon_rounds;
    total.recon_converged += more.recon_converged;
    total.recon_bytes_sent += more.recon_bytes_sent;
    total.peers_disconnected += more.peers_disconnected;
}

/// Hashes the processed events; two runs with the same seed must give the same hash.
impl Trace {
    fn record(&mut self, at: u64, sequence: u64, event: &Event) {
        let tag: u64 = match event {
            Event::Deliver { to, message, .. } => {
                (u64::from(*to) << 8)
                    ^ message.encoded_len() as u64
                    ^ ((message.kind() as u64) << 40)
            }
            Event::Timer { node, .. } => 1 << 60 | u64::from(*node),
            Event::Restart { node } => 2 << 60 | u64::from(*node),
            Event::OutageStart { site, .. } | Event::OutageEnd { site } => {
                3 << 60 | u64::from(*site)
            }
            Event::Reconnect { link } => 4 << 60 | u64::from(*link),
            Event::Join { count } => 5 << 60 | *count as u64,
            _ => 6 << 60,
        };
        self.hasher.update(at.to_le_bytes());
        self.hasher.update(sequence.to_le_bytes());
        self.hasher.update(tag.to_le_bytes());
        self.events += 1;
    }

    fn finish(self) -> String {
        let digest: [u8; 32] = self.hasher.finalize().into();
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// Runs `scenario` once.
pub fn run(scenario: Scenario, templates: &Templates, options: &RunOptions) -> Result<Outcome> {
    let sim =
        Sim::new(scenario, templates, options).context("building the simulated fleet failed")?;
    sim.run()
}

/// Returns a short digest for identifying a scenario in reports.
pub fn scenario_digest(scenario: &Scenario) -> String {
    let text = serde_json::to_string(scenario).unwrap_or_default();
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    digest[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
