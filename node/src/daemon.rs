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
use fleetmesh_model::membership::{format_utc, CertificateChain, FleetId, Scope};
use fleetmesh_model::policy::CheckStatus;
use fleetmesh_model::{ComplianceResult, DocId, DocKind, Identity, NodeId, TenantId};
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, mdns, ping, Multiaddr, PeerId, Swarm};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::collect::{collect, CollectOptions};
use crate::keyfile;
use crate::membership::{self, Credentials, Learned, MemberVerifier, SetupError};
use crate::net::{
    self, read_frame, write_frame, Behaviour, BehaviourEvent, Frame, Hello, FRAME_LEN_MAX,
    PROTOCOL_VERSION, SYNC_PROTOCOL,
};
use crate::policy;
use crate::store::{Compacted, Store, StoreError};
use crate::sync::{self, Action, Engine, LocalInfo, Message, PeerInfo};

/// Time between two runs of history retention (deleting `changes` rows and compacting signed
/// changes older than the window). The first runs at start.
const HISTORY_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Name of the status file the daemon keeps in its data directory.
pub const STATUS_FILE: &str = "status.json";

/// Meta key under which the store keeps its fleet id.
pub const META_FLEET: &str = membership::META_FLEET;

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
    /// Tenant of a local fleet created at first start; an enrolled node's tenant comes from its
    /// certificate, and a different value here is an error.
    pub tenant: Option<TenantId>,
    /// Site, with the same rules as `tenant`.
    pub site: Option<String>,
    /// Files to track on top of the default list.
    pub extra_tracked_files: Vec<String>,
    /// Seconds between anti-entropy rounds.
    pub anti_entropy_interval: Duration,
    /// How long rows of the `changes` table and whole signed changes are kept; `None` keeps
    /// everything. Older signed changes are compacted, never deleted.
    pub history_retention: Option<Duration>,
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
            tenant: None,
            site: None,
            extra_tracked_files: Vec::new(),
            anti_entropy_interval: Duration::from_secs(30),
            history_retention: None,
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
    /// Membership could not be set up.
    #[error(transparent)]
    Membership(#[from] SetupError),
    /// A `--tenant` or `--site` option contradicts the node's certificate.
    #[error(
        "this node is enrolled as {field} {enrolled:?} by its certificate, not {requested:?}; drop \
         --{field}, or enroll another --data-dir with a join token for {field} {requested:?}"
    )]
    ScopeMismatch {
        /// "tenant" or "site".
        field: &'static str,
        /// The value in the certificate.
        enrolled: String,
        /// The value given.
        requested: String,
    },
    /// The root directory does not exist.
    #[error("root directory {0} does not exist; pass an existing --root")]
    MissingRoot(PathBuf),
}

/// What stream tasks report to the main loop.
enum StreamEvent {
    /// A peer's hello arrived on the inbound stream with this id.
    Hello(PeerId, u64, Box<Hello>),
    /// A frame arrived after the hello.
    Frame(PeerId, Vec<u8>),
    /// The inbound stream with this id failed or ended.
    ReaderClosed(PeerId, u64, String),
    /// The peer broke the framing rules (an oversized frame, an undecodable hello).
    Violation(PeerId, String),
    /// The outbound stream task with this id failed or ended.
    WriterClosed(PeerId, u64, String),
}

/// A peer with a connection and an outbound stream task.
struct PeerLink {
    writer: mpsc::Sender<Vec<u8>>,
    writer_id: u64,
    in_engine: bool,
    last_status_write: Option<Instant>,
    /// Authors whose chains were sent on this link's current stream.
    chains_sent: std::collections::HashSet<NodeId>,
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

/// Time between warnings about one peer; further ones go to the debug log.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A prepared node: keys, store and membership are checked, nothing runs yet.
pub struct Node {
    config: NodeConfig,
    key: SigningKey,
    node_id: NodeId,
    credentials: Credentials,
    store: Store,
    local_root: Option<SigningKey>,
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
        let credentials = match Credentials::load(&store)? {
            Some(credentials) => {
                let scope = &credentials.chain.certificate().scope;
                check_scope_option(
                    "tenant",
                    scope.tenant.as_str(),
                    config.tenant.as_ref().map(TenantId::as_str),
                )?;
                check_scope_option("site", &scope.site, config.site.as_deref())?;
                credentials
            }
            None => {
                let tenant = config.tenant.clone().unwrap_or_default();
                let site = config.site.clone().unwrap_or_else(|| "default".to_string());
                let credentials = membership::create_local_fleet(
                    &config.data_dir,
                    &store,
                    &key,
                    tenant,
                    &site,
                    unix_now(),
                )?;
                info!(fleet = %credentials.fleet, "created a local fleet; this node is its operator");
                credentials
            }
        };
        let local_root = keyfile::load_local_root(&config.data_dir)?
            .filter(|root| FleetId::from_root(&root.verifying_key()) == credentials.fleet);
        Ok(Node {
            config,
            key,
            node_id,
            credentials,
            store,
            local_root,
        })
    }

    /// Returns a join command for another machine when this node has its fleet's root key
    /// (a local fleet): a fresh token for this node's tenant and site, and this node's address.
    pub fn join_command(&self, address: Option<&str>) -> Option<String> {
        let root = self.local_root.as_ref()?;
        let scope = &self.credentials.chain.certificate().scope;
        let scope = Scope::new(
            scope.tenant.clone(),
            &scope.site,
            fleetmesh_model::membership::Role::Node,
            Vec::new(),
        )
        .ok()?;
        let token = membership::local_token(root, scope, unix_now()).ok()?;
        let peer = address
            .map(|address| format!(" --peer {address}"))
            .unwrap_or_default();
        Some(format!("fleetmesh join {}{peer}", token.to_text()))
    }

    /// Returns this node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Returns the fleet id.
    pub fn fleet(&self) -> FleetId {
        self.credentials.fleet
    }

    /// Runs the node until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        let Node {
            mut config,
            key,
            node_id,
            credentials,
            store,
            local_root: _,
        } = self;
        store.clear_connected()?;
        let fleet = credentials.fleet;
        if let Some(saved) = store.meta(membership::META_JOIN_PEERS)? {
            for line in saved.lines().filter(|line| !line.trim().is_empty()) {
                match line.trim().parse::<Multiaddr>() {
                    Ok(address) if !config.peers.contains(&address) => config.peers.push(address),
                    Ok(_) => {}
                    Err(err) => {
                        warn!(address = %line, error = %err, "ignored a stored join peer address")
                    }
                }
            }
        }

        // Membership: this node's own chain, the chains it has seen, and the revocations.
        let scope = credentials.chain.certificate().scope.clone();
        match credentials.verify(&node_id, unix_now()) {
            Ok(member) => {
                info!(tenant = %member.tenant, site = %member.site, role = %member.role.as_str(),
                                expires = member.expires, "certificate valid")
            }
            Err(err) => {
                warn!(error = %err, "this node's certificate is not valid, so peers will refuse it")
            }
        }
        let mut verifier = MemberVerifier::new(fleet);
        verifier.set_revocations(membership::stored_revocations(&store, &fleet)?);
        if let Err(err) = verifier.learn(&credentials.chain) {
            warn!(error = %err, "this node's own certificate chain does not verify");
        }
        for bytes in store.members()? {
            let learned = CertificateChain::decode(&bytes).and_then(|chain| verifier.learn(&chain));
            if let Err(err) = learned {
                warn!(error = %err, "ignored a stored certificate chain");
            }
        }

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
        let tenants: Vec<TenantId> = scope.member_tenants().into_iter().collect();
        let local = LocalInfo {
            node: node_id,
            site: scope.site.clone(),
            tenants: tenants.clone(),
        };
        let mut engine = Engine::new(engine_config, local, store, verifier);

        let hello = Hello {
            version: PROTOCOL_VERSION,
            fleet: fleet.to_string(),
            site: scope.site.clone(),
            tenants,
            credentials: credentials.chain.encode(),
        }
        .encode();

        let mut state = LoopState {
            config: config.clone(),
            node_id,
            fleet,
            key,
            hello,
            tenant: scope.tenant.clone(),
            site: scope.site.clone(),
            doc_id: DocId::node(scope.tenant.clone(), node_id),
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
            warned: HashMap::new(),
            evaluating: false,
            evaluation_pending: false,
            evaluated_tx: None,
        };
        info!(node = %node_id, fleet = %state.fleet, tenant = %scope.tenant, site = %scope.site,
              root = %config.root.display(), "node starting");

        let (collected_tx, mut collected) = mpsc::channel(1);
        let (evaluated_tx, mut evaluated) = mpsc::channel(1);
        state.evaluated_tx = Some(evaluated_tx);
        let mut collect_timer = tokio::time::interval(config.interval);
        collect_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut maintain_timer = tokio::time::interval(Duration::from_millis(500));
        let mut history_timer = tokio::time::interval(HISTORY_PRUNE_INTERVAL);
        // Compaction of old signed changes, in steps on the maintenance timer while pending.
        let mut compaction: Option<Compaction> = None;
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
                    state.request_evaluation(&mut engine);
                }
                Some(results) = evaluated.recv() => {
                    state.record_compliance(&mut engine, results);
                }
                _ = maintain_timer.tick() => {
                    state.redial(&mut swarm);
                    state.take_external_changes(&mut swarm, &mut engine);
                    if let Some(run) = compaction.as_mut() {
                        if !run.step(engine.store_mut()) {
                            compaction = None;
                        }
                    }
                }
                _ = history_timer.tick(), if config.history_retention.is_some() => {
                    if let Some(cutoff) = prune_history(engine.store(), config.history_retention) {
                        compaction.get_or_insert_with(|| Compaction::new(cutoff));
                    }
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
    fleet: FleetId,
    tenant: TenantId,
    site: String,
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
    /// Peer info from the valid hello of each peer's current inbound stream, with that
    /// stream's id.
    hellos: HashMap<PeerId, (u64, PeerInfo)>,
    /// When each peer was last warned about, for rate-limiting warnings.
    warned: HashMap<PeerId, Instant>,
    /// Whether a policy evaluation runs now.
    evaluating: bool,
    /// Whether the policies or facts changed while an evaluation ran.
    evaluation_pending: bool,
    /// Sender for finished policy evaluations.
    evaluated_tx: Option<mpsc::Sender<BTreeMap<String, ComplianceResult>>>,
}

type NodeEngine = Engine<Store, MemberVerifier>;

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
                num_established: 0,
                cause,
                ..
            } => {
                debug!(peer = %peer_id, cause = ?cause, "disconnected");
                self.hellos.remove(&peer_id);
                self.drop_link(engine, peer_id);
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
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(err),
            })) => {
                // libp2p keeps a connection whose pings fail. Closing it lets the node notice a
                // dead WAN link and redial, instead of waiting on TCP retransmissions.
                debug!(peer = %peer, error = %err, "ping failed, closing the connection");
                swarm.close_connection(connection);
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
                chains_sent: std::collections::HashSet::new(),
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
        let Some((_, info)) = self.hellos.get(&peer) else {
            return;
        };
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if link.in_engine {
            return;
        }
        link.in_engine = true;
        info!(peer = %peer, site = %info.site, "peer joined sync");
        let info = info.clone();
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
                self.on_hello(swarm, engine, peer, reader_id, *hello)
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
                let frame = match Frame::decode(&bytes) {
                    Ok(frame) => frame,
                    Err(err) => {
                        self.reject(swarm, peer, &format!("sent an invalid frame: {err}"));
                        return;
                    }
                };
                match frame {
                    Frame::Sync(body) => match Message::decode(body, FRAME_LEN_MAX) {
                        Ok(message) => {
                            let now = self.now();
                            engine.handle_message(node, message, now);
                            self.note_heard(engine, peer);
                        }
                        Err(err) => {
                            self.reject(
                                swarm,
                                peer,
                                &format!("sent an invalid sync message: {err}"),
                            );
                        }
                    },
                    Frame::Chains(chains) => self.on_chains(swarm, engine, peer, chains),
                }
            }
            StreamEvent::Violation(peer, reason) => self.reject(swarm, peer, &reason),
            StreamEvent::ReaderClosed(peer, reader_id, reason) => {
                debug!(peer = %peer, reason = %reason, "inbound sync stream closed");
                let current = self
                    .hellos
                    .get(&peer)
                    .is_some_and(|(id, _)| *id == reader_id);
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
                let current = self
                    .links
                    .get(&peer)
                    .is_some_and(|link| link.writer_id == writer_id);
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
        let Some(node) = net::node_of(&peer) else {
            return;
        };
        if hello.fleet != self.fleet.to_string() {
            let reason = format!(
                "belongs to fleet {}, not to this node's fleet {}",
                hello.fleet, self.fleet
            );
            self.reject(swarm, peer, &reason);
            return;
        }
        let chain = match CertificateChain::decode(&hello.credentials) {
            Ok(chain) => chain,
            Err(err) => {
                self.reject(
                    swarm,
                    peer,
                    &format!("presented an invalid certificate chain: {err}"),
                );
                return;
            }
        };
        let member = match engine.verifier_mut().admit_peer(&chain, &node, unix_now()) {
            Ok(member) => member,
            Err(err) => {
                self.reject(
                    swarm,
                    peer,
                    &format!("presented a certificate chain that is refused: {err}"),
                );
                return;
            }
        };
        if let Err(err) = engine.store().save_member(&node, &hello.credentials) {
            warn!(peer = %peer, error = %err, "remembering the peer's certificate chain failed");
        }
        // The certificate, not the hello, decides which tenants the peer may receive.
        let info = PeerInfo {
            site: member.site.clone(),
            tenants: hello
                .tenants
                .iter()
                .filter(|tenant| member.may_replicate(tenant))
                .cloned()
                .collect(),
        };
        let replaced = self.hellos.insert(peer, (reader_id, info)).is_some();
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

    /// Disconnects and backs off from a peer that sent something invalid, with one warning per
    /// peer per [`WARN_EVERY`].
    fn reject(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId, reason: &str) {
        let now = Instant::now();
        let due = self
            .warned
            .get(&peer)
            .is_none_or(|at| now.duration_since(*at) >= WARN_EVERY);
        if due {
            self.warned.insert(peer, now);
            warn!(peer = %peer, reason = %reason, "disconnecting peer");
        } else {
            debug!(peer = %peer, reason = %reason, "disconnecting peer");
        }
        self.ban(swarm, peer);
    }

    /// Learns the chains of authors whose changes `peer` is about to relay.
    fn on_chains(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        engine: &mut NodeEngine,
        peer: PeerId,
        chains: Vec<Vec<u8>>,
    ) {
        for bytes in chains {
            let learned = CertificateChain::decode(&bytes)
                .and_then(|chain| Ok((engine.verifier_mut().learn(&chain)?, chain)));
            match learned {
                Ok((Learned::New, chain)) => {
                    if let Err(err) = engine.store().save_member(&chain.node(), &bytes) {
                        warn!(error = %err, "remembering a certificate chain failed");
                    }
                }
                Ok((Learned::Known | Learned::Revoked, _)) => {}
                Err(err) => {
                    let reason = format!("relayed an invalid certificate chain: {err}");
                    self.reject(swarm, peer, &reason);
                    return;
                }
            }
        }
    }

    /// Rereads the revocations after a membership document changed, and disconnects peers
    /// that are revoked now.
    fn refresh_revocations(&mut self, swarm: &mut Swarm<Behaviour>, engine: &mut NodeEngine) {
        let set = match membership::stored_revocations(engine.store(), &self.fleet) {
            Ok(set) => set,
            Err(err) => {
                error!(error = %err, "reading the revocations failed");
                return;
            }
        };
        let revoked = engine.verifier_mut().set_revocations(set);
        for node in revoked {
            warn!(node = %node, "node revoked; its later changes are refused");
            if let Some(peer) = net::peer_of(&node) {
                if swarm.is_connected(&peer) {
                    self.reject(swarm, peer, "its membership was revoked");
                }
            }
        }
    }

    /// Passes on changes that fleet commands stored beside the daemon.
    fn take_external_changes(&mut self, swarm: &mut Swarm<Behaviour>, engine: &mut NodeEngine) {
        let changes = match engine.store_mut().take_external_changes() {
            Ok(changes) => changes,
            Err(err) => {
                error!(error = %err, "reading changes written by fleet commands failed");
                return;
            }
        };
        let mut membership_changed = false;
        let mut policy_changed = false;
        for change in changes {
            info!(doc = %change.doc(), seq = change.seq(), "passing on a change written by a fleet command");
            membership_changed |= membership::is_membership(change.doc());
            policy_changed |= self.is_own_policy(change.doc());
            let now = self.now();
            engine.handle_local_change(change, now);
        }
        if membership_changed {
            self.refresh_revocations(swarm, engine);
        }
        if policy_changed {
            self.request_evaluation(engine);
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
        let mut membership_changed = false;
        let mut policy_changed = false;
        while let Some(action) = engine.poll_action() {
            match action {
                Action::Send { peer, message } => {
                    let Some(peer_id) = net::peer_of(&peer) else {
                        continue;
                    };
                    let Some(link) = self.links.get_mut(&peer_id) else {
                        continue;
                    };
                    // The receiver verifies a relayed change against its author's chain, so the
                    // chain goes first, once per stream.
                    let chains = chains_to_send(engine.verifier(), link, &peer, &message);
                    if !chains.is_empty() {
                        if let Err(err) = link.writer.try_send(Frame::chains(&chains)) {
                            warn!(peer = %peer_id, error = %err, "send queue full or closed, chains dropped");
                        }
                    }
                    if let Err(err) = link.writer.try_send(Frame::sync(&message.encode())) {
                        warn!(peer = %peer_id, error = %err, "send queue full or closed, message dropped");
                    }
                }
                Action::Disconnect { peer, reason } => {
                    if let Some(peer_id) = net::peer_of(&peer) {
                        self.reject(swarm, peer_id, &reason);
                    }
                }
                Action::Applied { change, from } => {
                    debug!(doc = %change.doc(), seq = change.seq(), from = %from, "applied change");
                    membership_changed |= membership::is_membership(change.doc());
                    policy_changed |= self.is_own_policy(change.doc());
                }
            }
        }
        if membership_changed {
            self.refresh_revocations(swarm, engine);
        }
        if policy_changed {
            self.request_evaluation(engine);
        }
    }

    /// Reports whether `doc` is the policy document of this node's tenant.
    fn is_own_policy(&self, doc: &DocId) -> bool {
        doc.kind == DocKind::Policy && doc.tenant == self.tenant
    }

    /// Evaluates the tenant's policies against this node's facts on a blocking thread. A request
    /// while an evaluation runs is remembered and served when it ends.
    fn request_evaluation(&mut self, engine: &mut NodeEngine) {
        if self.evaluating {
            self.evaluation_pending = true;
            return;
        }
        let Some(done) = self.evaluated_tx.clone() else {
            return;
        };
        let policy_doc = DocId::tenant_doc(DocKind::Policy, self.tenant.clone());
        let policies = engine
            .store()
            .document_changes(&policy_doc)
            .map_err(|err| err.to_string())
            .and_then(|changes| {
                policy::tenant_policies(&self.tenant, &changes).map_err(|err| err.to_string())
            });
        let policies = match policies {
            Ok(policies) => policies,
            Err(err) => {
                error!(error = %err, "reading the tenant's policies failed");
                return;
            }
        };
        self.evaluating = true;
        self.evaluation_pending = false;
        let db_path = engine.store().path().to_path_buf();
        let node = self.node_id.to_string();
        tokio::task::spawn_blocking(move || {
            let results = match policy::node_fact_tables(&db_path, &node) {
                Ok(conn) => policy::evaluate(&conn, &policies),
                Err(err) => {
                    error!(error = %err, "reading this node's facts for policy checks failed");
                    return;
                }
            };
            let _ = done.blocking_send(results);
        });
    }

    /// Records finished policy results in this node's document and passes the change on.
    fn record_compliance(
        &mut self,
        engine: &mut NodeEngine,
        results: BTreeMap<String, ComplianceResult>,
    ) {
        self.evaluating = false;
        let failing = results
            .values()
            .filter(|result| result.status != CheckStatus::Pass)
            .count();
        match engine.store_mut().record_local_compliance(
            &self.doc_id,
            &results,
            unix_now(),
            &self.key,
        ) {
            Ok(Some(change)) => {
                info!(
                    checks = results.len(),
                    failing,
                    seq = change.seq(),
                    "recorded new policy results"
                );
                let now = self.now();
                engine.handle_local_change(change, now);
            }
            Ok(None) => debug!(checks = results.len(), failing, "policy results unchanged"),
            Err(err) => error!(error = %err, "recording policy results failed"),
        }
        if self.evaluation_pending {
            self.request_evaluation(engine);
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
            tenant: self.tenant.to_string(),
            site: self.site.clone(),
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
            "fleet": self.fleet.to_string(),
            "tenant": self.tenant.to_string(),
            "site": self.site,
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
                let reason = format!("sent an invalid hello: {err}");
                let _ = events.send(StreamEvent::Violation(peer, reason)).await;
                let _ = events
                    .send(StreamEvent::ReaderClosed(peer, reader_id, err.to_string()))
                    .await;
                return;
            }
        },
        Ok(Ok(None)) => {
            let _ = events
                .send(StreamEvent::ReaderClosed(
                    peer,
                    reader_id,
                    "closed before hello".into(),
                ))
                .await;
            return;
        }
        Ok(Err(err)) => {
            report_violation(&events, peer, &err).await;
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
    if events
        .send(StreamEvent::Hello(peer, reader_id, Box::new(hello)))
        .await
        .is_err()
    {
        return;
    }
    let mut limiter = InboundLimiter::new();
    loop {
        match read_frame(&mut stream, FRAME_LEN_MAX).await {
            Ok(Some(frame)) => {
                // A peer that sends faster than the limits waits: its stream is not read, and
                // the transport's flow control slows it down.
                if let Some(pause) = limiter.charge(frame.len(), Instant::now()) {
                    debug!(peer = %peer, pause_ms = pause.as_millis() as u64, "peer over its inbound rate, pausing its stream");
                    tokio::time::sleep(pause).await;
                }
                if events.send(StreamEvent::Frame(peer, frame)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = events
                    .send(StreamEvent::ReaderClosed(
                        peer,
                        reader_id,
                        "end of stream".into(),
                    ))
                    .await;
                return;
            }
            Err(err) => {
                report_violation(&events, peer, &err).await;
                let _ = events
                    .send(StreamEvent::ReaderClosed(peer, reader_id, err.to_string()))
                    .await;
                return;
            }
        }
    }
}

/// Reports a frame error that only a misbehaving peer causes, as opposed to a broken stream.
async fn report_violation(events: &mpsc::Sender<StreamEvent>, peer: PeerId, err: &net::FrameError) {
    if matches!(err, net::FrameError::TooLarge { .. }) {
        let reason = format!("sent an oversized frame: {err}");
        let _ = events.send(StreamEvent::Violation(peer, reason)).await;
    }
}

/// Bytes per second a peer may send on average.
const INBOUND_BYTES_PER_SEC: f64 = 16.0 * 1024.0 * 1024.0;
/// Bytes a peer may send in a burst.
const INBOUND_BYTES_BURST: f64 = 64.0 * 1024.0 * 1024.0;
/// Frames per second a peer may send on average.
const INBOUND_FRAMES_PER_SEC: f64 = 2_000.0;
/// Frames a peer may send in a burst.
const INBOUND_FRAMES_BURST: f64 = 10_000.0;

/// Two token buckets, bytes and frames, for one inbound stream.
struct InboundLimiter {
    bytes: f64,
    frames: f64,
    at: Instant,
}

impl InboundLimiter {
    fn new() -> Self {
        InboundLimiter {
            bytes: INBOUND_BYTES_BURST,
            frames: INBOUND_FRAMES_BURST,
            at: Instant::now(),
        }
    }

    /// Takes one frame of `len` bytes from the buckets and returns how long to wait before
    /// reading on, if the buckets ran dry.
    fn charge(&mut self, len: usize, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.bytes = (self.bytes + elapsed * INBOUND_BYTES_PER_SEC).min(INBOUND_BYTES_BURST);
        self.frames = (self.frames + elapsed * INBOUND_FRAMES_PER_SEC).min(INBOUND_FRAMES_BURST);
        self.bytes -= len as f64;
        self.frames -= 1.0;
        let wait = (-self.bytes / INBOUND_BYTES_PER_SEC).max(-self.frames / INBOUND_FRAMES_PER_SEC);
        (wait > 0.0).then(|| Duration::from_secs_f64(wait))
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

/// Returns the encoded chains of the authors in `message` that `link` has not sent yet, and
/// marks them sent. The receiving peer already has its own chain.
fn chains_to_send(
    verifier: &MemberVerifier,
    link: &mut PeerLink,
    peer: &NodeId,
    message: &Message,
) -> Vec<Vec<u8>> {
    let changes = match message {
        Message::Changes(changes) | Message::Repair(changes) => changes,
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for change in changes {
        let author = change.author();
        if author == *peer || link.chains_sent.contains(&author) {
            continue;
        }
        if let Some(chain) = verifier.chain_of(&author) {
            out.push(chain.encode());
            link.chains_sent.insert(author);
        }
    }
    out
}

/// Checks a `--tenant` or `--site` option against the certificate.
fn check_scope_option(
    field: &'static str,
    enrolled: &str,
    requested: Option<&str>,
) -> Result<(), DaemonError> {
    match requested {
        Some(requested) if requested != enrolled => Err(DaemonError::ScopeMismatch {
            field,
            enrolled: enrolled.to_string(),
            requested: requested.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Creates the data directory with mode 0700 if needed and checks that it is writable.
pub fn create_private_dir(path: &std::path::Path) -> Result<(), DaemonError> {
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

/// Deletes the `changes` rows older than `retention` before now, if a retention is set, and
/// returns the cutoff time.
fn prune_history(store: &Store, retention: Option<Duration>) -> Option<i64> {
    let retention = retention?;
    let window = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let cutoff = unix_now().saturating_sub(window);
    let before = format_utc(cutoff);
    match store.prune_history(cutoff) {
        Ok(0) => info!(
            window_secs = window,
            %before,
            "history retention: no history rows older than the window"
        ),
        Ok(deleted) => info!(
            deleted,
            window_secs = window,
            %before,
            "deleted history rows older than the retention window"
        ),
        Err(err) => {
            warn!(error = %err, "deleting history rows older than the retention window failed")
        }
    }
    Some(cutoff)
}

/// Node documents compacted in one step of the maintenance timer. Loading and saving a
/// 700-package document takes a few milliseconds (an estimate from the store benchmarks), so a
/// step stays well under the timer's 500 ms.
const COMPACT_DOCUMENTS_PER_STEP: usize = 16;

/// One run of the compaction of signed changes older than the retention window.
struct Compaction {
    cutoff: i64,
    total: Compacted,
}

impl Compaction {
    fn new(cutoff: i64) -> Self {
        Compaction {
            cutoff,
            total: Compacted::default(),
        }
    }

    /// Compacts the next documents. Returns whether documents remain for later steps.
    fn step(&mut self, store: &mut Store) -> bool {
        match store.compact_changes(self.cutoff, COMPACT_DOCUMENTS_PER_STEP) {
            Ok(done) => {
                self.total.changes += done.changes;
                self.total.bytes += done.bytes;
                self.total.documents += done.documents;
                if done.more {
                    return true;
                }
                if self.total.documents > 0 {
                    info!(
                        documents = self.total.documents,
                        changes = self.total.changes,
                        change_bytes_dropped = self.total.bytes,
                        before = %format_utc(self.cutoff),
                        "compacted signed changes older than the retention window"
                    );
                }
                false
            }
            Err(err) => {
                warn!(error = %err, "compacting signed changes older than the retention window failed");
                false
            }
        }
    }
}

/// Returns the current time in seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_a_burst_then_paces() {
        let mut limiter = InboundLimiter::new();
        let start = limiter.at;
        for _ in 0..(INBOUND_FRAMES_BURST as usize) {
            assert_eq!(limiter.charge(10, start), None);
        }
        let wait = limiter
            .charge(10, start)
            .expect("the frame bucket is empty");
        assert!(wait <= Duration::from_millis(1), "{wait:?}");
        // One second later the buckets hold a second's worth again.
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.charge(10, later), None);

        let mut limiter = InboundLimiter::new();
        let start = limiter.at;
        let wait = limiter
            .charge(
                (INBOUND_BYTES_BURST + INBOUND_BYTES_PER_SEC) as usize,
                start,
            )
            .expect("the byte bucket is overdrawn by one second");
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "{wait:?}");
    }

    #[test]
    fn scope_options_must_match_the_certificate() {
        assert!(check_scope_option("tenant", "acme", None).is_ok());
        assert!(check_scope_option("tenant", "acme", Some("acme")).is_ok());
        let err = check_scope_option("site", "leeds", Some("york")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"leeds\""), "{text}");
        assert!(text.contains("\"york\""), "{text}");
    }
}
