//! Binary building blocks shared by tokens, chains and revocations: the signed envelope,
//! domain-separated signing and strict postcard decoding.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::MembershipError;

/// Format version written into chains, tokens and revocations.
pub(super) const FORMAT_VERSION: u8 = 1;

/// Signing domain of an enrollment record.
pub(super) const ENROLLMENT_DOMAIN: &[u8] = b"fleetmesh/enrollment/v1\0";
/// Signing domain of a node certificate.
pub(super) const CERTIFICATE_DOMAIN: &[u8] = b"fleetmesh/certificate/v1\0";
/// Signing domain of a revocation.
pub(super) const REVOCATION_DOMAIN: &[u8] = b"fleetmesh/revocation/v1\0";

/// A record body with its signature. The signature covers `domain | body` over the exact body
/// bytes, so verification never depends on re-encoding a decoded value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SignedWire {
    #[serde(with = "byte_string")]
    pub body: Vec<u8>,
    #[serde(with = "signature_bytes")]
    pub signature: [u8; 64],
}

impl std::fmt::Debug for SignedWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedWire")
            .field("body_len", &self.body.len())
            .field("signature", &hex::encode(self.signature))
            .finish()
    }
}

impl SignedWire {
    /// Encodes `body` and signs it under `domain`.
    pub fn sign<T: Serialize>(
        kind: &'static str,
        domain: &[u8],
        body: &T,
        key: &SigningKey,
    ) -> Result<SignedWire, MembershipError> {
        let body = encode(kind, body)?;
        let signature = key.sign(&signing_message(domain, &body)).to_bytes();
        Ok(SignedWire { body, signature })
    }

    /// Checks the signature with strict ed25519 rules (no small-order keys, canonical scalars).
    pub fn verify(
        &self,
        kind: &'static str,
        domain: &[u8],
        key: &VerifyingKey,
    ) -> Result<(), MembershipError> {
        key.verify_strict(
            &signing_message(domain, &self.body),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| MembershipError::BadSignature { kind })
    }
}

fn signing_message(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + body.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(body);
    message
}

/// Encodes a value with postcard.
pub(super) fn encode<T: Serialize>(
    kind: &'static str,
    value: &T,
) -> Result<Vec<u8>, MembershipError> {
    postcard::to_stdvec(value).map_err(|err| MembershipError::Malformed {
        kind,
        reason: format!("cannot encode: {err}"),
    })
}

/// Decodes exactly one postcard value from `bytes`, after checking the length against `max`.
/// Trailing bytes are an error, so one encoding has one meaning.
pub(super) fn decode<T: DeserializeOwned>(
    kind: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, MembershipError> {
    if bytes.len() > max {
        return Err(MembershipError::TooLarge {
            kind,
            len: bytes.len(),
            max,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|err| MembershipError::Malformed {
            kind,
            reason: err.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(MembershipError::Malformed {
            kind,
            reason: format!("{} unexpected bytes after the end", rest.len()),
        });
    }
    Ok(value)
}

/// Checks a format version byte.
pub(super) fn check_version(kind: &'static str, version: u8) -> Result<(), MembershipError> {
    if version == FORMAT_VERSION {
        Ok(())
    } else {
        Err(MembershipError::UnsupportedVersion {
            kind,
            version,
            supported: FORMAT_VERSION,
        })
    }
}

/// Decodes a 32-byte ed25519 public key.
pub(super) fn verifying_key(
    kind: &'static str,
    bytes: &[u8; 32],
) -> Result<VerifyingKey, MembershipError> {
    VerifyingKey::from_bytes(bytes).map_err(|_| MembershipError::Malformed {
        kind,
        reason: "the key is not an ed25519 public key".to_string(),
    })
}

/// `Vec<u8>` as a postcard byte string (varint length, then the bytes).
pub(super) mod byte_string {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct BytesVisitor;

        impl<'de> serde::de::Visitor<'de> for BytesVisitor {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: serde::de::Error>(self, value: &[u8]) -> Result<Vec<u8>, E> {
                Ok(value.to_vec())
            }

            fn visit_byte_buf<E: serde::de::Error>(self, value: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(value)
            }
        }

        deserializer.deserialize_bytes(BytesVisitor)
    }
}

/// `[u8; 64]` as a fixed-size tuple, which postcard writes as 64 raw bytes with no length.
/// Serde's derive covers arrays only up to 32 elements.
pub(super) mod signature_bytes {
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(64)?;
        for byte in bytes {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 64], D::Error> {
        struct ArrayVisitor;

        impl<'de> serde::de::Visitor<'de> for ArrayVisitor {
            type Value = [u8; 64];

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 signature bytes")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<[u8; 64], A::Error> {
                let mut out = [0u8; 64];
                for (index, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(index, &self))?;
                }
                Ok(out)
            }
        }

        deserializer.deserialize_tuple(64, ArrayVisitor)
    }
}
