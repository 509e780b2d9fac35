//! Revocations of nodes and tokens, and the set of revocations a node enforces.
//!
//! A revocation belongs to one tenant: it is stored in that tenant's membership document and
//! applies to every member whose tenants include that tenant (the tenant's nodes and the
//! operators serving it). Its issuer is the fleet root or an operator of the tenant. An operator
//! issuer attaches its own certificate chain, which is checked at the revocation's issue time, so
//! revocations stay in force after the issuer's certificate expires or is revoked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::chain::CertificateChain;
use super::wire::{self, SignedWire, FORMAT_VERSION, REVOCATION_DOMAIN};
use super::{FleetId, MembershipError, TokenId, REASON_LEN_MAX, REVOCATION_LEN_MAX};
use crate::ids::{NodeId, TenantId};

/// The target of a revocation: one node, or the nodes that a token enrolled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RevocationTarget {
    /// One node key.
    Node(NodeId),
    /// Every node enrolled with a token after a time.
    Token {
        /// The token.
        token_id: TokenId,
        /// Nodes whose certificates were issued at or before this time (Unix seconds) stay.
        /// A thief holding the token can back-date a certificate, so to cut a stolen token off
        /// completely use `i64::MIN` and re-enroll the machines it enrolled legitimately.
        enrolled_after: i64,
    },
}

/// A revocation record before signing.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Revocation {
    /// The tenant whose membership document contains the record.
    pub tenant: TenantId,
    /// The revoked node or token.
    pub target: RevocationTarget,
    /// Why, for people reading the membership; at most [`REASON_LEN_MAX`] bytes, no control
    /// characters.
    pub reason: String,
    /// When the issuer signed it, in Unix seconds.
    pub issued_at: i64,
    /// The signer: an operator of the tenant, or the fleet root key.
    pub issuer: NodeId,
}

#[derive(Serialize, Deserialize)]
struct RevocationWire {
    tenant: TenantId,
    target: TargetWire,
    reason: String,
    issued_at: i64,
    issuer: [u8; 32],
}

#[derive(Serialize, Deserialize)]
enum TargetWire {
    Node([u8; 32]),
    Token {
        token_id: [u8; 16],
        enrolled_after: i64,
    },
}

#[derive(Serialize, Deserialize)]
struct SignedRevocationWire {
    version: u8,
    revocation: SignedWire,
    issuer_chain: Option<Vec<u8>>,
}

/// The id of a revocation: the first 16 bytes of SHA-256 over its signed body, in hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevocationId(pub [u8; 16]);

impl fmt::Display for RevocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for RevocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RevocationId({self})")
    }
}

/// A signed revocation with its issuer's certificate chain (absent when the root signed it).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedRevocation {
    revocation: Revocation,
    wire: SignedWire,
    issuer_chain: Option<CertificateChain>,
}

fn validate_reason(reason: &str) -> Result<(), String> {
    if reason.len() > REASON_LEN_MAX {
        return Err(format!(
            "the reason is {} bytes, at most {REASON_LEN_MAX} are allowed",
            reason.len()
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err("the reason contains control characters".to_string());
    }
    Ok(())
}

impl SignedRevocation {
    /// Signs `revocation` with the issuer's key. An operator passes its own certificate chain;
    /// the fleet root passes `None`.
    pub fn sign(
        revocation: Revocation,
        issuer_key: &SigningKey,
        issuer_chain: Option<CertificateChain>,
    ) -> Result<SignedRevocation, MembershipError> {
        let invalid = |reason: String| MembershipError::InvalidRequest {
            kind: "revocation",
            reason,
        };
        validate_reason(&revocation.reason).map_err(invalid)?;
        if NodeId(issuer_key.verifying_key().to_bytes()) != revocation.issuer {
            return Err(invalid(
                "the signing key is not the issuer's key".to_string(),
            ));
        }
        if let Some(chain) = &issuer_chain {
            if chain.node() != revocation.issuer {
                return Err(invalid(format!(
                    "the attached certificate chain is for node {}, not for the issuer",
                    chain.node()
                )));
            }
        }

        let target = match revocation.target {
            RevocationTarget::Node(node) => TargetWire::Node(node.0),
            RevocationTarget::Token {
                token_id,
                enrolled_after,
            } => TargetWire::Token {
                token_id: token_id.0,
                enrolled_after,
            },
        };
        let body = RevocationWire {
            tenant: revocation.tenant.clone(),
            target,
            reason: revocation.reason.clone(),
            issued_at: revocation.issued_at,
            issuer: revocation.issuer.0,
        };
        let wire = SignedWire::sign("revocation", REVOCATION_DOMAIN, &body, issuer_key)?;
        Ok(SignedRevocation {
            revocation,
            wire,
            issuer_chain,
        })
    }

    /// Returns the revocation record.
    pub fn revocation(&self) -> &Revocation {
        &self.revocation
    }

    /// Returns the issuer's certificate chain, if the issuer is an operator.
    pub fn issuer_chain(&self) -> Option<&CertificateChain> {
        self.issuer_chain.as_ref()
    }

    /// Returns the id, which is stable for a given signed body.
    pub fn id(&self) -> RevocationId {
        let digest = Sha256::digest(&self.wire.body);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        RevocationId(id)
    }

    /// Checks the signature and that the issuer may revoke in the revocation's tenant: the
    /// issuer is the fleet root, or its attached chain verifies for `fleet` at the issue time
    /// and names an operator of the tenant.
    pub fn verify(&self, fleet: &FleetId) -> Result<(), MembershipError> {
        let revocation = &self.revocation;
        let issuer_key = wire::verifying_key("revocation issuer", &revocation.issuer.0)?;
        self.wire
            .verify("revocation", REVOCATION_DOMAIN, &issuer_key)?;
        if revocation.issuer == fleet.as_node() {
            return Ok(());
        }

        let denied = |reason| MembershipError::NotAuthorized {
            author: revocation.issuer,
            target: format!("the membership of tenant {}", revocation.tenant),
            reason,
        };
        let chain = self
            .issuer_chain
            .as_ref()
            .ok_or_else(|| denied("the revocation has no certificate chain for its issuer"))?;
        let member = chain
            .verify(
                fleet,
                &revocation.issuer,
                revocation.issued_at,
                &RevocationSet::new(),
            )
            .map_err(|source| MembershipError::InvalidIssuer {
                issuer: revocation.issuer,
                source: Box::new(source),
            })?;
        if !member.is_operator_of(&revocation.tenant) {
            return Err(denied(
                "only the fleet root and operators of the tenant may revoke",
            ));
        }
        Ok(())
    }

    /// Encodes the revocation with its issuer chain.
    pub fn encode(&self) -> Vec<u8> {
        let wire = SignedRevocationWire {
            version: FORMAT_VERSION,
            revocation: self.wire.clone(),
            issuer_chain: self.issuer_chain.as_ref().map(CertificateChain::encode),
        };
        // postcard fails only on serde features these structs do not use (such as sequences of
        // unknown length). An empty result would fail to decode rather than pass as valid.
        wire::encode("revocation", &wire).unwrap_or_default()
    }

    /// Decodes a revocation of at most [`REVOCATION_LEN_MAX`] bytes. This checks the encoding
    /// and value ranges, not the signatures.
    pub fn decode(bytes: &[u8]) -> Result<SignedRevocation, MembershipError> {
        const KIND: &str = "revocation";
        let outer: SignedRevocationWire = wire::decode(KIND, bytes, REVOCATION_LEN_MAX)?;
        wire::check_version(KIND, outer.version)?;
        let body: RevocationWire = wire::decode(KIND, &outer.revocation.body, REVOCATION_LEN_MAX)?;
        validate_reason(&body.reason)
            .map_err(|reason| MembershipError::Malformed { kind: KIND, reason })?;
        let issuer_chain = outer
            .issuer_chain
            .as_deref()
            .map(CertificateChain::decode)
            .transpose()?;

        let target = match body.target {
            TargetWire::Node(key) => RevocationTarget::Node(NodeId(key)),
            TargetWire::Token {
                token_id,
                enrolled_after,
            } => RevocationTarget::Token {
                token_id: TokenId(token_id),
                enrolled_after,
            },
        };
        Ok(SignedRevocation {
            revocation: Revocation {
                tenant: body.tenant,
                target,
                reason: body.reason,
                issued_at: body.issued_at,
                issuer: NodeId(body.issuer),
            },
            wire: outer.revocation,
            issuer_chain,
        })
    }
}

/// The verified revocations a node enforces. It only grows: merging and inserting never undo a
/// revocation.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct RevocationSet {
    /// Revoked node keys, with the tenants whose membership revoked them.
    nodes: BTreeMap<NodeId, BTreeSet<TenantId>>,
    /// Revoked tokens: per tenant, the earliest `enrolled_after`.
    tokens: BTreeMap<TokenId, BTreeMap<TenantId, i64>>,
}

impl RevocationSet {
    /// Creates an empty set.
    pub fn new() -> RevocationSet {
        RevocationSet::default()
    }

    /// Verifies `revocation` for `fleet` (see [`SignedRevocation::verify`]) and adds it.
    pub fn insert(
        &mut self,
        fleet: &FleetId,
        revocation: &SignedRevocation,
    ) -> Result<(), MembershipError> {
        revocation.verify(fleet)?;
        let record = &revocation.revocation;
        match record.target {
            RevocationTarget::Node(node) => {
                self.nodes
                    .entry(node)
                    .or_default()
                    .insert(record.tenant.clone());
            }
            RevocationTarget::Token {
                token_id,
                enrolled_after,
            } => {
                let cutoff = self
                    .tokens
                    .entry(token_id)
                    .or_default()
                    .entry(record.tenant.clone())
                    .or_insert(enrolled_after);
                *cutoff = (*cutoff).min(enrolled_after);
            }
        }
        Ok(())
    }

    /// Adds every revocation of `other`.
    pub fn extend(&mut self, other: &RevocationSet) {
        for (node, tenants) in &other.nodes {
            self.nodes
                .entry(*node)
                .or_default()
                .extend(tenants.iter().cloned());
        }
        for (token, cutoffs) in &other.tokens {
            let entry = self.tokens.entry(*token).or_default();
            for (tenant, enrolled_after) in cutoffs {
                let cutoff = entry.entry(tenant.clone()).or_insert(*enrolled_after);
                *cutoff = (*cutoff).min(*enrolled_after);
            }
        }
    }

    /// Reports whether the set revokes `chain`.
    pub fn is_revoked(&self, chain: &CertificateChain) -> bool {
        self.revoking_tenant(chain).is_some()
    }

    /// Returns the first tenant whose membership revokes `chain`, if any. A revocation in tenant
    /// T applies to a chain whose member tenants include T.
    pub fn revoking_tenant(&self, chain: &CertificateChain) -> Option<TenantId> {
        let certificate = chain.certificate();
        let member_tenants = certificate.scope.member_tenants();

        if let Some(tenants) = self.nodes.get(&certificate.node) {
            if let Some(tenant) = tenants.iter().find(|t| member_tenants.contains(*t)) {
                return Some(tenant.clone());
            }
        }
        let cutoffs = self.tokens.get(&certificate.token_id)?;
        cutoffs
            .iter()
            .find(|(tenant, enrolled_after)| {
                member_tenants.contains(*tenant) && certificate.issued_at > **enrolled_after
            })
            .map(|(tenant, _)| tenant.clone())
    }

    /// Returns the number of revoked nodes and tokens.
    pub fn len(&self) -> usize {
        self.nodes.len() + self.tokens.len()
    }

    /// Reports whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.tokens.is_empty()
    }
}
