//! Signed changes: an automerge change, the document it belongs to and its author's signature.
//!
//! The author of a change is its automerge actor, and every fleetmesh actor id is the author's
//! 32-byte ed25519 public key. The signature covers a domain-separated message binding the
//! document id and the change hash:
//!
//! ```text
//! "fleetmesh/change/v1" 0x00 | DocId::to_bytes() | change hash (32 bytes)
//! ```
//!
//! The change hash is automerge's SHA-256 over the change chunk, so it commits to every byte of
//! the change. Altering a byte, signing with a key other than the actor's, or replaying the change
//! under another document id each makes verification fail.
//!
//! Decoding checks the chunk before automerge parses it (see [`crate::CHANGE_INFLATED_LEN_MAX`]
//! and [`crate::CHANGE_OPS_MAX`]), so a small change cannot make the decoder inflate or walk an
//! unbounded amount of data.

use std::fmt;
use std::sync::Arc;

use automerge::{Change, ChangeHash};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::change_chunk;
use crate::ids::{DocId, DocKind, NodeId};

const SIGNING_DOMAIN: &[u8] = b"fleetmesh/change/v1\0";

/// Why a signed change was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The change bytes do not decode as an automerge change.
    #[error("malformed change for {doc}: {reason}")]
    Malformed {
        /// The document the change claimed to belong to.
        doc: String,
        /// What the decoder reported.
        reason: String,
    },
    /// The change carries no signature.
    #[error("change {hash} for {doc} has no signature")]
    MissingSignature {
        /// The document id.
        doc: String,
        /// The change hash in hex.
        hash: String,
    },
    /// The signature does not verify: the bytes were altered, another key signed, or the change
    /// was moved to another document.
    #[error("invalid signature on change {hash} for {doc}")]
    BadSignature {
        /// The document id.
        doc: String,
        /// The change hash in hex.
        hash: String,
    },
    /// The author is not allowed to write this document.
    #[error("node {author} may not write {doc}: only the document's owner may")]
    NotOwner {
        /// The document id.
        doc: String,
        /// The change's author.
        author: String,
    },
    /// The author's membership does not allow this change: the author's certificate chain is
    /// unknown or invalid, or its role or tenant does not cover the document.
    #[error("change {seq} of {author} for {doc} is not authorized: {reason}")]
    NotAuthorized {
        /// The document id.
        doc: String,
        /// The change's author.
        author: String,
        /// The change's sequence number in its author's chain.
        seq: u64,
        /// The reason membership rejects it.
        reason: String,
    },
    /// The author was revoked or its certificate is no longer accepted. The sender may not know
    /// yet, so this is no fault of the peer that relayed the change.
    #[error("change {seq} of {author} for {doc} is refused: {reason}")]
    Refused {
        /// The document id.
        doc: String,
        /// The change's author.
        author: String,
        /// The change's sequence number in its author's chain.
        seq: u64,
        /// The reason it is refused.
        reason: String,
    },
    /// The change is larger than a receiver accepts.
    #[error("change {seq} of {author} for {doc} is {len} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// The document id.
        doc: String,
        /// The change's author.
        author: String,
        /// The change's sequence number in its author's chain.
        seq: u64,
        /// Encoded length of the change.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl VerifyError {
    /// Reports whether the peer that sent the change is at fault and should be disconnected.
    /// Only [`VerifyError::Refused`] is not: honest peers relay changes of a node they have not
    /// yet learned was revoked.
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, VerifyError::Refused { .. })
    }
}

/// The parts of a change that routing and ordering need, read once when the change is decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeHeader {
    /// The author (automerge actor).
    pub author: NodeId,
    /// Position in the author's chain for this document, starting at 1.
    pub seq: u64,
    /// Automerge change hash.
    pub hash: ChangeHash,
    /// Hashes of the changes this one depends on.
    pub deps: Vec<ChangeHash>,
    /// Commit time in seconds since the Unix epoch, as the author's clock said.
    pub time: i64,
}

/// A change with its document id and signature, ready to store or send.
///
/// Cloning is cheap: the change bytes are shared.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedChange {
    doc: DocId,
    bytes: Arc<[u8]>,
    signature: Option<[u8; 64]>,
    header: Arc<ChangeHeader>,
}

impl fmt::Debug for SignedChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedChange")
            .field("doc", &self.doc)
            .field("author", &self.header.author)
            .field("seq", &self.header.seq)
            .field("hash", &self.header.hash)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Builds the message that a change signature covers.
pub fn signing_message(doc: &DocId, hash: &ChangeHash) -> Vec<u8> {
    let doc_bytes = doc.to_bytes();
    let mut message = Vec::with_capacity(SIGNING_DOMAIN.len() + doc_bytes.len() + 32);
    message.extend_from_slice(SIGNING_DOMAIN);
    message.extend_from_slice(&doc_bytes);
    message.extend_from_slice(&hash.0);
    message
}

impl SignedChange {
    /// Signs `change` for `doc` with the author's key.
    ///
    /// The change's actor must be the key's public half; otherwise receivers reject it.
    pub fn sign(doc: DocId, change: &mut Change, key: &SigningKey) -> Result<Self, VerifyError> {
        let bytes: Arc<[u8]> = Arc::from(change.bytes().into_owned());
        let header = header_of(&doc, change)?;
        let signature = key.sign(&signing_message(&doc, &header.hash)).to_bytes();
        Ok(SignedChange {
            doc,
            bytes,
            signature: Some(signature),
            header: Arc::new(header),
        })
    }

    /// Decodes a change received from a peer or read from disk. This checks the encoding only;
    /// call [`SignedChange::verify`] before trusting it.
    pub fn decode(
        doc: DocId,
        bytes: Vec<u8>,
        signature: Option<[u8; 64]>,
    ) -> Result<Self, VerifyError> {
        let change = parse_change(&doc, &bytes)?;
        let header = header_of(&doc, &change)?;
        Ok(SignedChange {
            doc,
            bytes: Arc::from(bytes),
            signature,
            header: Arc::new(header),
        })
    }

    /// Checks the signature against the author's key and, for a node document, that the author
    /// owns the document. Tenant documents need the membership check on top of this.
    pub fn verify(&self) -> Result<(), VerifyError> {
        let hash_hex = || hex::encode(self.header.hash.0);
        let signature = self
            .signature
            .ok_or_else(|| VerifyError::MissingSignature {
                doc: self.doc.to_string(),
                hash: hash_hex(),
            })?;

        if self.doc.kind == DocKind::Node && self.doc.key != self.header.author.0 {
            return Err(VerifyError::NotOwner {
                doc: self.doc.to_string(),
                author: self.header.author.to_string(),
            });
        }

        let bad_signature = || VerifyError::BadSignature {
            doc: self.doc.to_string(),
            hash: hash_hex(),
        };
        let key = VerifyingKey::from_bytes(&self.header.author.0).map_err(|_| bad_signature())?;
        key.verify(
            &signing_message(&self.doc, &self.header.hash),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| bad_signature())
    }

    /// Returns the document this change belongs to.
    pub fn doc(&self) -> &DocId {
        &self.doc
    }

    /// Returns the raw automerge change bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Returns the shared change bytes.
    pub fn shared_bytes(&self) -> Arc<[u8]> {
        Arc::clone(&self.bytes)
    }

    /// Returns the signature, if any.
    pub fn signature(&self) -> Option<&[u8; 64]> {
        self.signature.as_ref()
    }

    /// Returns the decoded header.
    pub fn header(&self) -> &ChangeHeader {
        &self.header
    }

    /// Returns the author.
    pub fn author(&self) -> NodeId {
        self.header.author
    }

    /// Returns the position in the author's chain.
    pub fn seq(&self) -> u64 {
        self.header.seq
    }

    /// Returns the change hash.
    pub fn hash(&self) -> ChangeHash {
        self.header.hash
    }

    /// Decodes the bytes into an automerge change for applying to a document.
    pub fn to_change(&self) -> Result<Change, VerifyError> {
        parse_change(&self.doc, &self.bytes)
    }

    /// Returns a copy with the document id replaced, keeping bytes and signature. Tests use it to
    /// build replay attempts.
    pub fn with_doc(&self, doc: DocId) -> SignedChange {
        SignedChange {
            doc,
            ..self.clone()
        }
    }

    /// Returns a copy with the signature replaced.
    pub fn with_signature(&self, signature: Option<[u8; 64]>) -> SignedChange {
        SignedChange {
            signature,
            ..self.clone()
        }
    }

    /// Returns the wire form.
    pub fn to_wire(&self) -> WireChange {
        WireChange {
            doc: self.doc.to_bytes(),
            bytes: self.bytes.to_vec(),
            signature: self.signature.map(|s| s.to_vec()),
        }
    }

    /// Returns the length in bytes of the encoded wire form, for accounting.
    pub fn wire_len(&self) -> usize {
        let doc_len = self.doc.to_bytes().len();
        // `Option<Vec<u8>>`: a tag byte, then a one-byte length (64) and the signature.
        let sig_len = if self.signature.is_some() { 66 } else { 1 };
        varint_len(doc_len) + doc_len + varint_len(self.bytes.len()) + self.bytes.len() + sig_len
    }
}

fn varint_len(value: usize) -> usize {
    let mut len = 1;
    let mut rest = value >> 7;
    while rest > 0 {
        len += 1;
        rest >>= 7;
    }
    len
}

/// Checks the chunk's limits, then parses it with automerge. A compressed change reaches
/// automerge inflated, under the same hash.
fn parse_change(doc: &DocId, bytes: &[u8]) -> Result<Change, VerifyError> {
    let malformed = |reason: String| VerifyError::Malformed {
        doc: doc.to_string(),
        reason,
    };
    let chunk = change_chunk::check(bytes).map_err(|err| malformed(err.to_string()))?;
    Change::from_bytes(chunk.into_owned()).map_err(|err| malformed(err.to_string()))
}

fn header_of(doc: &DocId, change: &Change) -> Result<ChangeHeader, VerifyError> {
    let actor: [u8; 32] =
        change
            .actor_id()
            .to_bytes()
            .try_into()
            .map_err(|_| VerifyError::Malformed {
                doc: doc.to_string(),
                reason: "actor id is not a 32-byte ed25519 key".to_string(),
            })?;
    Ok(ChangeHeader {
        author: NodeId(actor),
        seq: change.seq(),
        hash: change.hash(),
        deps: change.deps().to_vec(),
        time: change.timestamp(),
    })
}

/// The wire and disk form of a signed change. Decode it with [`WireChange::into_signed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChange {
    /// [`DocId::to_bytes`].
    #[serde(with = "serde_bytes_vec")]
    pub doc: Vec<u8>,
    /// Raw automerge change bytes.
    #[serde(with = "serde_bytes_vec")]
    pub bytes: Vec<u8>,
    /// 64-byte ed25519 signature.
    pub signature: Option<Vec<u8>>,
}

impl WireChange {
    /// Decodes the parts. A signature of the wrong length is reported as malformed, so that a
    /// truncated signature is never mistaken for an absent one.
    pub fn into_signed(self) -> Result<SignedChange, VerifyError> {
        let doc = DocId::from_bytes(&self.doc).map_err(|err| VerifyError::Malformed {
            doc: "(undecodable)".to_string(),
            reason: err.to_string(),
        })?;
        let signature = match self.signature {
            None => None,
            Some(bytes) => {
                Some(
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| VerifyError::Malformed {
                            doc: doc.to_string(),
                            reason: format!("signature is {} bytes, expected 64", bytes.len()),
                        })?,
                )
            }
        };
        SignedChange::decode(doc, self.bytes, signature)
    }
}

/// Serializes `Vec<u8>` as a byte string so that postcard writes length + bytes.
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}
