//! The libp2p side of a node: the swarm, the sync stream protocol, and the handshake.
//!
//! Transport is QUIC (quinn, TLS 1.3) with TCP + noise + yamux as the fallback for networks that
//! block UDP. Behaviours: identify, ping, optional mDNS, and a plain stream protocol
//! (`/fleetmesh/sync/1`) that carries length-prefixed frames. Each side opens one outbound stream
//! per peer and writes only to it, so the messages of one direction keep their order.
//!
//! The first frame on every stream is a [`Hello`] carrying the sender's certificate chain. A peer
//! whose hello names another fleet, an unsupported protocol version, or a chain that does not
//! verify for the authenticated peer id is disconnected before any document is exchanged.
//!
//! Every later frame starts with a tag byte: [`FRAME_SYNC`] for a sync engine message, or
//! [`FRAME_CHAINS`] for certificate chains of authors whose changes the sender is about to relay.

use std::time::Duration;

use fleetmesh_model::{NodeId, TenantId};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{identify, mdns, noise, ping, tcp, yamux, PeerId, StreamProtocol, Swarm};
use serde::{Deserialize, Serialize};

/// Protocol id of the sync stream.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/fleetmesh/sync/1");

/// Version of the hello and framing; peers with another version are disconnected.
pub const PROTOCOL_VERSION: u16 = 2;

/// Tag of a frame that carries a sync engine message.
pub const FRAME_SYNC: u8 = 0;

/// Tag of a frame that carries certificate chains.
pub const FRAME_CHAINS: u8 = 1;

/// Maximum number of chains in one chains frame.
pub const CHAINS_PER_FRAME_MAX: usize = 256;

/// Largest frame accepted from a peer, in bytes.
pub const FRAME_LEN_MAX: usize = 8 * 1024 * 1024;

/// Largest hello accepted, in bytes.
const HELLO_LEN_MAX: usize = 64 * 1024;

/// Default UDP (QUIC) and TCP port of `fleetmesh up`.
pub const DEFAULT_PORT: u16 = 7411;

/// Errors from setting up the network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The swarm could not be built.
    #[error("failed to build the libp2p swarm: {0}")]
    Build(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {address}: {reason}; choose another --listen address or port")]
    Listen {
        /// The address.
        address: String,
        /// What failed.
        reason: String,
    },
}

/// Errors from reading or writing frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream failed or closed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame over the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The hello did not decode.
    #[error("invalid hello: {0}")]
    InvalidHello(String),
    /// A frame after the hello did not decode.
    #[error("invalid frame: {0}")]
    InvalidFrame(String),
}

/// A frame after the hello, split by its tag.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// An encoded sync engine message.
    Sync(&'a [u8]),
    /// Encoded certificate chains, still to be decoded and verified.
    Chains(Vec<Vec<u8>>),
}

impl<'a> Frame<'a> {
    /// Splits a received frame. The sync message itself is decoded by the caller.
    pub fn decode(bytes: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let invalid = |reason: String| FrameError::InvalidFrame(reason);
        let (&tag, body) = bytes
            .split_first()
            .ok_or_else(|| invalid("the frame is empty".to_string()))?;
        match tag {
            FRAME_SYNC => Ok(Frame::Sync(body)),
            FRAME_CHAINS => {
                let chains: Vec<Vec<u8>> =
                    postcard::from_bytes(body).map_err(|err| invalid(err.to_string()))?;
                if chains.len() > CHAINS_PER_FRAME_MAX {
                    return Err(invalid(format!(
                        "{} chains in one frame, at most {CHAINS_PER_FRAME_MAX} are allowed",
                        chains.len()
                    )));
                }
                if let Some(long) = chains
                    .iter()
                    .find(|chain| chain.len() > fleetmesh_model::membership::CHAIN_LEN_MAX)
                {
                    return Err(FrameError::TooLarge {
                        len: long.len(),
                        max: fleetmesh_model::membership::CHAIN_LEN_MAX,
                    });
                }
                Ok(Frame::Chains(chains))
            }
            other => Err(invalid(format!("unknown frame tag {other}"))),
        }
    }

    /// Encodes a sync message frame from the message's encoding.
    pub fn sync(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(message.len() + 1);
        out.push(FRAME_SYNC);
        out.extend_from_slice(message);
        out
    }

    /// Encodes a chains frame.
    pub fn chains(chains: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![FRAME_CHAINS];
        out.extend(postcard::to_stdvec(chains).unwrap_or_default());
        out
    }
}

/// The first frame on a sync stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The fleet the sender belongs to, in text form (`fleet1...`).
    pub fleet: String,
    /// The sender's site; peers at the same site count as LAN peers.
    pub site: String,
    /// Tenants whose documents the sender replicates.
    pub tenants: Vec<TenantId>,
    /// The sender's encoded certificate chain.
    pub credentials: Vec<u8>,
}

impl Hello {
    /// Encodes the hello for the wire.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a hello received from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Hello, FrameError> {
        if bytes.len() > HELLO_LEN_MAX {
            return Err(FrameError::TooLarge {
                len: bytes.len(),
                max: HELLO_LEN_MAX,
            });
        }
        let (hello, rest) = postcard::take_from_bytes(bytes)
            .map_err(|err| FrameError::InvalidHello(err.to_string()))?;
        if !rest.is_empty() {
            return Err(FrameError::InvalidHello(format!(
                "{} bytes follow the hello",
                rest.len()
            )));
        }
        Ok(hello)
    }
}

pub use behaviour::{Behaviour, BehaviourEvent};

mod behaviour {
    // The derive below generates an event enum without docs.
    #![allow(missing_docs)]

    use libp2p::swarm::behaviour::toggle::Toggle;
    use libp2p::swarm::NetworkBehaviour;
    use libp2p::{identify, mdns, ping};

    /// The behaviours of a fleetmesh swarm.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// The sync stream protocol.
        pub stream: libp2p_stream::Behaviour,
        /// Exchange of listen addresses and agent versions.
        pub identify: identify::Behaviour,
        /// Liveness checks.
        pub ping: ping::Behaviour,
        /// LAN discovery; absent with `--no-mdns`.
        pub mdns: Toggle<mdns::tokio::Behaviour>,
    }
}

/// Builds the swarm for `keypair` with QUIC and TCP transports.
pub fn build_swarm(
    keypair: libp2p::identity::Keypair,
    enable_mdns: bool,
) -> Result<Swarm<Behaviour>, NetError> {
    let build_error = |err: &dyn std::fmt::Display| NetError::Build(err.to_string());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|err| build_error(&err))?
        .with_quic()
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let mdns = if enable_mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                stream: libp2p_stream::Behaviour::new(),
                identify: identify::Behaviour::new(
                    identify::Config::new("/fleetmesh/id/1".to_string(), key.public())
                        .with_agent_version(format!("fleetmesh/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|err| build_error(&err))?
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

/// Converts a libp2p peer id to a node id; `None` for keys other than ed25519.
pub fn node_of(peer: &PeerId) -> Option<NodeId> {
    NodeId::from_peer_id_bytes(&peer.to_bytes())
}

/// Converts a node id to its libp2p peer id.
pub fn peer_of(node: &NodeId) -> Option<PeerId> {
    PeerId::from_bytes(&node.to_peer_id_bytes()).ok()
}

/// Writes one frame: a 4-byte big-endian length, then the payload.
pub async fn write_frame<W: futures::AsyncWrite + Unpin>(
    writer: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len(),
        max: FRAME_LEN_MAX,
    })?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(payload).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes. Returns `None` at a clean end of stream, that is one
/// before the first byte of a frame. A stream that ends inside a frame is an error.
pub async fn read_frame<R: futures::AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len_bytes = [0u8; 4];
    let mut filled = 0;
    while filled < len_bytes.len() {
        match reader.read(&mut len_bytes[filled..]).await {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the stream ended after {filled} of the 4 bytes of a frame length"),
                )
                .into())
            }
            Ok(read) => filled += read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip() {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            fleet: "f1".to_string(),
            site: "leeds".to_string(),
            tenants: vec![TenantId::new("acme").unwrap()],
            credentials: vec![],
        };
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
    }

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let sync = Frame::sync(b"message");
        assert_eq!(Frame::decode(&sync).unwrap(), Frame::Sync(b"message"));
        let chains = Frame::chains(&[vec![1, 2], vec![3]]);
        assert_eq!(
            Frame::decode(&chains).unwrap(),
            Frame::Chains(vec![vec![1, 2], vec![3]])
        );
        assert!(Frame::decode(&[]).is_err());
        assert!(Frame::decode(&[9, 1]).is_err());
        assert!(Frame::decode(&[FRAME_CHAINS, 0xff]).is_err());
        let many = Frame::chains(&vec![vec![0u8]; CHAINS_PER_FRAME_MAX + 1]);
        assert!(Frame::decode(&many).is_err());
    }

    #[test]
    fn hello_rejects_garbage() {
        assert!(Hello::decode(&[0xff; 7]).is_err());
        assert!(Hello::decode(&vec![0; HELLO_LEN_MAX + 1]).is_err());
    }

    #[tokio::test]
    async fn frame_round_trip_and_limit() {
        let mut buffer = Vec::new();
        write_frame(&mut buffer, b"hello").await.unwrap();
        write_frame(&mut buffer, &[7; 100]).await.unwrap();
        let mut reader = futures::io::Cursor::new(buffer);
        assert_eq!(
            read_frame(&mut reader, 1000).await.unwrap().unwrap(),
            b"hello"
        );
        assert!(matches!(
            read_frame(&mut reader, 10).await,
            Err(FrameError::TooLarge { len: 100, max: 10 })
        ));
    }

    #[tokio::test]
    async fn frame_clean_end_is_none() {
        let mut reader = futures::io::Cursor::new(Vec::new());
        assert!(read_frame(&mut reader, 10).await.unwrap().is_none());
    }

    #[test]
    fn peer_and_node_ids_convert() {
        let node = NodeId([5; 32]);
        let peer = peer_of(&node).unwrap();
        assert_eq!(node_of(&peer), Some(node));
        assert_eq!(peer.to_string(), node.to_string());
    }
}
