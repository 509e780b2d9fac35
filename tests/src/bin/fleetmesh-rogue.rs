//! A misbehaving fleet member for the membership tests. It takes an enrolled data directory (made
//! with `fleetmesh join`), connects to one fleetmesh node on loopback with that node's real
//! credentials, sends one kind of invalid data, and reports as JSON whether the node closed the
//! connection and which tenants' changes it received.
//!
//! Usage: `fleetmesh-rogue DATA_DIR TARGET_MULTIADDR ATTACK [TENANT]`, where ATTACK is one of
//! `none`, `other-doc`, `forged-author`, `replay`, `foreign-tenant`, `oversized`, `bad-frame`.
//! TENANT names the tenant that `foreign-tenant` asks for.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fleetmesh_model::policy::{Check, Policy, PolicyDocument, RecordKind, Severity};
use fleetmesh_model::{DocId, Facts, Identity, NodeDocument, NodeId, SignedChange, TenantId};
use fleetmesh_node::keyfile;
use fleetmesh_node::membership::Credentials;
use fleetmesh_node::net::{
    self, read_frame, write_frame, Frame, Hello, FRAME_LEN_MAX, SYNC_PROTOCOL,
};
use fleetmesh_node::store::Store;
use fleetmesh_node::sync::{ChainHead, Message};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::Multiaddr;
use tokio::sync::mpsc;

/// How long to wait for the node to react after the attack.
const WATCH: Duration = Duration::from_secs(6);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        bail!("usage: fleetmesh-rogue DATA_DIR TARGET_MULTIADDR ATTACK [TENANT]");
    }
    let data_dir = PathBuf::from(&args[1]);
    let target: Multiaddr = args[2].parse().context("the target is not a multiaddr")?;
    let attack = args[3].clone();
    let tenant_arg = args.get(4).cloned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(data_dir, target, &attack, tenant_arg))?;
    println!("{report}");
    Ok(())
}

async fn run(
    data_dir: PathBuf,
    target: Multiaddr,
    attack: &str,
    tenant_arg: Option<String>,
) -> Result<serde_json::Value> {
    let key = keyfile::load(&data_dir.join(keyfile::KEY_FILE))?;
    let node = keyfile::node_id(&key);
    let store = Store::open(&data_dir)?;
    let credentials = Credentials::load(&store)?.context("the data directory is not enrolled")?;
    drop(store);
    let scope = credentials.chain.certificate().scope.clone();
    let victim_peer = target
        .iter()
        .find_map(|protocol| match protocol {
            Protocol::P2p(peer) => Some(peer),
            _ => None,
        })
        .context("the target address has no /p2p/ part")?;
    let victim = net::node_of(&victim_peer).context("the target is not an ed25519 peer")?;

    let mut swarm = net::build_swarm(keyfile::to_libp2p(&key)?, false)?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let mut control = swarm.behaviour().stream.new_control();
    let mut incoming = control.accept(SYNC_PROTOCOL)?;

    // Count the messages the node sends, and its changes by tenant.
    let (counts_tx, mut counts_rx) = mpsc::unbounded_channel::<Option<TenantId>>();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let counts = counts_tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(frame)) = read_frame(&mut stream, FRAME_LEN_MAX).await {
                    let Ok(Frame::Sync(body)) = Frame::decode(&frame) else {
                        continue;
                    };
                    match Message::decode(body, FRAME_LEN_MAX) {
                        Ok(Message::Changes(changes) | Message::Repair(changes)) => {
                            for change in changes {
                                let _ = counts.send(Some(change.doc().tenant.clone()));
                            }
                        }
                        Ok(_) => {
                            let _ = counts.send(None);
                        }
                        Err(_) => {}
                    }
                }
            });
        }
    });

    swarm.dial(target.clone())?;
    let started = tokio::time::Instant::now();
    let mut attacked = false;
    let mut closed = false;
    let deadline = started + Duration::from_secs(20);
    let mut watch_until = deadline;
    loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == victim_peer && !attacked => {
                    attacked = true;
                    let stream = control.open_stream(victim_peer, SYNC_PROTOCOL).await
                        .map_err(|err| anyhow::anyhow!("opening the sync stream failed: {err}"))?;
                    let hello = Hello {
                        version: net::PROTOCOL_VERSION,
                        fleet: credentials.fleet.to_string(),
                        site: scope.site.clone(),
                        tenants: claimed_tenants(&scope.tenant, tenant_arg.as_deref())?,
                        credentials: credentials.chain.encode(),
                    };
                    let frames = attack_frames(attack, &key, node, victim, &scope.tenant, tenant_arg.as_deref())?;
                    tokio::spawn(send(stream, hello, frames));
                    watch_until = tokio::time::Instant::now() + WATCH;
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if peer_id == victim_peer && attacked => {
                    closed = true;
                    break;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } if !attacked => {
                    bail!("dialing the node failed: {error}");
                }
                _ => {}
            },
            () = tokio::time::sleep_until(watch_until) => break,
        }
    }
    let mut received: BTreeMap<String, u64> = BTreeMap::new();
    let mut messages = 0u64;
    while let Ok(tenant) = counts_rx.try_recv() {
        match tenant {
            Some(tenant) => *received.entry(tenant.to_string()).or_default() += 1,
            None => messages += 1,
        }
    }
    Ok(serde_json::json!({
        "attack": attack,
        "closed": closed,
        "seconds": started.elapsed().as_secs_f64(),
        "received_changes": received,
        "received_other_messages": messages,
        "node": node.to_string(),
    }))
}

/// Returns the tenants the hello claims: the certificate's, plus the requested tenant.
fn claimed_tenants(own: &TenantId, asked: Option<&str>) -> Result<Vec<TenantId>> {
    let mut tenants = vec![own.clone()];
    if let Some(asked) = asked {
        tenants.push(TenantId::new(asked)?);
    }
    Ok(tenants)
}

async fn send(mut stream: libp2p::Stream, hello: Hello, frames: Vec<Vec<u8>>) -> Result<()> {
    write_frame(&mut stream, &hello.encode()).await?;
    // Let the node admit the hello before the attack arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for frame in frames {
        if frame.first() == Some(&0xff) {
            // A raw length prefix over the limit, then some bytes.
            let len = u32::try_from(FRAME_LEN_MAX + 1).unwrap_or(u32::MAX);
            stream.write_all(&len.to_be_bytes()).await?;
            stream.write_all(&frame[1..]).await?;
            stream.flush().await?;
        } else {
            write_frame(&mut stream, &frame).await?;
        }
    }
    // Keep the stream open; the node decides when to close it.
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok(())
}

/// Makes an unsigned change of a node document of `tenant` whose automerge actor is `actor`.
fn change_by(tenant: &TenantId, actor: NodeId, hostname: &str) -> Result<automerge::Change> {
    let mut doc = NodeDocument::new(tenant.clone(), actor);
    let identity = Identity {
        node_id: actor.to_string(),
        tenant: tenant.to_string(),
        site: "rogue".to_string(),
        hostname: hostname.to_string(),
        agent_version: "rogue".to_string(),
    };
    let mut facts = Facts::default();
    facts.system.hostname = hostname.to_string();
    doc.record(&identity, &facts, 1_700_000_000)?
        .context("the document recorded no change")
}

fn attack_frames(
    attack: &str,
    key: &ed25519_dalek::SigningKey,
    node: NodeId,
    victim: NodeId,
    tenant: &TenantId,
    asked: Option<&str>,
) -> Result<Vec<Vec<u8>>> {
    let sync = |message: Message| Frame::sync(&message.encode());
    let victim_doc = DocId::node(tenant.clone(), victim);
    Ok(match attack {
        "none" => Vec::new(),
        // A change by this node, signed by this node, but placed in the victim's document.
        "other-doc" => {
            let mut change = change_by(tenant, node, "rogue-other-doc")?;
            let signed = SignedChange::sign(victim_doc, &mut change, key)?;
            vec![sync(Message::Changes(vec![signed]))]
        }
        // A change that claims another member as its author, signed with this node's key.
        "forged-author" => {
            let other = NodeId(
                ed25519_dalek::SigningKey::from_bytes(&[7; 32])
                    .verifying_key()
                    .to_bytes(),
            );
            let mut change = change_by(tenant, other, "rogue-forged")?;
            let signed = SignedChange::sign(DocId::node(tenant.clone(), other), &mut change, key)?;
            vec![sync(Message::Changes(vec![signed]))]
        }
        // A valid change of this node's own document, replayed under another document id.
        "replay" => {
            let mut change = change_by(tenant, node, "rogue-replay")?;
            let own = SignedChange::sign(DocId::node(tenant.clone(), node), &mut change, key)?;
            let other = DocId::tenant_doc(fleetmesh_model::DocKind::Policy, tenant.clone());
            let signature = own.signature().context("the change has no signature")?;
            let moved = SignedChange::decode(other, own.bytes().to_vec(), Some(*signature))?;
            vec![sync(Message::Changes(vec![moved]))]
        }
        // Asks for the chains of another tenant.
        "foreign-tenant" => {
            let asked = TenantId::new(asked.context("foreign-tenant needs a TENANT")?)?;
            let wants = vec![ChainHead {
                doc: DocId::node(asked.clone(), victim),
                author: victim,
                seq: 0,
            }];
            vec![sync(Message::Request { wants })]
        }
        // A change of the tenant's policy document, signed by this plain node; only operators
        // may write tenant documents.
        "plain-policy" => {
            let mut doc = PolicyDocument::new(tenant.clone());
            let policy = Policy {
                name: "rogue".to_string(),
                description: String::new(),
                checks: vec![Check {
                    name: "always-passes".to_string(),
                    severity: Severity::Low,
                    description: String::new(),
                    query: "SELECT 1 WHERE 0".to_string(),
                }],
            };
            let signed = doc
                .put(RecordKind::Policy, "rogue", &policy, 1_700_000_000, key)?
                .context("the policy document recorded no change")?;
            vec![sync(Message::Changes(vec![signed]))]
        }
        "oversized" => vec![vec![0xff, 1, 2, 3]],
        "bad-frame" => vec![vec![7, 7, 7]],
        other => bail!("unknown attack {other:?}"),
    })
}
