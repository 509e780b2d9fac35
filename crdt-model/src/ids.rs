//! Identifiers: node ids, tenant names and document ids.
//!
//! A node id is the node's ed25519 public key. Its text form is the libp2p `PeerId` of that key
//! (base58btc of the identity multihash over the protobuf-encoded key), so the id printed by
//! `fleetmesh nodes` is the same string libp2p logs for the peer. This crate computes that form
//! itself so that it stays free of networking dependencies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Prefix of a libp2p `PeerId` for an ed25519 key: identity multihash (0x00), length 36,
/// then the protobuf `PublicKey { Type = Ed25519 (1), Data = 32 bytes }`.
const PEER_ID_ED25519_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// Maximum length of a tenant or site name in bytes.
pub const NAME_LEN_MAX: usize = 64;

/// Errors from parsing identifiers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdError {
    /// The text is not base58 or does not decode to an ed25519 `PeerId`.
    #[error(
        "invalid node id {0:?}: expected a libp2p peer id of an ed25519 key (starts with 12D3KooW)"
    )]
    InvalidNodeId(String),
    /// The name is empty, too long or has characters outside `[a-z0-9._-]`.
    #[error(
        "invalid {kind} name {value:?}: use 1 to {NAME_LEN_MAX} characters from a-z, 0-9, '.', '_' and '-'"
    )]
    InvalidName {
        /// What was being named ("tenant" or "site").
        kind: &'static str,
        /// The rejected value.
        value: String,
    },
    /// The bytes of a document id do not decode.
    #[error("invalid document id encoding: {0}")]
    InvalidDocId(&'static str),
}

/// The id of a node: its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// Returns the raw 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Returns the binary libp2p `PeerId` encoding (38 bytes).
    pub fn to_peer_id_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(38);
        out.extend_from_slice(&PEER_ID_ED25519_PREFIX);
        out.extend_from_slice(&self.0);
        out
    }

    /// Parses the binary libp2p `PeerId` encoding of an ed25519 key.
    pub fn from_peer_id_bytes(bytes: &[u8]) -> Option<NodeId> {
        let rest = bytes.strip_prefix(&PEER_ID_ED25519_PREFIX[..])?;
        let key: [u8; 32] = rest.try_into().ok()?;
        Some(NodeId(key))
    }

    /// Returns the first `len` characters of the text form, for compact tables.
    pub fn short(&self, len: usize) -> String {
        let text = self.to_string();
        text.chars().take(len).collect()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.to_peer_id_bytes()).into_string())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = bs58::decode(s)
            .into_vec()
            .map_err(|_| IdError::InvalidNodeId(s.to_string()))?;
        NodeId::from_peer_id_bytes(&bytes).ok_or_else(|| IdError::InvalidNodeId(s.to_string()))
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_string())
        } else {
            // A fixed-size tuple, matching the `[u8; 32]` that deserialization reads.
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            let bytes: [u8; 32] = Deserialize::deserialize(deserializer)?;
            Ok(NodeId(bytes))
        }
    }
}

/// Checks a tenant or site name: 1 to 64 bytes of `[a-z0-9._-]`.
pub fn validate_name(kind: &'static str, value: &str) -> Result<(), IdError> {
    let valid = !value.is_empty()
        && value.len() <= NAME_LEN_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(IdError::InvalidName {
            kind,
            value: value.to_string(),
        })
    }
}

/// The name of a tenant (one customer of the MSP), the unit of replication and isolation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// Validates and wraps a tenant name.
    pub fn new(name: &str) -> Result<Self, IdError> {
        validate_name("tenant", name)?;
        Ok(TenantId(name.to_string()))
    }

    /// Returns the name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantId {
    /// Returns the tenant `default`, used until membership assigns one.
    fn default() -> Self {
        TenantId("default".to_string())
    }
}

impl TryFrom<String> for TenantId {
    type Error = IdError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        validate_name("tenant", &value)?;
        Ok(TenantId(value))
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

impl FromStr for TenantId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantId::new(s)
    }
}

/// The kind of a document, which decides who may write it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum DocKind {
    /// One node's own state; written only by that node.
    Node,
    /// A tenant's certificates and revocations; written by operators.
    Membership,
    /// A tenant's policies and baselines; written by operators.
    Policy,
}

impl DocKind {
    fn tag(self) -> u8 {
        match self {
            DocKind::Node => 0,
            DocKind::Membership => 1,
            DocKind::Policy => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<DocKind> {
        match tag {
            0 => Some(DocKind::Node),
            1 => Some(DocKind::Membership),
            2 => Some(DocKind::Policy),
            _ => None,
        }
    }

    /// Returns the lower-case name used in text forms.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Node => "node",
            DocKind::Membership => "membership",
            DocKind::Policy => "policy",
        }
    }
}

/// The id of a document: its kind, its tenant and, for node documents, the owner's key.
///
/// Tenant documents use an all-zero key. The binary form (see [`DocId::to_bytes`]) is what a
/// change signature binds, so a change cannot be replayed into another document.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocId {
    /// What the document holds.
    pub kind: DocKind,
    /// The tenant the document belongs to.
    pub tenant: TenantId,
    /// The owner's key for node documents; zero for tenant documents.
    pub key: [u8; 32],
}

impl DocId {
    /// Returns the id of a node's own document.
    pub fn node(tenant: TenantId, node: NodeId) -> DocId {
        DocId {
            kind: DocKind::Node,
            tenant,
            key: node.0,
        }
    }

    /// Returns the id of a tenant document (membership or policy).
    pub fn tenant_doc(kind: DocKind, tenant: TenantId) -> DocId {
        DocId {
            kind,
            tenant,
            key: [0; 32],
        }
    }

    /// Returns the owning node for a node document.
    pub fn owner(&self) -> Option<NodeId> {
        (self.kind == DocKind::Node).then_some(NodeId(self.key))
    }

    /// Encodes the id as `kind (1) | tenant length (1) | tenant | key (32)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let tenant = self.tenant.as_str().as_bytes();
        let mut out = Vec::with_capacity(2 + tenant.len() + 32);
        out.push(self.kind.tag());
        // Tenant names are at most NAME_LEN_MAX (64) bytes, so the length fits in one byte.
        out.push(tenant.len() as u8);
        out.extend_from_slice(tenant);
        out.extend_from_slice(&self.key);
        out
    }

    /// Decodes the form written by [`DocId::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<DocId, IdError> {
        let (&tag, rest) = bytes.split_first().ok_or(IdError::InvalidDocId("empty"))?;
        let kind = DocKind::from_tag(tag).ok_or(IdError::InvalidDocId("unknown kind"))?;
        let (&len, rest) = rest
            .split_first()
            .ok_or(IdError::InvalidDocId("truncated"))?;
        let len = usize::from(len);
        if rest.len() != len + 32 {
            return Err(IdError::InvalidDocId("wrong length"));
        }
        let tenant = std::str::from_utf8(&rest[..len])
            .map_err(|_| IdError::InvalidDocId("tenant is not UTF-8"))?;
        let tenant = TenantId::new(tenant).map_err(|_| IdError::InvalidDocId("invalid tenant"))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&rest[len..]);
        Ok(DocId { kind, tenant, key })
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.owner() {
            Some(node) => write!(f, "{}/node/{}", self.tenant, node),
            None => write!(f, "{}/{}", self.tenant, self.kind.as_str()),
        }
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_text_round_trip() {
        let node = NodeId([7; 32]);
        let text = node.to_string();
        assert!(text.starts_with("12D3KooW"), "{text}");
        assert_eq!(text.parse::<NodeId>(), Ok(node));
    }

    #[test]
    fn node_id_rejects_garbage() {
        assert!("not-a-peer".parse::<NodeId>().is_err());
        assert!("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
            .parse::<NodeId>()
            .is_err());
    }

    #[test]
    fn node_id_binary_serde_round_trip() {
        let node = NodeId([9; 32]);
        let bytes = postcard::to_stdvec(&node).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(postcard::from_bytes::<NodeId>(&bytes).unwrap(), node);
    }

    #[test]
    fn tenant_name_rules() {
        assert!(TenantId::new("acme-ltd.uk_1").is_ok());
        assert!(TenantId::new("").is_err());
        assert!(TenantId::new("Acme").is_err());
        assert!(TenantId::new(&"a".repeat(65)).is_err());
        let err = TenantId::new("bad name").unwrap_err();
        assert!(err.to_string().contains("\"bad name\""), "{err}");
    }

    #[test]
    fn doc_id_bytes_round_trip() {
        let tenant = TenantId::new("acme").unwrap();
        for id in [
            DocId::node(tenant.clone(), NodeId([3; 32])),
            DocId::tenant_doc(DocKind::Policy, tenant),
        ] {
            assert_eq!(DocId::from_bytes(&id.to_bytes()), Ok(id));
        }
    }

    #[test]
    fn doc_id_rejects_truncated_bytes() {
        let id = DocId::node(TenantId::new("acme").unwrap(), NodeId([3; 32]));
        let bytes = id.to_bytes();
        for len in 0..bytes.len() {
            assert!(DocId::from_bytes(&bytes[..len]).is_err(), "length {len}");
        }
    }
}
