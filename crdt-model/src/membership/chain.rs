//! Certificate chains (root -> enrollment -> node), their verification, and the authorization of
//! document changes by verified members.

use std::collections::BTreeSet;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use super::revocation::RevocationSet;
use super::token::{Scope, ScopeWire, SignedEnrollment};
use super::wire::{self, SignedWire, CERTIFICATE_DOMAIN, FORMAT_VERSION};
use super::{
    FleetId, MembershipError, Role, TokenId, UnixTime, CHAIN_LEN_MAX, CLOCK_SKEW_MAX_SECS,
};
use crate::ids::{DocKind, NodeId, TenantId};
use crate::signed::SignedChange;

/// A node's certificate, signed by the enrollment key of the token it enrolled with.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeCertificate {
    /// The node's ed25519 key, which libp2p authenticates as the peer id.
    pub node: NodeId,
    /// The id of the token that enrolled the node.
    pub token_id: TokenId,
    /// The node's tenant, site, role and operator tenants; equal to the token's scope.
    pub scope: Scope,
    /// When the node enrolled, in Unix seconds.
    pub issued_at: i64,
    /// When the certificate expires, in Unix seconds.
    pub expires: i64,
}

#[derive(Serialize, Deserialize)]
struct CertificateWire {
    node: [u8; 32],
    token_id: [u8; 16],
    scope: ScopeWire,
    issued_at: i64,
    expires: i64,
}

#[derive(Serialize, Deserialize)]
struct ChainWire {
    version: u8,
    enrollment: SignedWire,
    certificate: SignedWire,
}

/// The chain root -> enrollment -> node that a peer presents before any document is exchanged.
///
/// Decoding checks only the encoding; call [`CertificateChain::verify`] before trusting it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CertificateChain {
    enrollment: SignedEnrollment,
    certificate: NodeCertificate,
    certificate_wire: SignedWire,
}

/// The facts a verified chain establishes about a peer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VerifiedMember {
    /// The node, equal to the authenticated peer.
    pub node: NodeId,
    /// The node's own tenant.
    pub tenant: TenantId,
    /// The node's site.
    pub site: String,
    /// The node's role.
    pub role: Role,
    /// Every tenant the node may replicate: its own tenant plus, for operators, the tenants its
    /// enrollment names.
    pub tenants: BTreeSet<TenantId>,
    /// When the certificate expires, in Unix seconds; verify again after that.
    pub expires: i64,
    /// The token that enrolled the node.
    pub token_id: TokenId,
}

impl VerifiedMember {
    /// Reports whether the member may receive the documents of `tenant`.
    pub fn may_replicate(&self, tenant: &TenantId) -> bool {
        self.tenants.contains(tenant)
    }

    /// Reports whether the member may write the tenant documents (membership, policy) of
    /// `tenant`.
    pub fn is_operator_of(&self, tenant: &TenantId) -> bool {
        self.role == Role::Operator && self.tenants.contains(tenant)
    }
}

impl CertificateChain {
    /// Signs `certificate` with the enrollment secret key and pairs it with its enrollment.
    pub(super) fn issue(
        enrollment: SignedEnrollment,
        certificate: NodeCertificate,
        enrollment_secret: &SigningKey,
    ) -> Result<CertificateChain, MembershipError> {
        let body = CertificateWire {
            node: certificate.node.0,
            token_id: certificate.token_id.0,
            scope: certificate.scope.to_wire(),
            issued_at: certificate.issued_at,
            expires: certificate.expires,
        };
        let certificate_wire =
            SignedWire::sign("certificate", CERTIFICATE_DOMAIN, &body, enrollment_secret)?;
        Ok(CertificateChain {
            enrollment,
            certificate,
            certificate_wire,
        })
    }

    /// Returns the root-signed enrollment record.
    pub fn enrollment(&self) -> &super::Enrollment {
        &self.enrollment.enrollment
    }

    /// Returns the node certificate.
    pub fn certificate(&self) -> &NodeCertificate {
        &self.certificate
    }

    /// Returns the node the certificate names.
    pub fn node(&self) -> NodeId {
        self.certificate.node
    }

    /// Returns the fleet the enrollment names (not yet verified).
    pub fn fleet(&self) -> FleetId {
        self.enrollment.enrollment.fleet
    }

    /// Encodes the chain for the handshake or a revocation record.
    pub fn encode(&self) -> Vec<u8> {
        let wire = ChainWire {
            version: FORMAT_VERSION,
            enrollment: self.enrollment.wire.clone(),
            certificate: self.certificate_wire.clone(),
        };
        // postcard fails only on serde features these structs do not use (such as sequences of
        // unknown length). An empty result would fail to decode rather than pass as valid.
        wire::encode("certificate chain", &wire).unwrap_or_default()
    }

    /// Decodes a chain of at most [`CHAIN_LEN_MAX`] bytes. This checks the encoding and value
    /// ranges, not the signatures.
    pub fn decode(bytes: &[u8]) -> Result<CertificateChain, MembershipError> {
        const KIND: &str = "certificate chain";
        let wire: ChainWire = wire::decode(KIND, bytes, CHAIN_LEN_MAX)?;
        wire::check_version(KIND, wire.version)?;
        let enrollment = SignedEnrollment::from_wire(wire.enrollment)?;

        let body: CertificateWire =
            wire::decode("certificate", &wire.certificate.body, CHAIN_LEN_MAX)?;
        let certificate = NodeCertificate {
            node: NodeId(body.node),
            token_id: TokenId(body.token_id),
            scope: Scope::from_wire("certificate", body.scope)?,
            issued_at: body.issued_at,
            expires: body.expires,
        };
        Ok(CertificateChain {
            enrollment,
            certificate,
            certificate_wire: wire.certificate,
        })
    }

    /// Verifies the chain of the authenticated peer `peer` for `fleet` at time `now`.
    ///
    /// The checks run in this order, each with its own error:
    ///
    /// 1. the enrollment names `fleet`, and the fleet root signed it;
    /// 2. the enrollment key signed the certificate;
    /// 3. the certificate names `peer`;
    /// 4. the certificate claims exactly the token's scope;
    /// 5. the certificate was issued inside the token's window and is valid at `now`;
    /// 6. `revocations` does not revoke it.
    pub fn verify(
        &self,
        fleet: &FleetId,
        peer: &NodeId,
        now: i64,
        revocations: &RevocationSet,
    ) -> Result<VerifiedMember, MembershipError> {
        let enrollment = &self.enrollment.enrollment;
        let certificate = &self.certificate;

        // Signatures: root -> enrollment -> certificate.
        if enrollment.fleet != *fleet {
            return Err(MembershipError::ForeignFleet {
                expected: *fleet,
                found: enrollment.fleet,
            });
        }
        self.enrollment.verify_root()?;
        self.certificate_wire
            .verify("certificate", CERTIFICATE_DOMAIN, &enrollment.key)?;

        // The certificate must be the peer's own and stay inside its token's scope.
        if certificate.node != *peer {
            return Err(MembershipError::WrongNode {
                expected: *peer,
                found: certificate.node,
            });
        }
        check_scope(enrollment, certificate)?;

        // Time: issued inside the token's window, and valid now.
        let validity = enrollment.validity;
        if certificate.issued_at < validity.not_before || certificate.issued_at >= validity.expires
        {
            return Err(MembershipError::IssuedOutsideWindow {
                issued_at: UnixTime(certificate.issued_at),
                not_before: UnixTime(validity.not_before),
                expires: UnixTime(validity.expires),
            });
        }
        if now.saturating_add(CLOCK_SKEW_MAX_SECS) < certificate.issued_at {
            return Err(MembershipError::NotYetValid {
                kind: "certificate",
                not_before: UnixTime(certificate.issued_at),
                now: UnixTime(now),
            });
        }
        if now >= certificate.expires {
            return Err(MembershipError::Expired {
                kind: "certificate",
                expires: UnixTime(certificate.expires),
                now: UnixTime(now),
                fix: "enroll the machine again with a new join token",
            });
        }

        if let Some(tenant) = revocations.revoking_tenant(self) {
            return Err(MembershipError::Revoked {
                node: certificate.node,
                tenant,
            });
        }

        Ok(VerifiedMember {
            node: certificate.node,
            tenant: certificate.scope.tenant.clone(),
            site: certificate.scope.site.clone(),
            role: certificate.scope.role,
            tenants: certificate.scope.member_tenants(),
            expires: certificate.expires,
            token_id: certificate.token_id,
        })
    }
}

/// Checks that a certificate claims exactly what its enrollment allows. The enrollment key can
/// sign anything, so this is what keeps a token holder inside the token's scope.
fn check_scope(
    enrollment: &super::Enrollment,
    certificate: &NodeCertificate,
) -> Result<(), MembershipError> {
    let mismatch = |field| Err(MembershipError::ScopeMismatch { field });
    if certificate.token_id != enrollment.token_id {
        return mismatch("token id");
    }
    if certificate.scope.tenant != enrollment.scope.tenant {
        return mismatch("tenant");
    }
    if certificate.scope.site != enrollment.scope.site {
        return mismatch("site");
    }
    if certificate.scope.role != enrollment.scope.role {
        return mismatch("role");
    }
    if certificate.scope.tenants != enrollment.scope.tenants {
        return mismatch("tenants");
    }
    if certificate.expires > enrollment.validity.certificate_expires {
        return mismatch("expiry");
    }
    Ok(())
}

/// Checks that `member` may author `change`.
///
/// - A node document accepts only its owner's changes, and only in the owner's own tenant.
/// - A tenant document (membership, policy) accepts only changes by operators of its tenant.
///
/// This does not check the signature; call [`SignedChange::verify`] first. `member` must come
/// from [`CertificateChain::verify`] of the change's author at the current time.
pub fn authorize_change(
    change: &SignedChange,
    member: &VerifiedMember,
) -> Result<(), MembershipError> {
    let doc = change.doc();
    let denied = |reason| MembershipError::NotAuthorized {
        author: change.author(),
        target: doc.to_string(),
        reason,
    };
    if change.author() != member.node {
        return Err(denied("the change's author is not the verified member"));
    }
    match doc.kind {
        DocKind::Node => {
            if doc.key != member.node.0 {
                return Err(denied("a node document accepts only its owner's changes"));
            }
            if doc.tenant != member.tenant {
                return Err(denied("a node writes its document only in its own tenant"));
            }
        }
        DocKind::Membership | DocKind::Policy => {
            if !member.is_operator_of(&doc.tenant) {
                return Err(denied(
                    "tenant documents accept only changes by operators of that tenant",
                ));
            }
        }
    }
    Ok(())
}
