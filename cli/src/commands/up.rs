//! `fleetmesh up`: run a node on embedded defaults.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fleetmesh_model::TenantId;
use fleetmesh_node::daemon::{Node, NodeConfig};
use fleetmesh_node::net::DEFAULT_PORT;
use libp2p::Multiaddr;

use crate::times::parse_duration;

/// Options of `fleetmesh up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Root of the file system to collect from.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,

    /// Address to listen on, as a multiaddr (repeatable). Port 0 picks a free port.
    /// [default: /ip4/0.0.0.0/udp/7411/quic-v1 and /ip4/0.0.0.0/tcp/7411]
    #[arg(long = "listen", value_name = "MULTIADDR", value_parser = parse_multiaddr)]
    listen: Vec<Multiaddr>,

    /// Peer at another site to keep connected, as a multiaddr (repeatable), for example
    /// /ip4/192.0.2.10/udp/7411/quic-v1.
    #[arg(long = "peer", value_name = "MULTIADDR", value_parser = parse_multiaddr)]
    peers: Vec<Multiaddr>,

    /// Turn off mDNS discovery of peers on the local network.
    #[arg(long)]
    no_mdns: bool,

    /// Seconds between collections.
    #[arg(long, default_value_t = 300, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    interval: u64,

    /// Seconds between anti-entropy rounds with a random peer.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    anti_entropy_interval: u64,

    /// Tenant (customer) of the local fleet that a node not enrolled with `fleetmesh join`
    /// creates at first start [default: default]. An enrolled node takes its tenant from its
    /// certificate.
    #[arg(long, value_parser = parse_tenant)]
    tenant: Option<TenantId>,

    /// Site (location) of this node, with the same rules as --tenant [default: default].
    #[arg(long, value_parser = parse_site)]
    site: Option<String>,

    /// File to track on top of the default list (repeatable).
    #[arg(long = "track", value_name = "PATH")]
    track: Vec<String>,

    /// Keep rows of the `changes` table (what `history` prints) for this long: a number and a
    /// unit s, m, h, d or w, such as 90d. Older rows are deleted, and older signed changes are
    /// compacted to their hash and signature (still synced and verified; see docs/history.md).
    /// This runs at start and then every hour, so rows can outlive the window by up to an hour.
    /// [default: keep everything]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    history_retention: Option<Duration>,
}

/// Parses a `--peer` or `--listen` value.
pub fn parse_multiaddr(text: &str) -> Result<Multiaddr, String> {
    text.parse::<Multiaddr>().map_err(|err| {
        format!("{err}; expected a multiaddr such as /ip4/192.0.2.10/udp/{DEFAULT_PORT}/quic-v1")
    })
}

/// Reports whether an address names one host, so that other machines can dial it.
fn is_specific(address: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    // Port 0 asks the system for a free port, which is known only once the node listens.
    let fixed_port = address
        .iter()
        .all(|protocol| !matches!(protocol, Protocol::Udp(0) | Protocol::Tcp(0)));
    fixed_port
        && address.iter().any(|protocol| match protocol {
            Protocol::Ip4(ip) => !ip.is_unspecified(),
            Protocol::Ip6(ip) => !ip.is_unspecified(),
            Protocol::Dns(_) | Protocol::Dns4(_) => true,
            _ => false,
        })
}

fn parse_tenant(text: &str) -> Result<TenantId, String> {
    TenantId::new(text).map_err(|err| err.to_string())
}

fn parse_site(text: &str) -> Result<String, String> {
    fleetmesh_model::ids::validate_name("site", text)
        .map(|()| text.to_string())
        .map_err(|err| err.to_string())
}

/// Runs the node until Ctrl-C or SIGTERM.
pub fn run(data_dir: &Path, args: UpArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let mut config = NodeConfig::new(data_dir.to_path_buf());
    config.root = args.root;
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    config.peers = args.peers;
    config.mdns = !args.no_mdns;
    config.interval = Duration::from_secs(args.interval);
    config.anti_entropy_interval = Duration::from_secs(args.anti_entropy_interval);
    config.tenant = args.tenant;
    config.site = args.site;
    config.extra_tracked_files = args.track;
    config.history_retention = args.history_retention;

    let advertised = config
        .listen
        .iter()
        .find(|address| is_specific(address))
        .map(|address| format!("{address}/p2p/{}", "NODE"));
    let node = Node::prepare(config)?;
    let advertised = advertised.map(|text| text.replace("NODE", &node.node_id().to_string()));
    if let Some(command) = node.join_command(advertised.as_deref()) {
        println!(
            "This node holds the root key of its local fleet {}.",
            node.fleet()
        );
        println!("To join another machine to it (the token is valid for 24 hours), run there:");
        println!("  {command}");
        if advertised.is_none() {
            println!(
                "  (add --peer with one of this node's listen addresses if mDNS cannot reach it)"
            );
        }
        println!("More tokens: fleetmesh fleet token --local --tenant NAME --site NAME --role node --expires 24h");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime failed")?;
    runtime.block_on(node.run(shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEETMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
