//! Join tokens: an enrollment key pair plus the root-signed [`Enrollment`] that scopes it.
//!
//! The token text carries the enrollment secret key, so whoever holds the text can enroll
//! machines within the token's scope until the token expires. Keep tokens short-lived and pass
//! them over a channel you trust.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};

use super::chain::{CertificateChain, NodeCertificate};
use super::wire::{self, SignedWire, ENROLLMENT_DOMAIN, FORMAT_VERSION};
use super::{
    text, FleetId, MembershipError, Role, TokenId, UnixTime, CHAIN_LEN_MAX, CLOCK_SKEW_MAX_SECS,
    JOIN_TOKEN_PREFIX, TENANTS_MAX, TOKEN_TEXT_LEN_MAX,
};
use crate::ids::{validate_name, NodeId, TenantId};

/// Who an enrolled machine is: tenant, site, role and, for operators, the tenants it serves.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Scope {
    /// The tenant the machine belongs to.
    pub tenant: TenantId,
    /// The site (location) of the machine; same rules as tenant names.
    pub site: String,
    /// What the machine may do.
    pub role: Role,
    /// For operators, further tenants whose documents the machine may replicate and write,
    /// sorted and without duplicates. Always empty for [`Role::Node`].
    pub tenants: Vec<TenantId>,
}

impl Scope {
    /// Validates a scope and sorts and deduplicates `tenants`.
    pub fn new(
        tenant: TenantId,
        site: &str,
        role: Role,
        tenants: Vec<TenantId>,
    ) -> Result<Scope, MembershipError> {
        let tenants: Vec<TenantId> = tenants
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let scope = Scope {
            tenant,
            site: site.to_string(),
            role,
            tenants,
        };
        scope
            .validate()
            .map_err(|reason| MembershipError::InvalidRequest {
                kind: "join token scope",
                reason,
            })?;
        Ok(scope)
    }

    /// Returns every tenant the machine may replicate: its own, plus the operator tenants.
    pub fn member_tenants(&self) -> BTreeSet<TenantId> {
        let mut tenants: BTreeSet<TenantId> = self.tenants.iter().cloned().collect();
        tenants.insert(self.tenant.clone());
        tenants
    }

    fn validate(&self) -> Result<(), String> {
        validate_name("site", &self.site).map_err(|err| err.to_string())?;
        if self.tenants.len() > TENANTS_MAX {
            return Err(format!(
                "{} operator tenants, at most {TENANTS_MAX} are allowed",
                self.tenants.len()
            ));
        }
        if self.role == Role::Node && !self.tenants.is_empty() {
            return Err("only operators may serve further tenants; drop the tenant list or use the operator role".to_string());
        }
        Ok(())
    }

    pub(super) fn to_wire(&self) -> ScopeWire {
        ScopeWire {
            tenant: self.tenant.clone(),
            site: self.site.clone(),
            role: self.role.tag(),
            tenants: self.tenants.clone(),
        }
    }

    pub(super) fn from_wire(kind: &'static str, wire: ScopeWire) -> Result<Scope, MembershipError> {
        let malformed = |reason: String| MembershipError::Malformed { kind, reason };
        let role = Role::from_tag(wire.role)
            .ok_or_else(|| malformed(format!("unknown role tag {}", wire.role)))?;
        let scope = Scope {
            tenant: wire.tenant,
            site: wire.site,
            role,
            tenants: wire.tenants,
        };
        scope.validate().map_err(malformed)?;
        Ok(scope)
    }
}

/// Binary form of a [`Scope`]; tenant names are validated while decoding.
#[derive(Serialize, Deserialize)]
pub(super) struct ScopeWire {
    tenant: TenantId,
    site: String,
    role: u8,
    tenants: Vec<TenantId>,
}

/// The time limits of a join token, in Unix seconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TokenValidity {
    /// Start of the enrollment window.
    pub not_before: i64,
    /// End of the enrollment window (exclusive): no certificate may be issued from then on.
    pub expires: i64,
    /// Latest expiry that a certificate enrolled with this token may carry. Certificates
    /// outlive the enrollment window, because a machine stays a member long after it enrolled.
    pub certificate_expires: i64,
}

impl TokenValidity {
    fn validate(&self) -> Result<(), String> {
        if self.not_before >= self.expires {
            return Err(format!(
                "the token expires at {} but is valid only from {}",
                UnixTime(self.expires),
                UnixTime(self.not_before)
            ));
        }
        if self.certificate_expires < self.expires {
            return Err(format!(
                "certificates would expire at {}, before the token itself expires at {}",
                UnixTime(self.certificate_expires),
                UnixTime(self.expires)
            ));
        }
        Ok(())
    }
}

/// The root-signed record inside a join token.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Enrollment {
    /// The fleet whose root signed this record.
    pub fleet: FleetId,
    /// The enrollment public key, which signs the certificates of enrolled machines.
    pub key: VerifyingKey,
    /// The token's random id, copied into every certificate it issues.
    pub token_id: TokenId,
    /// Who machines enrolled with this token are.
    pub scope: Scope,
    /// When the token may enroll machines, and how long their certificates may last.
    pub validity: TokenValidity,
}

#[derive(Serialize, Deserialize)]
struct EnrollmentWire {
    fleet: [u8; 32],
    key: [u8; 32],
    token_id: [u8; 16],
    scope: ScopeWire,
    not_before: i64,
    expires: i64,
    certificate_expires: i64,
}

/// An [`Enrollment`] with the exact bytes and root signature it was decoded from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(super) struct SignedEnrollment {
    pub enrollment: Enrollment,
    pub wire: SignedWire,
}

impl SignedEnrollment {
    fn sign(
        enrollment: Enrollment,
        root: &SigningKey,
    ) -> Result<SignedEnrollment, MembershipError> {
        let body = EnrollmentWire {
            fleet: enrollment.fleet.0,
            key: enrollment.key.to_bytes(),
            token_id: enrollment.token_id.0,
            scope: enrollment.scope.to_wire(),
            not_before: enrollment.validity.not_before,
            expires: enrollment.validity.expires,
            certificate_expires: enrollment.validity.certificate_expires,
        };
        let wire = SignedWire::sign("enrollment", ENROLLMENT_DOMAIN, &body, root)?;
        Ok(SignedEnrollment { enrollment, wire })
    }

    /// Decodes the body. This checks the encoding and value ranges, not the signature.
    pub fn from_wire(wire: SignedWire) -> Result<SignedEnrollment, MembershipError> {
        const KIND: &str = "enrollment";
        let body: EnrollmentWire = wire::decode(KIND, &wire.body, CHAIN_LEN_MAX)?;
        let validity = TokenValidity {
            not_before: body.not_before,
            expires: body.expires,
            certificate_expires: body.certificate_expires,
        };
        validity
            .validate()
            .map_err(|reason| MembershipError::Malformed { kind: KIND, reason })?;
        let enrollment = Enrollment {
            fleet: FleetId(body.fleet),
            key: wire::verifying_key(KIND, &body.key)?,
            token_id: TokenId(body.token_id),
            scope: Scope::from_wire(KIND, body.scope)?,
            validity,
        };
        Ok(SignedEnrollment { enrollment, wire })
    }

    /// Checks the root signature against the fleet named in the record.
    pub fn verify_root(&self) -> Result<(), MembershipError> {
        let root = self.enrollment.fleet.verifying_key()?;
        self.wire.verify("enrollment", ENROLLMENT_DOMAIN, &root)
    }
}

/// A join token: the enrollment secret key and its root-signed [`Enrollment`].
///
/// `Debug` omits the secret key. The text form from [`JoinToken::to_text`] contains it.
#[derive(Clone)]
pub struct JoinToken {
    secret: SigningKey,
    signed: SignedEnrollment,
}

#[derive(Serialize, Deserialize)]
struct TokenWire {
    version: u8,
    secret: [u8; 32],
    enrollment: SignedWire,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("enrollment", &self.signed.enrollment)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// Creates a token signed by the fleet root key. The enrollment key pair and token id come
    /// from `rng`, which must be a cryptographic RNG such as the OS RNG.
    pub fn create(
        root: &SigningKey,
        scope: Scope,
        validity: TokenValidity,
        rng: &mut impl CryptoRngCore,
    ) -> Result<JoinToken, MembershipError> {
        let invalid = |reason: String| MembershipError::InvalidRequest {
            kind: "join token",
            reason,
        };
        validity.validate().map_err(invalid)?;
        let scope = Scope::new(scope.tenant, &scope.site, scope.role, scope.tenants)?;

        let secret = SigningKey::generate(rng);
        let mut token_id = [0u8; 16];
        rng.fill_bytes(&mut token_id);
        let enrollment = Enrollment {
            fleet: FleetId::from_root(&root.verifying_key()),
            key: secret.verifying_key(),
            token_id: TokenId(token_id),
            scope,
            validity,
        };
        let signed = SignedEnrollment::sign(enrollment, root)?;
        Ok(JoinToken { secret, signed })
    }

    /// Returns the root-signed enrollment record.
    pub fn enrollment(&self) -> &Enrollment {
        &self.signed.enrollment
    }

    /// Returns the fleet that issued the token.
    pub fn fleet(&self) -> FleetId {
        self.signed.enrollment.fleet
    }

    /// Returns the token id.
    pub fn id(&self) -> TokenId {
        self.signed.enrollment.token_id
    }

    /// Enrolls `node` at time `now` without contacting the root: signs a certificate for the
    /// node with the token's enrollment key.
    ///
    /// The certificate is issued at `now` (or at the token's start, for a clock that runs up to
    /// [`CLOCK_SKEW_MAX_SECS`] behind) and expires at the token's
    /// [`TokenValidity::certificate_expires`].
    pub fn enroll(&self, node: NodeId, now: i64) -> Result<CertificateChain, MembershipError> {
        let enrollment = &self.signed.enrollment;
        let validity = enrollment.validity;
        if now.saturating_add(CLOCK_SKEW_MAX_SECS) < validity.not_before {
            return Err(MembershipError::NotYetValid {
                kind: "join token",
                not_before: UnixTime(validity.not_before),
                now: UnixTime(now),
            });
        }
        if now >= validity.expires {
            return Err(MembershipError::Expired {
                kind: "join token",
                expires: UnixTime(validity.expires),
                now: UnixTime(now),
                fix: "ask an operator for a new token (`fleetmesh fleet token`)",
            });
        }

        let certificate = NodeCertificate {
            node,
            token_id: enrollment.token_id,
            scope: enrollment.scope.clone(),
            issued_at: now.max(validity.not_before),
            expires: validity.certificate_expires,
        };
        CertificateChain::issue(self.signed.clone(), certificate, &self.secret)
    }

    /// Returns the single-line text form, which contains the enrollment secret key.
    pub fn to_text(&self) -> String {
        let wire = TokenWire {
            version: FORMAT_VERSION,
            secret: self.secret.to_bytes(),
            enrollment: self.signed.wire.clone(),
        };
        // postcard fails only on serde features these structs do not use (such as sequences of
        // unknown length). An empty payload would fail to parse rather than pass as valid.
        let payload = wire::encode("join token", &wire).unwrap_or_default();
        text::encode(JOIN_TOKEN_PREFIX, &payload)
    }

    /// Parses a token text and checks that the root signed it and that its secret key matches.
    /// This does not check the time window; [`JoinToken::enroll`] does.
    pub fn from_text(text: &str) -> Result<JoinToken, MembershipError> {
        const KIND: &str = "join token";
        let payload = text::decode(KIND, JOIN_TOKEN_PREFIX, text, TOKEN_TEXT_LEN_MAX)?;
        let wire: TokenWire = wire::decode(KIND, &payload, TOKEN_TEXT_LEN_MAX)?;
        wire::check_version(KIND, wire.version)?;

        let signed = SignedEnrollment::from_wire(wire.enrollment)?;
        signed.verify_root()?;
        let secret = SigningKey::from_bytes(&wire.secret);
        if secret.verifying_key() != signed.enrollment.key {
            return Err(MembershipError::KeyMismatch);
        }
        Ok(JoinToken { secret, signed })
    }
}

impl FromStr for JoinToken {
    type Err = MembershipError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JoinToken::from_text(s)
    }
}
