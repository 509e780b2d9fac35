//! The running node: one tokio task that drives the sync engine over libp2p and records this
//! machine's facts on a timer.
//!
//! The task owns the engine, the store and the swarm, and reacts to one event at a time in a
//! single `select!` loop: swarm events, frames from stream tasks, engine timers, finished
//! collections, redial timers and shutdown signals. Stream tasks only move bytes; every decision
//! is taken here or in the engine.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use fleetmesh_model::{DocId, Identity, NodeId, TenantId};
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, mdns, Multiaddr, PeerId, Swarm};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::collect::{collect, CollectOptions};
use crate::keyfile;
use crate::net::{
    self, read_frame, write_frame, Behaviour, BehaviourEvent, Hello, FRAME_LEN_MAX,
    PROTOCOL_VERSION, SYNC_PROTOCOL,
};
use crate::store::{Store, StoreError};
use crate::sync::{self, Action, Engine, LocalInfo, Message, PeerInfo, SignatureVerifier};

/// Name of the status file the daemon keeps in its data directory.
pub const STATUS_FILE: &str = "status.json";

/// Meta key under which the store keeps its fleet id.
pub const META_FLEET: &str = "fleet_id";

/// Settings of a running node. [`NodeConfig::new`] gives the embedded defaults.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Directory holding the key, the store and the status file.
    pub data_dir: PathBuf,
    /// Root of the file system the collectors read (`/` on a real machine).
    pub root: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers at other sites to dial and keep connected.
    pub peers: Vec<Multiaddr>,
    /// Whether to discover LAN peers with mDNS.
    pub mdns: bool,
    /// Time between collections.
    pub interval: Duration,
    /// Tenant this node belongs to.
    pub tenant: TenantId,
    /// Site this node is at.
    pub site: String,
    /// Fleet to join; `None` keeps the store's fleet or creates a new one.
    pub fleet: Option<String>,
    /// Files to track on top of the default list.
    pub extra_tracked_files: Vec<String>,
    /// Seconds between anti-entropy rounds.
    pub anti_entropy_interval: Duration,
}

impl NodeConfig {
    /// Returns the embedded defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        let port = net::DEFAULT_PORT;
        let listen = [
            format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
            format!("/ip4/0.0.0.0/tcp/{port}"),
        ]
        .iter()
        .filter_map(|text| text.parse().ok())
        .collect();
        NodeConfig {
            data_dir,
            root: PathBuf::from("/"),
            listen,
            peers: Vec::new(),
            mdns: true,
            interval: Duration::from_secs(300),
            tenant: TenantId::default(),
            site: "default".to_string(),
            fleet: None,
            extra_tracked_files: Vec::new(),
            anti_entropy_interval: Duration::from_secs(30),
        }
    }
}

/// Errors that stop the node from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The data directory cannot be created or used.
    #[error("cannot use data directory {path}: {source}; pass a writable --data-dir")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file is unusable.
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    /// The store is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// The data directory belongs to another fleet.
    #[error(
        "data directory {path} belongs to fleet {stored}, not {requested}; pass --fleet {stored} \
         or use another --data-dir"
    )]
    FleetMismatch {
        /// The directory.
        path: PathBuf,
        /// Fleet id in the store.
        stored: String,
        /// Fleet id requested with --fleet.
        requested: String,
    },
    /// The fleet id given is not valid.
    #[error("invalid fleet id {0:?}: expected 32 hex digits as printed by `fleetmesh up`")]
    InvalidFleet(String),
    /// The root directory does not exist.
    #[error("root directory {0} does not exist; pass an existing --root")]
    MissingRoot(PathBuf),
}

/// Checks a fleet id: 32 lower-case hex digits.
pub fn validate_fleet(fleet: &str) -> Result<(), DaemonError> {
    if fleet.len() == 32
        && fleet
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(DaemonError::InvalidFleet(fleet.to_string()))
    }
}

/// What stream tasks report to the main loop.
enum StreamEvent {
    /// A peer's hello arrived on the inbound stream with this id.
    Hello(PeerId, u64, Hello),
    /// A frame arrived after the hello.
    Frame(PeerId, Vec<u8>),
    /// The inbound stream with this id failed or ended.
    ReaderClosed(PeerId, u64, String),
    /// The outbound stream task with this id failed or ended.
    WriterClosed(PeerId, u64, String),
}

/// A peer with a connection and an outbound stream task.
struct PeerLink {
    writer: mpsc::Sender<Vec<u8>>,
    writer_id: u64,
    in_engine: bool,
    last_status_write: Option<Instant>,
}

/// A `--peer` address the node keeps dialing.
struct DialTarget {
    address: Multiaddr,
    peer: Option<PeerId>,
    connected: bool,
    next_attempt: Instant,
    backoff: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const BAN_DURATION: Duration = Duration::from_secs(60);
const STATUS_WRITE_EVERY: Duration = Duration::from_secs(10);
const WRITER_QUEUE: usize = 1024;

/// A prepared node: keys, store and fleet are checked, nothing runs yet.
pub struct Node {
    config: NodeConfig,
    key: SigningKey,
    node_id: NodeId,
    fleet: String,
    store: Store,
}

impl Node {
    /// Checks the data directory, loads or creates the key, opens the store and settles the
    /// fleet id. Every failure here is a user-facing error.
    pub fn prepare(config: NodeConfig) -> Result<Node, DaemonError> {
        if !config.root.is_dir() {
            return Err(DaemonError::MissingRoot(config.root.clone()));
        }
        create_private_dir(&config.data_dir)?;
        let (key, created) = keyfile::load_or_create(&config.data_dir)?;
        let node_id = keyfile::node_id(&key);
        if created {
            info!(node = %node_id, dir = %config.data_dir.display(), "created a new node key");
        }

        let store = Store::open(&config.data_dir)?;
        let fleet = match (store.meta(META_FLEET)?, &config.fleet) {
            (Some(stored), Some(requested)) if &stored != requested => {
                return Err(DaemonError::FleetMismatch {
                    path: config.data_dir.clone(),
                    stored,
                    requested: requested.clone(),
                });
            }
            (Some(stored), _) => stored,
            (None, Some(requested)) => {
                validate_fleet(requested)?;
                store.set_meta(META_FLEET, requested)?;
                requested.clone()
            }
            (None, None) => {
                let fleet = hex::encode(rand::random::<[u8; 16]>());
                store.set_meta(META_FLEET, &fleet)?;
                info!(fleet = %fleet, "created a new fleet; join other machines with --fleet {fleet}");
                fleet
            }
        };
        Ok(Node {
            config,
            key,
            node_id,
            fleet,
            store,
        })
    }

    /// Returns this node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Returns the fleet id.
    pub fn fleet(&self) -> &str {
        &self.fleet
    }

    /// Runs the node until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        let Node {
            config,
            key,
            node_id,
            fleet,
            store,
        } = self;
        store.clear_connected()?;

        // Network.
        let keypair = keyfile::to_libp2p(&key).map_err(|err| {
            net::NetError::Build(format!("node key is not a valid libp2p key: {err}"))
        })?;
        let mut swarm = net::build_swarm(keypair, config.mdns)?;
        for address in &config.listen {
            swarm
                .listen_on(address.clone())
                .map_err(|err| net::NetError::Listen {
                    address: address.to_string(),
                    reason: err.to_string(),
                })?;
        }
        let mut control = swarm.behaviour().stream.new_control();
        let incoming = control.accept(SYNC_PROTOCOL).map_err(|err| {
            net::NetError::Build(format!("sync protocol registered twice: {err}"))
        })?;
        let (events_tx, mut events) = mpsc::channel::<StreamEvent>(4096);
        tokio::spawn(accept_streams(incoming, events_tx.clone()));

        // Engine.
        let started = Instant::now();
        let engine_config = sync::Config {
            anti_entropy_interval_ms: millis(config.anti_entropy_interval),
            seed: rand::random(),
            ..sync::Config::default()
        };
        let local = LocalInfo {
            node: node_id,
            site: config.site.clone(),
            tenants: vec![config.tenant.clone()],
        };
        let mut engine = Engine::new(engine_config, local, store, SignatureVerifier);

        let hello = Hello {
            version: PROTOCOL_VERSION,
            fleet: fleet.clone(),
            site: config.site.clone(),
            tenants: vec![config.tenant.clone()],
            credentials: Vec::new(),
        }
        .encode();

        let mut state = LoopState {
            config: config.clone(),
            node_id,
            fleet,
            key,
            hello,
            doc_id: DocId::node(config.tenant.clone(), node_id),
            control,
            events_tx,
            links: HashMap::new(),
            banned: HashMap::new(),
            targets: config
                .peers
                .iter()
                .map(|address| DialTarget {
                    address: address.clone(),
                    peer: peer_in(address),
                    connected: false,
                    next_attempt: Instant::now(),
                    backoff: BACKOFF_MIN,
                })
                .collect(),
            listen_addrs: Vec::new(),
            started,
            rng: rand_chacha::ChaCha8Rng::from_entropy(),
            collecting: false,
            next_writer_id: 0,
            hellos: HashMap::new(),
        };
        info!(node = %node_id, fleet = %state.fleet, tenant = %config.tenant, site = %config.site,
              root = %config.root.display(), "node starting");

        let (collected_tx, mut collected) = mpsc::channel(1);
        let mut collect_timer = tokio::time::interval(config.interval);
        collect_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut maintain_timer = tokio::time::interval(Duration::from_millis(500));
        tokio::pin!(shutdown);

        loop {
            let engine_deadline = engine
                .poll_timeout()
                .map(|at| started + Duration::from_millis(at))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                () = &mut shutdown => break,
                event = swarm.select_next_some() => {
                    state.on_swarm_event(&mut swarm, &mut engine, event);
                }
                Some(event) = events.recv() => {
                    state.on_stream_event(&mut swarm, &mut engine, event);
                }
                () = tokio::time::sleep_until(engine_deadline) => {
                    let now = state.now();
                    engine.handle_timeout(now);
                }
                _ = collect_timer.tick() => {
                    state.start_collection(collected_tx.clone());
                }
                Some(facts) = collected.recv() => {
                    state.collecting = false;
                    state.record(&mut engine, facts);
                }
                _ = maintain_timer.tick() => {
                    state.redial(&mut swarm);
                }
            }
            state.drain_actions(&mut swarm, &mut engine);
        }

        info!(node = %node_id, "node stopping");
        if let Err(err) = engine.store_mut().flush_snapshots() {
            warn!(error = %err, "saving document snapshots on shutdown failed");
        }
        Ok(())
    }
}

/// State of the main loop other than the engine and the swarm.
struct LoopState {
    config: NodeConfig,
    node_id: NodeId,
    fleet: String,
    key: SigningKey,
    hello: Vec<u8>,
    doc_id: DocId,
    control: libp2p_stream::Control,
    events_tx: mpsc::Sender<StreamEvent>,
    links: HashMap<PeerId, PeerLink>,
    banned: HashMap<PeerId, Instant>,
    targets: Vec<DialTarget>,
    listen_addrs: Vec<Multiaddr>,
    started: Instant,
    rng: rand_chacha::ChaCha8Rng,
    collecting: bool,
    next_writer_id: u64,
    /// The valid hello of each peer's current inbound stream, with that stream's id.
    hellos: HashMap<PeerId, (u64, Hello)>,
}

type NodeEngine = Engine<Store, SignatureVerifier>;

impl LoopState {
    fn now(&self) -> sync::Timestamp {
        millis(self.started.elapsed())
    }

    fn on_swarm_event(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        engine: &mut NodeEngine,
        event: SwarmEvent<net::BehaviourEvent>,
    ) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(address = %address, node = %self.node_id, "listening");
                self.listen_addrs.push(address);
                self.write_status();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|known| known != &address);
                self.write_status();
            }
            SwarmEvent::ListenerError { error, .. } => {
                warn!(error = %error, "listener failed");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if self.is_banned(&peer_id) {
                    debug!(peer = %peer_id, "closing connection from a peer in backoff");
                    let _ = swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if endpoint.is_dialer() {
                    let address = endpoint.get_remote_address();
                    for target in &mut self.targets {
                        if same_target(&target.address, address) {
                            target.connected = true;
                            target.peer = Some(peer_id);
                            target.backoff = BACKOFF_MIN;
                        }
                    }
                }
                if !self.links.contains_key(&peer_id) {
                    debug!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected");
                    self.open_link(engine, peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                if num_established == 0 {
                    debug!(peer = %peer_id, cause = ?cause, "disconnected");
                    self.hellos.remove(&peer_id);
                    self.drop_link(engine, peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, error = %error, "dial failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let mut by_peer: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
                for (peer, address) in found {
                    by_peer.entry(peer).or_default().push(address);
                }
                for (peer, addresses) in by_peer {
                    if peer == *swarm.local_peer_id()
                        || swarm.is_connected(&peer)
                        || self.is_banned(&peer)
                    {
                        continue;
                    }
                    debug!(peer = %peer, "found by mDNS, dialing");
                    let dial = DialOpts::peer_id(peer).addresses(addresses).build();
                    if let Err(err) = swarm.dial(dial) {
                        debug!(peer = %peer, error = %err, "dial of an mDNS peer failed");
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for address in info.listen_addrs {
                    if is_dialable(&address) {
                        swarm.add_peer_address(peer_id, address);
                    }
                }
            }
            _ => {}
        }
    }

    fn open_link(&mut self, engine: &mut NodeEngine, peer: PeerId) {
        let (writer, frames) = mpsc::channel(WRITER_QUEUE);
        self.next_writer_id += 1;
        let writer_id = self.next_writer_id;
        self.links.insert(
            peer,
            PeerLink {
                writer,
                writer_id,
                in_engine: false,
                last_status_write: None,
            },
        );
        tokio::spawn(write_stream(
            self.control.clone(),
            peer,
            writer_id,
            self.hello.clone(),
            frames,
            self.events_tx.clone(),
        ));
        self.try_join(engine, peer);
    }

    /// Hands the peer to the engine once both directions are ready: our outbound stream task
    /// exists and the peer's hello arrived and was valid.
    fn try_join(&mut self, engine: &mut NodeEngine, peer: PeerId) {
        let Some(node) = net::node_of(&peer) else {
            return;
        };
        let Some((_, hello)) = self.hellos.get(&peer) else {
            return;
        };
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if link.in_engine {
            return;
        }
        link.in_engine = true;
        info!(peer = %peer, site = %hello.site, "peer joined sync");
        let info = PeerInfo {
            site: hello.site.clone(),
            tenants: hello.tenants.clone(),
        };
        let now = self.now();
        engine.handle_connected(node, info, now);
        if let Err(err) = engine.store().set_peer_status(&node, unix_now(), true) {
            warn!(peer = %peer, error = %err, "recording peer status failed");
        }
    }

    fn drop_link(&mut self, engine: &mut NodeEngine, peer: PeerId) {
        if let Some(link) = self.links.remove(&peer) {
            if let Some(node) = net::node_of(&peer) {
                if link.in_engine {
                    engine.handle_disconnected(node, self.now());
                }
                if let Err(err) = engine.store().set_peer_status(&node, unix_now(), false) {
                    warn!(peer = %peer, error = %err, "recording peer status failed");
                }
            }
        }
        let now = Instant::now();
        for target in &mut self.targets {
            if target.peer == Some(peer) && target.connected {
                target.connected = false;
                let jitter = Duration::from_millis(self.rng.gen_range(0..1000));
                target.next_attempt = now + target.backoff + jitter;
            }
        }
    }

    fn on_stream_event(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        engine: &mut NodeEngine,
        event: StreamEvent,
    ) {
        match event {
            StreamEvent::Hello(peer, reader_id, hello) => {
                self.on_hello(swarm, engine, peer, reader_id, hello)
            }
            StreamEvent::Frame(peer, bytes) => {
                let Some(node) = net::node_of(&peer) else {
                    return;
                };
                let in_engine = self.links.get(&peer).is_some_and(|link| link.in_engine);
                if !in_engine {
                    debug!(peer = %peer, "frame from a peer without a valid hello, ignored");
                    return;
                }
                match Message::decode(&bytes, FRAME_LEN_MAX) {
                    Ok(message) => {
                        let now = self.now();
                        engine.handle_message(node, message, now);
                        self.note_heard(engine, peer);
                    }
                    Err(err) => {
                        warn!(peer = %peer, error = %err, "invalid sync message, disconnecting");
                        self.ban(swarm, peer);
                    }
                }
            }
            StreamEvent::ReaderClosed(peer, reader_id, reason) => {
                debug!(peer = %peer, reason = %reason, "inbound sync stream closed");
                let current = self.hellos.get(&peer).is_some_and(|(id, _)| *id == reader_id);
                if !current {
                    return;
                }
                // The peer sends a new hello on its next stream; until then it is out of sync.
                self.hellos.remove(&peer);
                if let Some(link) = self.links.get_mut(&peer) {
                    if link.in_engine {
                        link.in_engine = false;
                        if let Some(node) = net::node_of(&peer) {
                            engine.handle_disconnected(node, self.now());
                        }
                    }
                }
            }
            StreamEvent::WriterClosed(peer, writer_id, reason) => {
                let current = self.links.get(&peer).is_some_and(|link| link.writer_id == writer_id);
                if !current {
                    return;
                }
                debug!(peer = %peer, reason = %reason, "outbound sync stream closed");
                // Messages queued for the old stream are lost; the engine's next anti-entropy
                // round with this peer repairs what they carried.
                self.drop_link(engine, peer);
                if swarm.is_connected(&peer) && !self.is_banned(&peer) {
                    self.open_link(engine, peer);
                }
            }
        }
    }

    fn on_hello(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        engine: &mut NodeEngine,
        peer: PeerId,
        reader_id: u64,
        hello: Hello,
    ) {
        if net::node_of(&peer).is_none() {
            warn!(peer = %peer, "peer key is not ed25519, disconnecting");
            self.ban(swarm, peer);
            return;
        }
        if hello.version != PROTOCOL_VERSION {
            warn!(peer = %peer, version = hello.version, "unsupported protocol version, disconnecting");
            self.ban(swarm, peer);
            return;
        }
        if hello.fleet != self.fleet {
            warn!(peer = %peer, fleet = %hello.fleet, "peer belongs to another fleet, disconnecting");
            self.ban(swarm, peer);
            return;
        }
        let replaced = self.hellos.insert(peer, (reader_id, hello)).is_some();
        if replaced && self.links.contains_key(&peer) {
            // A second stream means the peer reconnected, often after a restart, while our
            // stream may still run over the old connection: start both directions afresh.
            debug!(peer = %peer, "peer opened a new sync stream, resetting the link");
            self.drop_link(engine, peer);
        }
        if self.links.contains_key(&peer) {
            self.try_join(engine, peer);
        } else {
            self.open_link(engine, peer);
        }
    }

    fn note_heard(&mut self, engine: &NodeEngine, peer: PeerId) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let due = link
            .last_status_write
            .is_none_or(|at| at.elapsed() >= STATUS_WRITE_EVERY);
        if !due {
            return;
        }
        link.last_status_write = Some(Instant::now());
        if let Some(node) = net::node_of(&peer) {
            if let Err(err) = engine.store().set_peer_status(&node, unix_now(), true) {
                warn!(peer = %peer, error = %err, "recording peer status failed");
            }
        }
    }

    fn ban(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        self.banned.insert(peer, Instant::now() + BAN_DURATION);
        let _ = swarm.disconnect_peer_id(peer);
    }

    fn is_banned(&mut self, peer: &PeerId) -> bool {
        match self.banned.get(peer) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                self.banned.remove(peer);
                false
            }
            None => false,
        }
    }

    fn drain_actions(&mut self, swarm: &mut Swarm<Behaviour>, engine: &mut NodeEngine) {
        while let Some(action) = engine.poll_action() {
            match action {
                Action::Send { peer, message } => {
                    let Some(peer_id) = net::peer_of(&peer) else {
                        continue;
                    };
                    let Some(link) = self.links.get(&peer_id) else {
                        continue;
                    };
                    if let Err(err) = link.writer.try_send(message.encode()) {
                        warn!(peer = %peer_id, error = %err, "send queue full or closed, message dropped");
                    }
                }
                Action::Disconnect { peer, reason } => {
                    warn!(peer = %peer, reason = %reason, "disconnecting peer that sent invalid data");
                    if let Some(peer_id) = net::peer_of(&peer) {
                        self.ban(swarm, peer_id);
                    }
                }
                Action::Applied { change, from } => {
                    debug!(doc = %change.doc(), seq = change.seq(), from = %from, "applied change");
                }
            }
        }
    }

    fn start_collection(&mut self, done: mpsc::Sender<fleetmesh_model::Facts>) {
        if self.collecting {
            debug!("previous collection still running, skipping this tick");
            return;
        }
        self.collecting = true;
        let mut options = CollectOptions::new(self.config.root.clone());
        options.extra_tracked_files = self.config.extra_tracked_files.clone();
        tokio::task::spawn_blocking(move || {
            let facts = collect(&options);
            let _ = done.blocking_send(facts);
        });
    }

    fn record(&mut self, engine: &mut NodeEngine, facts: fleetmesh_model::Facts) {
        let identity = Identity {
            node_id: self.node_id.to_string(),
            tenant: self.config.tenant.to_string(),
            site: self.config.site.clone(),
            hostname: facts.system.hostname.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let time = unix_now();
        // The local node is always current in its own replica.
        if let Err(err) = engine.store().set_peer_status(&self.node_id, time, false) {
            warn!(error = %err, "recording the local node's status failed");
        }
        match engine
            .store_mut()
            .record_local(&self.doc_id, &identity, &facts, time, &self.key)
        {
            Ok(Some(change)) => {
                info!(doc = %self.doc_id, seq = change.seq(), bytes = change.bytes().len(),
                      "recorded a new change");
                let now = self.now();
                engine.handle_local_change(change, now);
            }
            Ok(None) => debug!("collection found no change"),
            Err(err) => error!(error = %err, "recording the collection failed"),
        }
    }

    fn redial(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = Instant::now();
        for index in 0..self.targets.len() {
            let target = &self.targets[index];
            if target.connected || target.next_attempt > now {
                continue;
            }
            if let Some(peer) = target.peer {
                if swarm.is_connected(&peer) {
                    continue;
                }
            }
            let address = target.address.clone();
            let backoff = target.backoff;
            let jitter =
                Duration::from_millis(self.rng.gen_range(0..=backoff.as_millis() as u64 / 2));
            debug!(address = %address, "dialing peer");
            if let Err(err) = swarm.dial(address.clone()) {
                debug!(address = %address, error = %err, "dial failed");
            }
            let target = &mut self.targets[index];
            target.next_attempt = now + backoff + jitter;
            target.backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn write_status(&self) {
        let status = serde_json::json!({
            "node_id": self.node_id.to_string(),
            "fleet": self.fleet,
            "pid": std::process::id(),
            "listen": self.listen_addrs.iter().map(|a| {
                format!("{a}/p2p/{}", self.node_id)
            }).collect::<Vec<_>>(),
        });
        let path = self.config.data_dir.join(STATUS_FILE);
        let temp = path.with_extension("json.tmp");
        let written =
            std::fs::write(&temp, status.to_string()).and_then(|()| std::fs::rename(&temp, &path));
        if let Err(err) = written {
            warn!(path = %path.display(), error = %err, "writing the status file failed");
        }
    }
}

async fn accept_streams(
    mut incoming: libp2p_stream::IncomingStreams,
    events: mpsc::Sender<StreamEvent>,
) {
    let mut next_reader_id = 0u64;
    while let Some((peer, stream)) = incoming.next().await {
        next_reader_id += 1;
        tokio::spawn(read_stream(peer, next_reader_id, stream, events.clone()));
    }
}

async fn read_stream(
    peer: PeerId,
    reader_id: u64,
    mut stream: libp2p::Stream,
    events: mpsc::Sender<StreamEvent>,
) {
    let hello = tokio::time::timeout(
        Duration::from_secs(10),
        read_frame(&mut stream, FRAME_LEN_MAX),
    )
    .await;
    let hello = match hello {
        Ok(Ok(Some(bytes))) => match Hello::decode(&bytes) {
            Ok(hello) => hello,
            Err(err) => {
                let _ = events
                    .send(StreamEvent::ReaderClosed(peer, reader_id, err.to_string()))
                    .await;
                return;
            }
        },
        Ok(Ok(None)) => {
            let _ = events
                .send(StreamEvent::ReaderClosed(peer, reader_id, "closed before hello".into()))
                .await;
            return;
        }
        Ok(Err(err)) => {
            let _ = events
                .send(StreamEvent::ReaderClosed(peer, reader_id, err.to_string()))
                .await;
            return;
        }
        Err(_) => {
            let _ = events
                .send(StreamEvent::ReaderClosed(
                    peer,
                    reader_id,
                    "timed out waiting for hello".into(),
                ))
                .await;
            return;
        }
    };
    if events.send(StreamEvent::Hello(peer, reader_id, hello)).await.is_err() {
        return;
    }
    loop {
        match read_frame(&mut stream, FRAME_LEN_MAX).await {
            Ok(Some(frame)) => {
                if events.send(StreamEvent::Frame(peer, frame)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = events
                    .send(StreamEvent::ReaderClosed(peer, reader_id, "end of stream".into()))
                    .await;
                return;
            }
            Err(err) => {
                let _ = events
                    .send(StreamEvent::ReaderClosed(peer, reader_id, err.to_string()))
                    .await;
                return;
            }
        }
    }
}

async fn write_stream(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    writer_id: u64,
    hello: Vec<u8>,
    mut frames: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<StreamEvent>,
) {
    let mut stream = match control.open_stream(peer, SYNC_PROTOCOL).await {
        Ok(stream) => stream,
        Err(err) => {
            let _ = events
                .send(StreamEvent::WriterClosed(peer, writer_id, err.to_string()))
                .await;
            return;
        }
    };
    if let Err(err) = write_frame(&mut stream, &hello).await {
        let _ = events
            .send(StreamEvent::WriterClosed(peer, writer_id, err.to_string()))
            .await;
        return;
    }
    while let Some(frame) = frames.recv().await {
        if let Err(err) = write_frame(&mut stream, &frame).await {
            let _ = events
                .send(StreamEvent::WriterClosed(peer, writer_id, err.to_string()))
                .await;
            return;
        }
    }
}

fn create_private_dir(path: &std::path::Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    let result = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path);
    result.map_err(|source| DaemonError::DataDir {
        path: path.to_path_buf(),
        source,
    })?;
    let probe = path.join(".write-test");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|source| DaemonError::DataDir {
            path: path.to_path_buf(),
            source,
        })
}

fn peer_in(address: &Multiaddr) -> Option<PeerId> {
    address.iter().find_map(|protocol| match protocol {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// Compares a target address with a connected address, ignoring a trailing `/p2p/...`.
fn same_target(target: &Multiaddr, connected: &Multiaddr) -> bool {
    let strip = |address: &Multiaddr| {
        address
            .iter()
            .filter(|protocol| !matches!(protocol, Protocol::P2p(_)))
            .collect::<Multiaddr>()
    };
    strip(target) == strip(connected)
}

fn is_dialable(address: &Multiaddr) -> bool {
    !address.iter().any(|protocol| match protocol {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Returns the current time in seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
