//! Sync messages between two peers and their wire encoding.
//!
//! The wire form is one version byte ([`WIRE_VERSION`]) followed by the postcard encoding of a
//! private enum that mirrors [`Message`]. Chain heads are written compactly: the tenant once per
//! message or group, and for a node document written by its owner the 32-byte key once, because
//! the author is the key. A signed change travels as its [`WireChange`].
//!
//! [`Message::decode`] accepts any bytes without panicking. It rejects input over the caller's
//! length limit, unknown versions, trailing bytes, invalid prefixes, tenant names and document
//! kinds, and changes that do not decode. It does not verify signatures: the engine does that.
//! [`Message::encoded_len`] computes the encoded length from the parts without encoding, and
//! always equals `encode().len()`.

use fleetmesh_model::{DocId, DocKind, NodeId, SignedChange, TenantId, WireChange};
use serde::{Deserialize, Serialize};

use super::recon::{ChainHead, Fingerprint, Prefix};

/// The version byte that starts every message of this format.
pub const WIRE_VERSION: u8 = 1;

/// Errors from decoding a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The message is longer than the receiver accepts.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the received message in bytes.
        len: usize,
        /// The receiver's limit in bytes.
        max: usize,
    },
    /// The bytes are not a valid message of this version; the text names what was wrong.
    #[error("invalid sync message: {0}")]
    Invalid(String),
}

/// One entry of a [`Message::Ranges`] reply: the sender's state under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeEntry {
    /// The sender has `count` items under `prefix` with this fingerprint. The receiver compares
    /// its own and walks further down where they differ.
    Fingerprint {
        /// The trie node being compared.
        prefix: Prefix,
        /// The sender's fingerprint under `prefix`.
        fingerprint: Fingerprint,
        /// The sender's number of items under `prefix`.
        count: u64,
    },
    /// Every item the sender has under `prefix` (possibly none). The receiver sends the changes
    /// the sender lacks and requests the ones it lacks itself.
    Items {
        /// The trie node being listed.
        prefix: Prefix,
        /// The sender's items under `prefix`. They belong to the message's tenant.
        heads: Vec<ChainHead>,
    },
}

/// A message of the sync protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Opens a reconciliation of one tenant: the sender's fingerprint and item count over all of
    /// the tenant's chains. Equal summaries end the round.
    Summary {
        /// The tenant being reconciled.
        tenant: TenantId,
        /// Fingerprint of all of the sender's chains of the tenant.
        fingerprint: Fingerprint,
        /// Number of the sender's chains of the tenant.
        count: u64,
    },
    /// Continues a reconciliation: the sender's state under the prefixes that differed.
    Ranges {
        /// The tenant being reconciled.
        tenant: TenantId,
        /// One entry per prefix. Heads in [`RangeEntry::Items`] must belong to `tenant`, because
        /// the wire form stores the tenant only once.
        ranges: Vec<RangeEntry>,
    },
    /// New changes pushed eagerly. A receiver that already has all of them replies with
    /// [`Message::Prune`].
    Changes(Vec<SignedChange>),
    /// Changes sent because the receiver requested them (reconciliation or graft). Duplicates in
    /// a repair never cause a prune.
    Repair(Vec<SignedChange>),
    /// Announces changes the sender has, to a peer it does not push to.
    IHave {
        /// The announced chains, each with the sender's last sequence number.
        heads: Vec<ChainHead>,
    },
    /// Requests the changes after each given sequence number and makes the receiver push new
    /// changes to the sender again.
    Graft {
        /// The requested chains, each with the sender's last sequence number (0 for none).
        wants: Vec<ChainHead>,
    },
    /// Requests the changes after each given sequence number, without changing who pushes.
    Request {
        /// The requested chains, each with the sender's last sequence number (0 for none).
        wants: Vec<ChainHead>,
    },
    /// Asks the receiver to stop pushing changes to the sender and to announce them instead.
    Prune,
}

/// The kind of a [`Message`], for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    /// [`Message::Summary`].
    Summary,
    /// [`Message::Ranges`].
    Ranges,
    /// [`Message::Changes`].
    Changes,
    /// [`Message::Repair`].
    Repair,
    /// [`Message::IHave`].
    IHave,
    /// [`Message::Graft`].
    Graft,
    /// [`Message::Request`].
    Request,
    /// [`Message::Prune`].
    Prune,
}

impl MessageKind {
    /// Every kind, in wire order.
    pub const ALL: [MessageKind; 8] = [
        MessageKind::Summary,
        MessageKind::Ranges,
        MessageKind::Changes,
        MessageKind::Repair,
        MessageKind::IHave,
        MessageKind::Graft,
        MessageKind::Request,
        MessageKind::Prune,
    ];

    /// Returns the lower-case name used in logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Summary => "summary",
            MessageKind::Ranges => "ranges",
            MessageKind::Changes => "changes",
            MessageKind::Repair => "repair",
            MessageKind::IHave => "ihave",
            MessageKind::Graft => "graft",
            MessageKind::Request => "request",
            MessageKind::Prune => "prune",
        }
    }
}

// Wire types. Field order and variant order are the format: append, never reorder.

#[derive(Serialize, Deserialize)]
enum Wire {
    Summary {
        tenant: String,
        fingerprint: [u8; 16],
        /// Fixed width, so that a converged round costs the same for any fleet size.
        count: [u8; 8],
    },
    Ranges {
        tenant: String,
        ranges: Vec<WireRange>,
    },
    Changes(Vec<WireChange>),
    Repair(Vec<WireChange>),
    IHave(Vec<WireGroup>),
    Graft(Vec<WireGroup>),
    Request(Vec<WireGroup>),
    Prune,
}

#[derive(Serialize, Deserialize)]
enum WireRange {
    Fingerprint {
        depth: u8,
        bits: u32,
        fingerprint: [u8; 16],
        count: u64,
    },
    Items {
        depth: u8,
        bits: u32,
        heads: Vec<WireHead>,
    },
}

/// Heads of one tenant.
#[derive(Serialize, Deserialize)]
struct WireGroup {
    tenant: String,
    heads: Vec<WireHead>,
}

#[derive(Serialize, Deserialize)]
enum WireHead {
    /// A node document's chain written by its owner: the author is the document key.
    Owned { key: [u8; 32], seq: u64 },
    /// Any other chain.
    Chain {
        kind: u8,
        key: [u8; 32],
        author: [u8; 32],
        seq: u64,
    },
}

/// Bytes of a version byte, a variant tag and a length prefix of up to `u32::MAX`.
const MESSAGE_OVERHEAD_MAX: usize = 1 + 1 + 5;

/// Largest encoded head: variant tag, kind, key, author and a 10-byte sequence number.
const HEAD_LEN_MAX: usize = 1 + 1 + 32 + 32 + 10;

/// Largest per-group overhead of a head list: a 64-byte tenant name with its length and the
/// group's length prefix.
const GROUP_OVERHEAD_MAX: usize = 1 + 64 + 5;

impl Message {
    /// Returns the kind, for counters.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Summary { .. } => MessageKind::Summary,
            Message::Ranges { .. } => MessageKind::Ranges,
            Message::Changes(_) => MessageKind::Changes,
            Message::Repair(_) => MessageKind::Repair,
            Message::IHave { .. } => MessageKind::IHave,
            Message::Graft { .. } => MessageKind::Graft,
            Message::Request { .. } => MessageKind::Request,
            Message::Prune => MessageKind::Prune,
        }
    }

    /// Encodes the message: [`WIRE_VERSION`] and the postcard body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(WIRE_VERSION);
        // Serializing into a Vec fails only for a sequence of unknown length or an error raised
        // by a Serialize impl, and the wire types (derived, plus WireChange) have neither.
        match postcard::to_extend(&self.to_wire(), out) {
            Ok(out) => out,
            Err(err) => unreachable!("postcard cannot encode the wire types: {err}"),
        }
    }

    /// Decodes a message, rejecting input longer than `max_len` bytes.
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Message, MessageError> {
        if bytes.len() > max_len {
            return Err(MessageError::TooLarge {
                len: bytes.len(),
                max: max_len,
            });
        }
        let (&version, body) = bytes
            .split_first()
            .ok_or_else(|| MessageError::Invalid("empty message".to_string()))?;
        if version != WIRE_VERSION {
            return Err(MessageError::Invalid(format!(
                "unsupported version {version}, expected {WIRE_VERSION}: update the older node"
            )));
        }

        let (wire, rest) = postcard::take_from_bytes::<Wire>(body)
            .map_err(|err| MessageError::Invalid(format!("undecodable body: {err}")))?;
        if !rest.is_empty() {
            return Err(MessageError::Invalid(format!(
                "{} trailing bytes after the message",
                rest.len()
            )));
        }
        Message::from_wire(wire)
    }

    /// Returns `encode().len()`, computed from the parts without encoding.
    pub fn encoded_len(&self) -> usize {
        let body = match self {
            Message::Summary { tenant, .. } => str_len(tenant.as_str()) + 16 + 8,
            Message::Ranges { tenant, ranges } => {
                str_len(tenant.as_str())
                    + varint_len(ranges.len() as u64)
                    + ranges.iter().map(range_entry_len).sum::<usize>()
            }
            Message::Changes(changes) | Message::Repair(changes) => {
                varint_len(changes.len() as u64)
                    + changes.iter().map(change_encoded_len).sum::<usize>()
            }
            Message::IHave { heads }
            | Message::Graft { wants: heads }
            | Message::Request { wants: heads } => head_groups_len(heads),
            Message::Prune => 0,
        };
        // The version byte and the variant tag (one byte for fewer than 128 variants).
        2 + body
    }

    fn to_wire(&self) -> Wire {
        match self {
            Message::Summary {
                tenant,
                fingerprint,
                count,
            } => Wire::Summary {
                tenant: tenant.as_str().to_string(),
                fingerprint: fingerprint.to_le_bytes(),
                count: count.to_le_bytes(),
            },
            Message::Ranges { tenant, ranges } => Wire::Ranges {
                tenant: tenant.as_str().to_string(),
                ranges: ranges.iter().map(range_to_wire).collect(),
            },
            Message::Changes(changes) => {
                Wire::Changes(changes.iter().map(SignedChange::to_wire).collect())
            }
            Message::Repair(changes) => {
                Wire::Repair(changes.iter().map(SignedChange::to_wire).collect())
            }
            Message::IHave { heads } => Wire::IHave(group_heads(heads)),
            Message::Graft { wants } => Wire::Graft(group_heads(wants)),
            Message::Request { wants } => Wire::Request(group_heads(wants)),
            Message::Prune => Wire::Prune,
        }
    }

    fn from_wire(wire: Wire) -> Result<Message, MessageError> {
        Ok(match wire {
            Wire::Summary {
                tenant,
                fingerprint,
                count,
            } => Message::Summary {
                tenant: tenant_from_wire(tenant)?,
                fingerprint: Fingerprint::from_le_bytes(fingerprint),
                count: u64::from_le_bytes(count),
            },
            Wire::Ranges { tenant, ranges } => {
                let tenant = tenant_from_wire(tenant)?;
                let ranges = ranges
                    .into_iter()
                    .map(|range| range_from_wire(range, &tenant))
                    .collect::<Result<_, _>>()?;
                Message::Ranges { tenant, ranges }
            }
            Wire::Changes(changes) => Message::Changes(changes_from_wire(changes)?),
            Wire::Repair(changes) => Message::Repair(changes_from_wire(changes)?),
            Wire::IHave(groups) => Message::IHave {
                heads: ungroup_heads(groups)?,
            },
            Wire::Graft(groups) => Message::Graft {
                wants: ungroup_heads(groups)?,
            },
            Wire::Request(groups) => Message::Request {
                wants: ungroup_heads(groups)?,
            },
            Wire::Prune => Message::Prune,
        })
    }
}

/// Returns the bytes one change adds to a [`Message::Changes`] or [`Message::Repair`].
pub fn change_encoded_len(change: &SignedChange) -> usize {
    // DocId::to_bytes is kind, tenant length, tenant and the 32-byte key.
    let doc_len = 2 + change.doc().tenant.as_str().len() + 32;
    let bytes_len = change.bytes().len();
    // The signature is an Option<Vec<u8>>: a tag, then a length prefix and 64 bytes.
    let signature_len = if change.signature().is_some() {
        1 + 1 + 64
    } else {
        1
    };
    varint_len(doc_len as u64) + doc_len + varint_len(bytes_len as u64) + bytes_len + signature_len
}

/// Returns the encoded length of a [`Message::Changes`] or [`Message::Repair`] holding changes
/// whose [`change_encoded_len`] add up to `changes_len`, for at most `u32::MAX` changes.
pub(crate) fn changes_message_len(count: usize, changes_len: usize) -> usize {
    2 + varint_len(count as u64) + changes_len
}

/// Returns the bytes one entry adds to a [`Message::Ranges`].
pub(crate) fn range_entry_len(entry: &RangeEntry) -> usize {
    match entry {
        RangeEntry::Fingerprint { prefix, count, .. } => {
            1 + 1 + varint_len(u64::from(prefix.bits)) + 16 + varint_len(*count)
        }
        RangeEntry::Items { prefix, heads } => {
            1 + 1
                + varint_len(u64::from(prefix.bits))
                + varint_len(heads.len() as u64)
                + heads.iter().map(head_len).sum::<usize>()
        }
    }
}

/// Returns the encoded length of a [`Message::Ranges`] for `tenant` without its entries.
pub(crate) fn ranges_overhead_max(tenant: &TenantId) -> usize {
    MESSAGE_OVERHEAD_MAX + str_len(tenant.as_str())
}

/// Returns how many heads always fit in one head-list message of at most `max_len` bytes,
/// at least 1.
pub(crate) fn heads_per_message(max_len: usize) -> usize {
    (max_len.saturating_sub(MESSAGE_OVERHEAD_MAX) / (HEAD_LEN_MAX + GROUP_OVERHEAD_MAX)).max(1)
}

fn head_is_owned(head: &ChainHead) -> bool {
    head.doc.kind == DocKind::Node && head.doc.key == head.author.0
}

fn head_len(head: &ChainHead) -> usize {
    let fixed = if head_is_owned(head) {
        1 + 32
    } else {
        1 + 1 + 32 + 32
    };
    fixed + varint_len(head.seq)
}

fn head_groups_len(heads: &[ChainHead]) -> usize {
    let mut groups = 0;
    let mut len = 0;
    for group in heads.chunk_by(|a, b| a.doc.tenant == b.doc.tenant) {
        groups += 1;
        len += str_len(group[0].doc.tenant.as_str())
            + varint_len(group.len() as u64)
            + group.iter().map(head_len).sum::<usize>();
    }
    varint_len(groups) + len
}

fn str_len(text: &str) -> usize {
    varint_len(text.len() as u64) + text.len()
}

/// Returns the length of postcard's varint encoding: 7 bits per byte.
fn varint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

fn kind_tag(kind: DocKind) -> u8 {
    match kind {
        DocKind::Node => 0,
        DocKind::Membership => 1,
        DocKind::Policy => 2,
    }
}

fn kind_from_tag(tag: u8) -> Result<DocKind, MessageError> {
    match tag {
        0 => Ok(DocKind::Node),
        1 => Ok(DocKind::Membership),
        2 => Ok(DocKind::Policy),
        _ => Err(MessageError::Invalid(format!(
            "unknown document kind {tag}, expected 0, 1 or 2"
        ))),
    }
}

fn tenant_from_wire(name: String) -> Result<TenantId, MessageError> {
    TenantId::try_from(name).map_err(|err| MessageError::Invalid(err.to_string()))
}

fn prefix_from_wire(depth: u8, bits: u32) -> Result<Prefix, MessageError> {
    Prefix::new(depth, bits).ok_or_else(|| {
        MessageError::Invalid(format!("invalid prefix: depth {depth}, bits {bits:#x}"))
    })
}

fn head_to_wire(head: &ChainHead) -> WireHead {
    if head_is_owned(head) {
        WireHead::Owned {
            key: head.doc.key,
            seq: head.seq,
        }
    } else {
        WireHead::Chain {
            kind: kind_tag(head.doc.kind),
            key: head.doc.key,
            author: head.author.0,
            seq: head.seq,
        }
    }
}

fn head_from_wire(head: WireHead, tenant: &TenantId) -> Result<ChainHead, MessageError> {
    Ok(match head {
        WireHead::Owned { key, seq } => ChainHead {
            doc: DocId::node(tenant.clone(), NodeId(key)),
            author: NodeId(key),
            seq,
        },
        WireHead::Chain {
            kind,
            key,
            author,
            seq,
        } => ChainHead {
            doc: DocId {
                kind: kind_from_tag(kind)?,
                tenant: tenant.clone(),
                key,
            },
            author: NodeId(author),
            seq,
        },
    })
}

fn group_heads(heads: &[ChainHead]) -> Vec<WireGroup> {
    heads
        .chunk_by(|a, b| a.doc.tenant == b.doc.tenant)
        .map(|group| WireGroup {
            tenant: group[0].doc.tenant.as_str().to_string(),
            heads: group.iter().map(head_to_wire).collect(),
        })
        .collect()
}

fn ungroup_heads(groups: Vec<WireGroup>) -> Result<Vec<ChainHead>, MessageError> {
    let mut heads = Vec::new();
    for group in groups {
        let tenant = tenant_from_wire(group.tenant)?;
        for head in group.heads {
            heads.push(head_from_wire(head, &tenant)?);
        }
    }
    Ok(heads)
}

fn range_to_wire(entry: &RangeEntry) -> WireRange {
    match entry {
        RangeEntry::Fingerprint {
            prefix,
            fingerprint,
            count,
        } => WireRange::Fingerprint {
            depth: prefix.depth,
            bits: prefix.bits,
            fingerprint: fingerprint.to_le_bytes(),
            count: *count,
        },
        RangeEntry::Items { prefix, heads } => {
            debug_assert!(
                heads.windows(2).all(|w| w[0].doc.tenant == w[1].doc.tenant),
                "heads of one range entry must share the message's tenant"
            );
            WireRange::Items {
                depth: prefix.depth,
                bits: prefix.bits,
                heads: heads.iter().map(head_to_wire).collect(),
            }
        }
    }
}

fn range_from_wire(range: WireRange, tenant: &TenantId) -> Result<RangeEntry, MessageError> {
    Ok(match range {
        WireRange::Fingerprint {
            depth,
            bits,
            fingerprint,
            count,
        } => RangeEntry::Fingerprint {
            prefix: prefix_from_wire(depth, bits)?,
            fingerprint: Fingerprint::from_le_bytes(fingerprint),
            count,
        },
        WireRange::Items { depth, bits, heads } => RangeEntry::Items {
            prefix: prefix_from_wire(depth, bits)?,
            heads: heads
                .into_iter()
                .map(|head| head_from_wire(head, tenant))
                .collect::<Result<_, _>>()?,
        },
    })
}

fn changes_from_wire(changes: Vec<WireChange>) -> Result<Vec<SignedChange>, MessageError> {
    let total = changes.len();
    changes
        .into_iter()
        .enumerate()
        .map(|(index, change)| {
            change.into_signed().map_err(|err| {
                MessageError::Invalid(format!("change {} of {total}: {err}", index + 1))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sync::test_support::sample_changes;

    fn acme() -> TenantId {
        TenantId::new("acme").expect("valid tenant name")
    }

    fn round_trip(message: &Message) -> Message {
        let bytes = message.encode();
        assert_eq!(bytes.len(), message.encoded_len(), "{message:?}");
        Message::decode(&bytes, usize::MAX).expect("a message this module encoded decodes")
    }

    #[test]
    fn varint_len_matches_postcard() {
        for value in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let encoded = postcard::to_stdvec(&value).expect("u64 encodes");
            assert_eq!(varint_len(value), encoded.len(), "{value}");
        }
    }

    #[test]
    fn change_len_matches_postcard() {
        for change in sample_changes().iter().take(3) {
            let encoded = postcard::to_stdvec(&change.to_wire()).expect("change encodes");
            assert_eq!(change_encoded_len(change), encoded.len());
            let unsigned = change.with_signature(None);
            let encoded = postcard::to_stdvec(&unsigned.to_wire()).expect("change encodes");
            assert_eq!(change_encoded_len(&unsigned), encoded.len());
        }
    }

    #[test]
    fn summary_is_small_and_fixed_size() {
        let small = Message::Summary {
            tenant: acme(),
            fingerprint: 1,
            count: 10,
        };
        let large = Message::Summary {
            tenant: acme(),
            fingerprint: u128::MAX,
            count: 1_000_000,
        };
        assert_eq!(small.encoded_len(), large.encoded_len());
        assert!(small.encoded_len() <= 32, "{}", small.encoded_len());
    }

    #[test]
    fn owned_heads_omit_author() {
        let node = NodeId([9; 32]);
        let owned = ChainHead {
            doc: DocId::node(acme(), node),
            author: node,
            seq: 3,
        };
        let foreign = ChainHead {
            author: NodeId([8; 32]),
            ..owned.clone()
        };
        assert_eq!(head_len(&owned) + 33, head_len(&foreign));
        let message = Message::IHave {
            heads: vec![owned, foreign],
        };
        assert_eq!(round_trip(&message), message);
    }

    #[test]
    fn changes_round_trip() {
        let message = Message::Changes(sample_changes().to_vec());
        assert_eq!(round_trip(&message), message);
    }

    #[test]
    fn decode_rejects_oversized_message() {
        let bytes = Message::Prune.encode();
        let err = Message::decode(&bytes, 1).expect_err("over the limit");
        assert!(
            matches!(err, MessageError::TooLarge { len: 2, max: 1 }),
            "{err}"
        );
    }

    #[test]
    fn decode_rejects_wrong_version() {
        let mut bytes = Message::Prune.encode();
        bytes[0] = 9;
        let err = Message::decode(&bytes, 1024).expect_err("unknown version");
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        let mut bytes = Message::Prune.encode();
        bytes.push(0);
        let err = Message::decode(&bytes, 1024).expect_err("trailing byte");
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    #[test]
    fn decode_rejects_invalid_prefix() {
        let message = Message::Ranges {
            tenant: acme(),
            ranges: vec![RangeEntry::Items {
                prefix: Prefix { depth: 1, bits: 16 },
                heads: Vec::new(),
            }],
        };
        let err = Message::decode(&message.encode(), 1024).expect_err("bits out of range");
        assert!(err.to_string().contains("invalid prefix"), "{err}");
    }

    #[test]
    fn decode_rejects_invalid_tenant() {
        let mut bytes = Message::Summary {
            tenant: acme(),
            fingerprint: 0,
            count: 0,
        }
        .encode();
        // Version, variant tag, name length, then the name: make it upper case.
        bytes[3] = b'A';
        let err = Message::decode(&bytes, 1024).expect_err("invalid tenant name");
        assert!(err.to_string().contains("Acme"), "{err}");
    }

    #[test]
    fn decode_rejects_malformed_change() {
        let mut wire = sample_changes()[0].to_wire();
        wire.bytes.truncate(10);
        let mut bytes = vec![WIRE_VERSION];
        let body = postcard::to_stdvec(&Wire::Changes(vec![wire])).expect("encodes");
        bytes.extend_from_slice(&body);
        let err = Message::decode(&bytes, usize::MAX).expect_err("truncated change");
        assert!(err.to_string().contains("change 1 of 1"), "{err}");
    }

    fn tenant_strategy() -> impl Strategy<Value = TenantId> {
        prop_oneof![
            Just(acme()),
            "[a-z0-9._-]{1,64}".prop_map(|name| TenantId::new(&name).expect("valid by regex")),
        ]
    }

    fn prefix_strategy() -> impl Strategy<Value = Prefix> {
        (0..=crate::sync::recon::MAX_DEPTH, any::<u32>()).prop_map(|(depth, bits)| {
            let mask = (1u64 << (4 * u32::from(depth))) - 1;
            Prefix {
                depth,
                bits: (u64::from(bits) & mask) as u32,
            }
        })
    }

    fn head_strategy(tenant: TenantId) -> impl Strategy<Value = ChainHead> {
        (
            0..3u8,
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(move |(kind, key, author, owned, seq)| {
                let kind = kind_from_tag(kind).expect("tag in range");
                let author = if owned { key } else { author };
                ChainHead {
                    doc: DocId {
                        kind,
                        tenant: tenant.clone(),
                        key,
                    },
                    author: NodeId(author),
                    seq,
                }
            })
    }

    fn heads_strategy() -> impl Strategy<Value = Vec<ChainHead>> {
        prop::collection::vec(
            tenant_strategy()
                .prop_flat_map(|tenant| prop::collection::vec(head_strategy(tenant), 1..4)),
            0..4,
        )
        .prop_map(|groups| groups.into_iter().flatten().collect())
    }

    fn range_strategy(tenant: TenantId) -> impl Strategy<Value = RangeEntry> {
        prop_oneof![
            (prefix_strategy(), any::<u128>(), any::<u64>()).prop_map(
                |(prefix, fingerprint, count)| {
                    RangeEntry::Fingerprint {
                        prefix,
                        fingerprint,
                        count,
                    }
                }
            ),
            (
                prefix_strategy(),
                prop::collection::vec(head_strategy(tenant), 0..4)
            )
                .prop_map(|(prefix, heads)| RangeEntry::Items { prefix, heads }),
        ]
    }

    fn changes_strategy() -> impl Strategy<Value = Vec<SignedChange>> {
        let pool = sample_changes().len();
        prop::collection::vec((0..pool, any::<bool>()), 0..4).prop_map(|picks| {
            picks
                .into_iter()
                .map(|(index, signed)| {
                    let change = sample_changes()[index].clone();
                    if signed {
                        change
                    } else {
                        change.with_signature(None)
                    }
                })
                .collect()
        })
    }

    fn message_strategy() -> impl Strategy<Value = Message> {
        prop_oneof![
            (tenant_strategy(), any::<u128>(), any::<u64>()).prop_map(
                |(tenant, fingerprint, count)| Message::Summary {
                    tenant,
                    fingerprint,
                    count,
                }
            ),
            tenant_strategy().prop_flat_map(|tenant| {
                prop::collection::vec(range_strategy(tenant.clone()), 0..5).prop_map(
                    move |ranges| Message::Ranges {
                        tenant: tenant.clone(),
                        ranges,
                    },
                )
            }),
            changes_strategy().prop_map(Message::Changes),
            changes_strategy().prop_map(Message::Repair),
            heads_strategy().prop_map(|heads| Message::IHave { heads }),
            heads_strategy().prop_map(|wants| Message::Graft { wants }),
            heads_strategy().prop_map(|wants| Message::Request { wants }),
            Just(Message::Prune),
        ]
    }

    proptest! {
        #[test]
        fn message_round_trip(message in message_strategy()) {
            let bytes = message.encode();
            prop_assert_eq!(bytes.len(), message.encoded_len());
            let decoded = Message::decode(&bytes, bytes.len());
            prop_assert!(decoded.is_ok(), "{:?}", decoded);
            prop_assert_eq!(decoded.ok(), Some(message));
        }

        #[test]
        fn decode_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = Message::decode(&bytes, 1 << 20);
        }

        #[test]
        fn decode_mutated_message(
            message in message_strategy(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = message.encode();
            for (index, value) in flips {
                let at = index.index(bytes.len());
                bytes[at] = value;
            }
            let _ = Message::decode(&bytes, 1 << 20);
        }

        #[test]
        fn decode_truncated_message(message in message_strategy(), cut in any::<prop::sample::Index>()) {
            let bytes = message.encode();
            let len = cut.index(bytes.len());
            prop_assert!(Message::decode(&bytes[..len], 1 << 20).is_err());
        }
    }
}
