//! Fleet membership: join tokens, certificate chains, revocations and the tenant membership
//! document.
//!
//! A fleet is identified by its root ed25519 public key ([`FleetId`]). The root holder creates a
//! [`JoinToken`]: a fresh enrollment key pair plus an [`Enrollment`] record that the root signs,
//! scoped to one tenant, site and role and to a time window. A machine enrolls itself with the
//! token and no contact with the root: it signs a [`NodeCertificate`] for its own node key with the
//! token's enrollment key, which gives the [`CertificateChain`] root -> enrollment -> node. Peers
//! exchange chains and call [`CertificateChain::verify`] with the libp2p-authenticated peer id.
//!
//! Operators revoke nodes or tokens with a [`SignedRevocation`] stored in the tenant's
//! [`MembershipDocument`]. Every revocation carries its issuer's own chain, so any node can check
//! it without further context, and [`MembershipDocument::revocation_set`] reads the whole history,
//! so deleting a revocation from the document does not undo it.
//!
//! # Encodings
//!
//! Binary forms are postcard. A signed record is `body | signature`, where the body is the
//! postcard encoding of the record and the ed25519 signature covers a domain string followed by
//! the body bytes exactly as received:
//!
//! ```text
//! enrollment:  "fleetmesh/enrollment/v1" 0x00 | body   signed by the fleet root key
//! certificate: "fleetmesh/certificate/v1" 0x00 | body  signed by the enrollment key
//! revocation:  "fleetmesh/revocation/v1" 0x00 | body   signed by the issuer (operator or root)
//! ```
//!
//! A chain is `version (1) | enrollment body (varint length + bytes) | signature (64) |
//! certificate body (varint length + bytes) | signature (64)`. A node of tenant `acme` at site
//! `leeds` has a 310-byte chain; the largest valid chain ([`TENANTS_MAX`] names of 64 bytes each)
//! fits in [`CHAIN_LEN_MAX`], which a test checks.
//!
//! Text forms are a prefix followed by lower-case RFC 4648 base32 without padding of
//! `payload | checksum`, where the checksum is the first 4 bytes of SHA-256 over
//! `prefix | payload`. A mistyped or truncated line therefore fails with a checksum error
//! instead of decoding into something else:
//!
//! - [`FleetId`]: `fleet1` + base32(root public key (32) | checksum (4)), 64 characters;
//! - [`JoinToken`]: `fmjoin1` + base32(version (1) | enrollment secret key (32) | signed
//!   enrollment | checksum (4)), 343 characters for a node of tenant `acme` at site `leeds`.
//!
//! # Time
//!
//! Times are Unix seconds passed in by the caller, because this crate reads no clock. Checks of
//! the form "not valid before" accept clocks up to [`CLOCK_SKEW_MAX_SECS`] ahead of the signer's.
//! Expiry checks have no tolerance.

mod chain;
mod document;
mod revocation;
mod text;
mod token;
mod wire;

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::document::DocumentError;
use crate::ids::{NodeId, TenantId};
use crate::signed::VerifyError;

pub use chain::{authorize_change, CertificateChain, NodeCertificate, VerifiedMember};
pub use document::{MembershipDocument, RejectedRevocation, REVOCATION_KEY_PREFIX};
pub use revocation::{Revocation, RevocationId, RevocationSet, RevocationTarget, SignedRevocation};
pub use token::{Enrollment, JoinToken, Scope, TokenValidity};

/// Largest encoded [`CertificateChain`] accepted, in bytes.
pub const CHAIN_LEN_MAX: usize = 18 * 1024;

/// Largest encoded [`SignedRevocation`] accepted, in bytes: the record plus its issuer's chain.
pub const REVOCATION_LEN_MAX: usize = CHAIN_LEN_MAX + 1024;

/// Maximum length of a join token text in bytes.
pub const TOKEN_TEXT_LEN_MAX: usize = 16 * 1024;

/// Maximum number of operator tenants in one enrollment.
pub const TENANTS_MAX: usize = 128;

/// Maximum length of a revocation reason in bytes.
pub const REASON_LEN_MAX: usize = 256;

/// How far a verifier's clock may run behind a signer's before "not valid before" checks fail,
/// in seconds.
pub const CLOCK_SKEW_MAX_SECS: i64 = 300;

/// Text prefix of a [`FleetId`].
pub const FLEET_ID_PREFIX: &str = "fleet1";

/// Text prefix of a [`JoinToken`].
pub const JOIN_TOKEN_PREFIX: &str = "fmjoin1";

/// Errors from decoding, verifying and authorizing membership records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// A fleet id or join token text does not have the expected form.
    #[error("invalid {kind}: {reason}")]
    InvalidText {
        /// The kind of text ("fleet id" or "join token").
        kind: &'static str,
        /// Description of the problem.
        reason: String,
    },
    /// The checksum of a fleet id or join token text does not match its content.
    #[error("invalid {kind}: the checksum does not match, so the text was mistyped or cut short; copy the whole line again")]
    ChecksumMismatch {
        /// The kind of text.
        kind: &'static str,
    },
    /// A binary record does not decode, or decodes to values outside the allowed ranges.
    #[error("malformed {kind}: {reason}")]
    Malformed {
        /// The record ("certificate chain", "enrollment", ...).
        kind: &'static str,
        /// The message of the decoder or the validation.
        reason: String,
    },
    /// A binary record or text is longer than its limit.
    #[error("{kind} is {len} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// The record.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The record was written by a newer fleetmesh.
    #[error("{kind} has format version {version}, but this fleetmesh reads only version {supported}; upgrade fleetmesh")]
    UnsupportedVersion {
        /// The record.
        kind: &'static str,
        /// The version found.
        version: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// The chain was issued by another fleet's root key.
    #[error("certificate chain belongs to fleet {found}, not to fleet {expected}; enroll the node with a join token of fleet {expected}")]
    ForeignFleet {
        /// The fleet of the verifier.
        expected: FleetId,
        /// The fleet named in the chain.
        found: FleetId,
    },
    /// A signature does not verify.
    #[error("invalid signature on the {kind}: it was altered or signed by another key")]
    BadSignature {
        /// The signed record.
        kind: &'static str,
    },
    /// The certificate names another node than the authenticated peer.
    #[error("certificate is for node {found}, but the peer is {expected}; the peer presented a chain that is not its own")]
    WrongNode {
        /// The authenticated peer.
        expected: NodeId,
        /// The node named in the certificate.
        found: NodeId,
    },
    /// The certificate claims more than its enrollment allows.
    #[error("certificate {field} does not match the {field} allowed by its join token")]
    ScopeMismatch {
        /// The field that differs ("tenant", "site", "role", "tenants", "token id", "expiry").
        field: &'static str,
    },
    /// The certificate was issued outside the enrollment window of its token.
    #[error("certificate was issued at {issued_at}, outside its join token's window from {not_before} to {expires}")]
    IssuedOutsideWindow {
        /// Issue time stated in the certificate.
        issued_at: UnixTime,
        /// Start of the token's window.
        not_before: UnixTime,
        /// End of the token's window.
        expires: UnixTime,
    },
    /// The record is not valid yet.
    #[error("{kind} is not valid before {not_before}, and the clock reads {now}; check this machine's clock")]
    NotYetValid {
        /// The record.
        kind: &'static str,
        /// Start of validity.
        not_before: UnixTime,
        /// The time checked.
        now: UnixTime,
    },
    /// The record has expired.
    #[error("{kind} expired at {expires} (the clock reads {now}); {fix}")]
    Expired {
        /// The record.
        kind: &'static str,
        /// End of validity.
        expires: UnixTime,
        /// The time checked.
        now: UnixTime,
        /// The suggested fix.
        fix: &'static str,
    },
    /// The node, or the token that enrolled it, is revoked.
    #[error("node {node} is revoked in the membership of tenant {tenant}; enroll the machine again with a new node key and token if it should rejoin")]
    Revoked {
        /// The revoked node.
        node: NodeId,
        /// The tenant whose membership document contains the revocation.
        tenant: TenantId,
    },
    /// A revocation's issuer chain does not verify at the revocation's issue time.
    #[error("revocation issuer {issuer} has an invalid certificate chain: {source}")]
    InvalidIssuer {
        /// The issuer.
        issuer: NodeId,
        /// The error from verifying the chain.
        source: Box<MembershipError>,
    },
    /// A token or revocation request has values outside the allowed ranges.
    #[error("invalid {kind}: {reason}")]
    InvalidRequest {
        /// The kind of request ("join token scope", "revocation", ...).
        kind: &'static str,
        /// Description of the problem.
        reason: String,
    },
    /// A join token's secret key does not belong to its enrollment record.
    #[error(
        "invalid join token: its secret key does not match its enrollment key; ask for a new token"
    )]
    KeyMismatch,
    /// A member may not write a document, or an issuer may not revoke.
    #[error("node {author} may not write {target}: {reason}")]
    NotAuthorized {
        /// The author or issuer.
        author: NodeId,
        /// The document or tenant written.
        target: String,
        /// The rule that failed.
        reason: &'static str,
    },
    /// A revocation was added to another tenant's membership document.
    #[error("revocation for tenant {found} cannot be stored in the membership document of tenant {expected}")]
    WrongTenant {
        /// The document's tenant.
        expected: TenantId,
        /// The revocation's tenant.
        found: TenantId,
    },
    /// Reading or writing the membership document failed. Boxed because automerge errors are
    /// large and every membership result would carry their size.
    #[error(transparent)]
    Document(Box<DocumentError>),
    /// Signing or checking a change failed.
    #[error(transparent)]
    Change(#[from] VerifyError),
}

impl From<DocumentError> for MembershipError {
    fn from(error: DocumentError) -> Self {
        MembershipError::Document(Box::new(error))
    }
}

/// A time in Unix seconds that displays as an RFC 3339 UTC timestamp in messages.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct UnixTime(pub i64);

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_utc(self.0))
    }
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` in the proleptic Gregorian calendar.
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Converts days since 1970-01-01 to (year, month, day). The calendar repeats every 400 years
/// (146,097 days); counting years from 1 March puts the leap day at the end of each year.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The id of a fleet: the fleet root's ed25519 public key.
///
/// Its text form is `fleet1` followed by checksummed base32 (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FleetId(pub [u8; 32]);

impl FleetId {
    /// Returns the fleet id of a root public key.
    pub fn from_root(key: &VerifyingKey) -> FleetId {
        FleetId(key.to_bytes())
    }

    /// Returns the raw 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Returns the root key as a node id, the form that revocation issuers use.
    pub fn as_node(&self) -> NodeId {
        NodeId(self.0)
    }

    /// Decodes the root public key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, MembershipError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| MembershipError::Malformed {
            kind: "fleet id",
            reason: "the bytes are not an ed25519 public key".to_string(),
        })
    }
}

impl fmt::Display for FleetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text::encode(FLEET_ID_PREFIX, &self.0))
    }
}

impl fmt::Debug for FleetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FleetId({self})")
    }
}

impl FromStr for FleetId {
    type Err = MembershipError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = text::decode("fleet id", FLEET_ID_PREFIX, s, 128)?;
        let key: [u8; 32] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| MembershipError::InvalidText {
                    kind: "fleet id",
                    reason: format!("it holds {} bytes, expected 32", bytes.len()),
                })?;
        Ok(FleetId(key))
    }
}

impl Serialize for FleetId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for FleetId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The random id of a join token, shared by every certificate enrolled with it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(pub [u8; 16]);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl FromStr for TokenId {
    type Err = MembershipError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || MembershipError::InvalidText {
            kind: "token id",
            reason: format!("{s:?} is not 32 hex digits"),
        };
        let bytes = hex::decode(s).map_err(|_| invalid())?;
        let id: [u8; 16] = bytes.try_into().map_err(|_| invalid())?;
        Ok(TokenId(id))
    }
}

/// The role of an enrolled machine, which sets what it may do.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Role {
    /// A managed machine: replicates and writes only its own tenant's node documents.
    Node,
    /// A technician's or NOC machine: writes tenant documents (membership, policy) of the
    /// tenants its enrollment names, and replicates them.
    Operator,
}

impl Role {
    /// Returns the lower-case name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Operator => "operator",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Role::Node => 0,
            Role::Operator => 1,
        }
    }

    fn from_tag(tag: u8) -> Option<Role> {
        match tag {
            0 => Some(Role::Node),
            1 => Some(Role::Operator),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = MembershipError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "node" => Ok(Role::Node),
            "operator" => Ok(Role::Operator),
            _ => Err(MembershipError::InvalidText {
                kind: "role",
                reason: format!("{s:?} is not a role; use node or operator"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_utc_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn format_utc_extremes_do_not_panic() {
        assert!(!format_utc(i64::MAX).is_empty());
        assert!(!format_utc(i64::MIN).is_empty());
    }

    #[test]
    fn fleet_id_text_round_trip() {
        let fleet = FleetId([42; 32]);
        let text = fleet.to_string();
        assert!(text.starts_with(FLEET_ID_PREFIX), "{text}");
        assert_eq!(text.len(), 64, "{text}");
        assert_eq!(text.parse::<FleetId>().ok(), Some(fleet));
        assert_eq!(text.to_uppercase().parse::<FleetId>().ok(), Some(fleet));
    }

    #[test]
    fn fleet_id_typo_is_checksum_error() {
        let text = FleetId([42; 32]).to_string();
        let mut chars: Vec<char> = text.chars().collect();
        chars[20] = if chars[20] == 'a' { 'b' } else { 'a' };
        let typo: String = chars.into_iter().collect();
        let err = typo.parse::<FleetId>().unwrap_err();
        assert!(
            matches!(err, MembershipError::ChecksumMismatch { kind: "fleet id" }),
            "{err}"
        );
    }

    #[test]
    fn token_id_and_role_parse() {
        let id = TokenId([0xab; 16]);
        assert_eq!(id.to_string().parse::<TokenId>().ok(), Some(id));
        assert!("abc".parse::<TokenId>().is_err());
        assert_eq!("operator".parse::<Role>().ok(), Some(Role::Operator));
        assert!("admin".parse::<Role>().is_err());
    }
}
