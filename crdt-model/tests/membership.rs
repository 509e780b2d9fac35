//! Fleet membership: join tokens, certificate chains, revocations, the membership document and
//! change authorization, including each rejection case.
//!
//! Some tests forge records with a second, independent description of the binary format (the
//! `*Mirror` structs below), so they also pin the format down.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use automerge::transaction::Transactable;
use automerge::ReadDoc;
use ed25519_dalek::{Signer, SigningKey};
use fleetmesh_model::membership::{
    authorize_change, CertificateChain, FleetId, JoinToken, MembershipDocument, MembershipError,
    Revocation, RevocationSet, RevocationTarget, Role, Scope, SignedRevocation, TokenId,
    TokenValidity, CHAIN_LEN_MAX, CLOCK_SKEW_MAX_SECS, JOIN_TOKEN_PREFIX, REVOCATION_KEY_PREFIX,
    TENANTS_MAX, TOKEN_TEXT_LEN_MAX,
};
use fleetmesh_model::{
    DocId, DocKind, Facts, Identity, NodeDocument, NodeId, SignedChange, TenantId,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const NOW: i64 = 1_750_000_000;
const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn node_of(key: &SigningKey) -> NodeId {
    NodeId(key.verifying_key().to_bytes())
}

fn root() -> SigningKey {
    key(1)
}

fn fleet() -> FleetId {
    FleetId::from_root(&root().verifying_key())
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

fn validity() -> TokenValidity {
    TokenValidity {
        not_before: NOW,
        expires: NOW + DAY,
        certificate_expires: NOW + 365 * DAY,
    }
}

fn node_scope(tenant_name: &str) -> Scope {
    Scope::new(tenant(tenant_name), "leeds", Role::Node, vec![]).unwrap()
}

fn operator_scope(home: &str, tenants: &[&str]) -> Scope {
    let tenants = tenants.iter().map(|name| tenant(name)).collect();
    Scope::new(tenant(home), "noc", Role::Operator, tenants).unwrap()
}

fn token(scope: Scope) -> JoinToken {
    JoinToken::create(&root(), scope, validity(), &mut rng()).unwrap()
}

/// Enrolls the node with key seed `seed` in `scope` at `NOW`.
fn enroll(seed: u8, scope: Scope) -> (SigningKey, CertificateChain) {
    let node_key = key(seed);
    let chain = token(scope).enroll(node_of(&node_key), NOW).unwrap();
    (node_key, chain)
}

fn verify(chain: &CertificateChain, now: i64) -> Result<(), MembershipError> {
    chain
        .verify(&fleet(), &chain.node(), now, &RevocationSet::new())
        .map(|_| ())
}

// Binary format mirrors: an independent description of what the module docs specify.

#[derive(Serialize, Deserialize)]
struct ChainMirror {
    version: u8,
    enrollment_body: Vec<u8>,
    enrollment_signature: ([u8; 32], [u8; 32]),
    certificate_body: Vec<u8>,
    certificate_signature: ([u8; 32], [u8; 32]),
}

#[derive(Serialize, Deserialize, Clone)]
struct ScopeMirror {
    tenant: String,
    site: String,
    role: u8,
    tenants: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone)]
struct CertificateMirror {
    node: [u8; 32],
    token_id: [u8; 16],
    scope: ScopeMirror,
    issued_at: i64,
    expires: i64,
}

fn split_signature(signature: [u8; 64]) -> ([u8; 32], [u8; 32]) {
    let mut first = [0u8; 32];
    let mut second = [0u8; 32];
    first.copy_from_slice(&signature[..32]);
    second.copy_from_slice(&signature[32..]);
    (first, second)
}

/// Decodes the payload of a token text: `prefix | base32(payload | checksum)`.
fn token_payload(text: &str) -> Vec<u8> {
    let body = text
        .strip_prefix(JOIN_TOKEN_PREFIX)
        .unwrap()
        .to_ascii_uppercase();
    let data = data_encoding::BASE32_NOPAD.decode(body.as_bytes()).unwrap();
    data[..data.len() - 4].to_vec()
}

/// Encodes a token payload with a valid checksum.
fn token_text(payload: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(JOIN_TOKEN_PREFIX.as_bytes())
        .chain_update(payload)
        .finalize();
    let mut data = payload.to_vec();
    data.extend_from_slice(&digest[..4]);
    format!(
        "{JOIN_TOKEN_PREFIX}{}",
        data_encoding::BASE32_NOPAD
            .encode(&data)
            .to_ascii_lowercase()
    )
}

/// The enrollment secret key inside a token: payload bytes 1 to 32, after the version byte.
fn enrollment_secret(token: &JoinToken) -> SigningKey {
    let payload = token_payload(&token.to_text());
    let seed: [u8; 32] = payload[1..33].try_into().unwrap();
    SigningKey::from_bytes(&seed)
}

/// Re-signs the certificate of `chain` after `edit`, as a thief holding the token could.
fn forge(
    token: &JoinToken,
    chain: &CertificateChain,
    edit: impl FnOnce(&mut CertificateMirror),
) -> CertificateChain {
    let mut mirror: ChainMirror = postcard::from_bytes(&chain.encode()).unwrap();
    let mut certificate: CertificateMirror =
        postcard::from_bytes(&mirror.certificate_body).unwrap();
    edit(&mut certificate);
    mirror.certificate_body = postcard::to_stdvec(&certificate).unwrap();

    let mut message = b"fleetmesh/certificate/v1\0".to_vec();
    message.extend_from_slice(&mirror.certificate_body);
    let signature = enrollment_secret(token).sign(&message).to_bytes();
    mirror.certificate_signature = split_signature(signature);
    CertificateChain::decode(&postcard::to_stdvec(&mirror).unwrap()).unwrap()
}

// Join tokens.

#[test]
fn token_text_round_trip() {
    let token = token(operator_scope("msp", &["acme", "globex"]));
    let text = token.to_text();
    assert!(text.starts_with(JOIN_TOKEN_PREFIX), "{text}");
    assert!(!text.contains(char::is_whitespace), "{text}");

    let parsed = JoinToken::from_text(&text).unwrap();
    assert_eq!(parsed.enrollment(), token.enrollment());
    assert_eq!(parsed.id(), token.id());
    assert_eq!(parsed.fleet(), fleet());
    assert_eq!(parsed.to_text(), text);
}

#[test]
fn token_text_typo_is_checksum_error() {
    let text = token(node_scope("acme")).to_text();
    let mut chars: Vec<char> = text.chars().collect();
    let position = text.len() / 2;
    chars[position] = if chars[position] == 'q' { 'r' } else { 'q' };
    let typo: String = chars.into_iter().collect();

    let err = JoinToken::from_text(&typo).unwrap_err();
    assert!(
        matches!(err, MembershipError::ChecksumMismatch { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("copy the whole line again"),
        "{err}"
    );
}

#[test]
fn token_text_truncated_fails() {
    let text = token(node_scope("acme")).to_text();
    for len in [
        text.len() - 1,
        text.len() - 8,
        text.len() / 2,
        JOIN_TOKEN_PREFIX.len(),
    ] {
        assert!(JoinToken::from_text(&text[..len]).is_err(), "length {len}");
    }
}

#[test]
fn token_text_rejects_fleet_id() {
    let err = JoinToken::from_text(&fleet().to_string()).unwrap_err();
    assert!(matches!(err, MembershipError::InvalidText { .. }), "{err}");
    assert!(err.to_string().contains("fmjoin1"), "{err}");
}

#[test]
fn token_text_rejects_over_limit() {
    let text = format!("{JOIN_TOKEN_PREFIX}{}", "a".repeat(TOKEN_TEXT_LEN_MAX));
    let err = JoinToken::from_text(&text).unwrap_err();
    assert!(matches!(err, MembershipError::TooLarge { .. }), "{err}");
}

#[test]
fn token_debug_hides_secret() {
    let token = token(node_scope("acme"));
    let debug = format!("{token:?}");
    let secret_hex = hex::encode(enrollment_secret(&token).to_bytes());
    assert!(!debug.contains(&secret_hex), "{debug}");
    assert!(!debug.contains(&token.to_text()[10..40]), "{debug}");
}

#[test]
fn token_with_foreign_secret_is_key_mismatch() {
    let first = token(node_scope("acme"));
    let second = JoinToken::create(
        &root(),
        node_scope("acme"),
        validity(),
        &mut StdRng::seed_from_u64(8),
    )
    .unwrap();
    let mut payload = token_payload(&first.to_text());
    let other = token_payload(&second.to_text());
    payload[1..33].copy_from_slice(&other[1..33]);

    let err = JoinToken::from_text(&token_text(&payload)).unwrap_err();
    assert!(matches!(err, MembershipError::KeyMismatch), "{err}");
}

#[test]
fn token_future_version_is_rejected() {
    let mut payload = token_payload(&token(node_scope("acme")).to_text());
    payload[0] = 2;
    let err = JoinToken::from_text(&token_text(&payload)).unwrap_err();
    assert!(
        matches!(err, MembershipError::UnsupportedVersion { version: 2, .. }),
        "{err}"
    );
}

#[test]
fn token_create_sorts_and_dedups_tenants() {
    let scope = Scope::new(
        tenant("msp"),
        "noc",
        Role::Operator,
        vec![tenant("globex"), tenant("acme"), tenant("globex")],
    )
    .unwrap();
    assert_eq!(scope.tenants, vec![tenant("acme"), tenant("globex")]);
}

#[test]
fn token_create_rejects_node_with_tenants() {
    let err = Scope::new(tenant("acme"), "leeds", Role::Node, vec![tenant("globex")]).unwrap_err();
    assert!(
        matches!(err, MembershipError::InvalidRequest { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("operator"), "{err}");
}

#[test]
fn token_create_rejects_bad_site() {
    let err = Scope::new(tenant("acme"), "Leeds Office", Role::Node, vec![]).unwrap_err();
    assert!(err.to_string().contains("\"Leeds Office\""), "{err}");
}

#[test]
fn token_create_rejects_too_many_tenants() {
    let tenants = (0..=TENANTS_MAX)
        .map(|i| tenant(&format!("t{i}")))
        .collect();
    let err = Scope::new(tenant("msp"), "noc", Role::Operator, tenants).unwrap_err();
    assert!(err.to_string().contains("at most 128"), "{err}");
}

#[test]
fn token_create_rejects_bad_windows() {
    let cases = [
        TokenValidity {
            not_before: NOW,
            expires: NOW,
            certificate_expires: NOW + DAY,
        },
        TokenValidity {
            not_before: NOW,
            expires: NOW - 1,
            certificate_expires: NOW + DAY,
        },
        TokenValidity {
            not_before: NOW,
            expires: NOW + DAY,
            certificate_expires: NOW + HOUR,
        },
    ];
    for validity in cases {
        let result = JoinToken::create(&root(), node_scope("acme"), validity, &mut rng());
        assert!(
            matches!(result, Err(MembershipError::InvalidRequest { .. })),
            "{validity:?}"
        );
    }
}

// Enrollment.

#[test]
fn enroll_gives_verifying_chain() {
    let node_key = key(10);
    let token = token(node_scope("acme"));
    let chain = token.enroll(node_of(&node_key), NOW + HOUR).unwrap();

    let member = chain
        .verify(
            &fleet(),
            &node_of(&node_key),
            NOW + HOUR,
            &RevocationSet::new(),
        )
        .unwrap();
    assert_eq!(member.node, node_of(&node_key));
    assert_eq!(member.tenant, tenant("acme"));
    assert_eq!(member.site, "leeds");
    assert_eq!(member.role, Role::Node);
    assert_eq!(
        member.tenants.iter().collect::<Vec<_>>(),
        vec![&tenant("acme")]
    );
    assert_eq!(member.expires, NOW + 365 * DAY);
    assert_eq!(member.token_id, token.id());
    assert_eq!(chain.certificate().issued_at, NOW + HOUR);
}

#[test]
fn enroll_operator_member_tenants() {
    let (_, chain) = enroll(11, operator_scope("msp", &["acme", "globex"]));
    let member = chain
        .verify(&fleet(), &chain.node(), NOW, &RevocationSet::new())
        .unwrap();
    assert_eq!(member.role, Role::Operator);
    for name in ["msp", "acme", "globex"] {
        assert!(member.may_replicate(&tenant(name)), "{name}");
        assert!(member.is_operator_of(&tenant(name)), "{name}");
    }
    assert!(!member.may_replicate(&tenant("initech")));
}

#[test]
fn enroll_before_window_is_not_yet_valid() {
    let err = token(node_scope("acme"))
        .enroll(node_of(&key(10)), NOW - CLOCK_SKEW_MAX_SECS - 1)
        .unwrap_err();
    assert!(matches!(err, MembershipError::NotYetValid { .. }), "{err}");
}

#[test]
fn enroll_within_clock_skew_issues_at_start() {
    let chain = token(node_scope("acme"))
        .enroll(node_of(&key(10)), NOW - CLOCK_SKEW_MAX_SECS)
        .unwrap();
    assert_eq!(chain.certificate().issued_at, NOW);
    assert!(verify(&chain, NOW - CLOCK_SKEW_MAX_SECS).is_ok());
}

#[test]
fn enroll_after_expiry_is_expired() {
    let err = token(node_scope("acme"))
        .enroll(node_of(&key(10)), NOW + DAY)
        .unwrap_err();
    assert!(
        matches!(
            err,
            MembershipError::Expired {
                kind: "join token",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("fleetmesh fleet token"), "{err}");
}

#[test]
fn chain_outlives_token_window() {
    let (_, chain) = enroll(10, node_scope("acme"));
    assert!(verify(&chain, NOW + 30 * DAY).is_ok());
}

// Verification failures.

#[test]
fn verify_rejects_foreign_fleet() {
    let (_, chain) = enroll(10, node_scope("acme"));
    let other = FleetId::from_root(&key(2).verifying_key());
    let err = chain
        .verify(&other, &chain.node(), NOW, &RevocationSet::new())
        .unwrap_err();
    assert!(
        matches!(err, MembershipError::ForeignFleet { expected, found } if expected == other && found == fleet()),
        "{err}"
    );
}

#[test]
fn verify_rejects_wrong_node() {
    let (_, chain) = enroll(10, node_scope("acme"));
    let impostor = node_of(&key(99));
    let err = chain
        .verify(&fleet(), &impostor, NOW, &RevocationSet::new())
        .unwrap_err();
    assert!(
        matches!(err, MembershipError::WrongNode { expected, .. } if expected == impostor),
        "{err}"
    );
}

#[test]
fn verify_rejects_expired_certificate() {
    let (_, chain) = enroll(10, node_scope("acme"));
    let err = verify(&chain, NOW + 365 * DAY).unwrap_err();
    assert!(
        matches!(
            err,
            MembershipError::Expired {
                kind: "certificate",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn verify_rejects_not_yet_valid() {
    let (_, chain) = enroll(10, node_scope("acme"));
    let err = verify(&chain, NOW - CLOCK_SKEW_MAX_SECS - 1).unwrap_err();
    assert!(matches!(err, MembershipError::NotYetValid { .. }), "{err}");
}

#[test]
fn verify_rejects_enrollment_signed_by_other_root() {
    let other_root = key(2);
    let token = JoinToken::create(&other_root, node_scope("acme"), validity(), &mut rng()).unwrap();
    let chain = token.enroll(node_of(&key(10)), NOW).unwrap();

    // Claim this fleet in the body while keeping the other root's signature.
    let mut mirror: ChainMirror = postcard::from_bytes(&chain.encode()).unwrap();
    mirror.enrollment_body[..32].copy_from_slice(fleet().as_bytes());
    let forged = CertificateChain::decode(&postcard::to_stdvec(&mirror).unwrap()).unwrap();

    let err = verify(&forged, NOW).unwrap_err();
    assert!(
        matches!(err, MembershipError::BadSignature { kind: "enrollment" }),
        "{err}"
    );
}

#[test]
fn forged_certificate_unchanged_still_verifies() {
    // Checks the mirrors: re-signing the same body must give a valid chain.
    let token = token(node_scope("acme"));
    let chain = token.enroll(node_of(&key(10)), NOW).unwrap();
    let forged = forge(&token, &chain, |_| {});
    assert!(verify(&forged, NOW).is_ok());
}

#[test]
fn verify_rejects_certificate_beyond_token_scope() {
    type Edit = fn(&mut CertificateMirror);
    let cases: [(Scope, &str, Edit); 6] = [
        (node_scope("acme"), "tenant", |c| {
            c.scope.tenant = "globex".to_string()
        }),
        (node_scope("acme"), "site", |c| {
            c.scope.site = "york".to_string()
        }),
        (node_scope("acme"), "role", |c| c.scope.role = 1),
        (operator_scope("msp", &["acme"]), "tenants", |c| {
            c.scope.tenants.push("globex".to_string());
        }),
        (node_scope("acme"), "token id", |c| c.token_id = [0; 16]),
        (node_scope("acme"), "expiry", |c| c.expires += 1),
    ];
    for (scope, field, edit) in cases {
        let token = token(scope);
        let chain = token.enroll(node_of(&key(10)), NOW).unwrap();
        let forged = forge(&token, &chain, edit);
        let err = verify(&forged, NOW).unwrap_err();
        assert!(
            matches!(err, MembershipError::ScopeMismatch { field: found } if found == field),
            "case {field}: {err}"
        );
    }
}

#[test]
fn verify_rejects_certificate_issued_outside_window() {
    let token = token(node_scope("acme"));
    let chain = token.enroll(node_of(&key(10)), NOW).unwrap();
    for issued_at in [NOW - 1, NOW + DAY, NOW + 2 * DAY] {
        let forged = forge(&token, &chain, |c| c.issued_at = issued_at);
        let err = verify(&forged, NOW + 3 * DAY).unwrap_err();
        assert!(
            matches!(err, MembershipError::IssuedOutsideWindow { .. }),
            "issued at {issued_at}: {err}"
        );
    }
}

#[test]
fn verify_rejects_every_single_byte_change() {
    let (_, chain) = enroll(10, operator_scope("msp", &["acme"]));
    let bytes = chain.encode();
    // One flip per byte keeps this fast in debug builds; the property tests try other values.
    for index in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[index] ^= 0x01;
        let accepted = CertificateChain::decode(&tampered)
            .map(|decoded| verify(&decoded, NOW).is_ok())
            .unwrap_or(false);
        assert!(!accepted, "byte {index} was accepted");
    }
}

// Encoding and size limits.

#[test]
fn chain_encode_round_trip_and_size() {
    let (_, chain) = enroll(10, node_scope("acme"));
    let bytes = chain.encode();
    assert_eq!(CertificateChain::decode(&bytes).unwrap(), chain);
    assert!(bytes.len() < 400, "typical chain is {} bytes", bytes.len());
}

#[test]
fn chain_of_maximum_scope_fits_limits() {
    let long = |i: usize| tenant(&format!("{i:03}{}", "t".repeat(61)));
    let scope = Scope::new(
        long(999),
        &"s".repeat(64),
        Role::Operator,
        (0..TENANTS_MAX).map(long).collect(),
    )
    .unwrap();
    let validity = TokenValidity {
        not_before: i64::MIN / 2,
        expires: i64::MAX / 2,
        certificate_expires: i64::MAX,
    };
    let token = JoinToken::create(&root(), scope, validity, &mut rng()).unwrap();
    let text = token.to_text();
    assert!(
        text.len() <= TOKEN_TEXT_LEN_MAX,
        "token text is {} characters",
        text.len()
    );
    assert!(JoinToken::from_text(&text).is_ok());

    let chain = token.enroll(node_of(&key(10)), NOW).unwrap();
    let bytes = chain.encode();
    assert!(
        bytes.len() <= CHAIN_LEN_MAX,
        "chain is {} bytes",
        bytes.len()
    );
    assert_eq!(CertificateChain::decode(&bytes).unwrap(), chain);
    assert!(verify(&chain, NOW).is_ok());
}

#[test]
fn chain_decode_rejects_oversize() {
    let err = CertificateChain::decode(&vec![0; CHAIN_LEN_MAX + 1]).unwrap_err();
    assert!(matches!(err, MembershipError::TooLarge { .. }), "{err}");
}

#[test]
fn chain_decode_rejects_trailing_bytes() {
    let (_, chain) = enroll(10, node_scope("acme"));
    let mut bytes = chain.encode();
    bytes.push(0);
    let err = CertificateChain::decode(&bytes).unwrap_err();
    assert!(err.to_string().contains("unexpected bytes"), "{err}");
}

#[test]
fn chain_decode_rejects_future_version() {
    let (_, chain) = enroll(10, node_scope("acme"));
    let mut bytes = chain.encode();
    bytes[0] = 9;
    let err = CertificateChain::decode(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            MembershipError::UnsupportedVersion {
                version: 9,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn chain_decode_rejects_truncation() {
    let (_, chain) = enroll(10, node_scope("acme"));
    let bytes = chain.encode();
    for len in 0..bytes.len() {
        assert!(
            CertificateChain::decode(&bytes[..len]).is_err(),
            "length {len}"
        );
    }
}

// Revocations.

fn revocation(tenant_name: &str, target: RevocationTarget, issuer: NodeId) -> Revocation {
    Revocation {
        tenant: tenant(tenant_name),
        target,
        reason: "laptop stolen".to_string(),
        issued_at: NOW + HOUR,
        issuer,
    }
}

/// Signs a revocation of `target` in acme by an operator of msp that serves acme.
fn operator_revokes(target: RevocationTarget) -> SignedRevocation {
    let (operator_key, operator_chain) = enroll(20, operator_scope("msp", &["acme"]));
    let record = revocation("acme", target, node_of(&operator_key));
    SignedRevocation::sign(record, &operator_key, Some(operator_chain)).unwrap()
}

#[test]
fn revocation_by_operator_revokes_node() {
    let (_, chain) = enroll(10, node_scope("acme"));
    let mut set = RevocationSet::new();
    set.insert(
        &fleet(),
        &operator_revokes(RevocationTarget::Node(chain.node())),
    )
    .unwrap();

    assert!(set.is_revoked(&chain));
    let err = chain
        .verify(&fleet(), &chain.node(), NOW + 2 * HOUR, &set)
        .unwrap_err();
    assert!(
        matches!(&err, MembershipError::Revoked { node, tenant: t } if *node == chain.node() && *t == tenant("acme")),
        "{err}"
    );
}

#[test]
fn revocation_by_root_needs_no_chain() {
    let (_, chain) = enroll(10, node_scope("acme"));
    let record = revocation(
        "acme",
        RevocationTarget::Node(chain.node()),
        fleet().as_node(),
    );
    let signed = SignedRevocation::sign(record, &root(), None).unwrap();
    let mut set = RevocationSet::new();
    set.insert(&fleet(), &signed).unwrap();
    assert!(set.is_revoked(&chain));
}

#[test]
fn revocation_by_plain_node_is_rejected() {
    let (node_key, node_chain) = enroll(10, node_scope("acme"));
    let record = revocation(
        "acme",
        RevocationTarget::Node(node_of(&key(11))),
        node_of(&node_key),
    );
    let signed = SignedRevocation::sign(record, &node_key, Some(node_chain)).unwrap();
    let err = RevocationSet::new().insert(&fleet(), &signed).unwrap_err();
    assert!(
        matches!(err, MembershipError::NotAuthorized { .. }),
        "{err}"
    );
}

#[test]
fn revocation_by_operator_of_other_tenant_is_rejected() {
    let (operator_key, operator_chain) = enroll(20, operator_scope("msp", &["globex"]));
    let record = revocation(
        "acme",
        RevocationTarget::Node(node_of(&key(10))),
        node_of(&operator_key),
    );
    let signed = SignedRevocation::sign(record, &operator_key, Some(operator_chain)).unwrap();
    let err = RevocationSet::new().insert(&fleet(), &signed).unwrap_err();
    assert!(
        matches!(err, MembershipError::NotAuthorized { .. }),
        "{err}"
    );
}

#[test]
fn revocation_without_chain_is_rejected() {
    let operator_key = key(20);
    let record = revocation(
        "acme",
        RevocationTarget::Node(node_of(&key(10))),
        node_of(&operator_key),
    );
    let signed = SignedRevocation::sign(record, &operator_key, None).unwrap();
    let err = RevocationSet::new().insert(&fleet(), &signed).unwrap_err();
    assert!(err.to_string().contains("no certificate chain"), "{err}");
}

#[test]
fn revocation_from_other_fleet_is_rejected() {
    let signed = operator_revokes(RevocationTarget::Node(node_of(&key(10))));
    let other = FleetId::from_root(&key(2).verifying_key());
    let err = RevocationSet::new().insert(&other, &signed).unwrap_err();
    assert!(
        matches!(&err, MembershipError::InvalidIssuer { source, .. } if matches!(**source, MembershipError::ForeignFleet { .. })),
        "{err}"
    );
}

#[test]
fn revocation_issuer_checked_at_issue_time() {
    // The operator's certificate expires two hours after NOW.
    let short = TokenValidity {
        not_before: NOW,
        expires: NOW + HOUR,
        certificate_expires: NOW + 2 * HOUR,
    };
    let operator_key = key(20);
    let operator_chain =
        JoinToken::create(&root(), operator_scope("msp", &["acme"]), short, &mut rng())
            .unwrap()
            .enroll(node_of(&operator_key), NOW)
            .unwrap();
    let sign_at = |issued_at| {
        let mut record = revocation(
            "acme",
            RevocationTarget::Node(node_of(&key(10))),
            node_of(&operator_key),
        );
        record.issued_at = issued_at;
        SignedRevocation::sign(record, &operator_key, Some(operator_chain.clone())).unwrap()
    };

    // Issued while the issuer was valid: stays in force, whatever time the reader's clock shows.
    assert!(RevocationSet::new()
        .insert(&fleet(), &sign_at(NOW + HOUR))
        .is_ok());

    // Issued after the issuer's certificate expired: rejected.
    let err = RevocationSet::new()
        .insert(&fleet(), &sign_at(NOW + 3 * HOUR))
        .unwrap_err();
    assert!(
        matches!(&err, MembershipError::InvalidIssuer { source, .. } if matches!(**source, MembershipError::Expired { .. })),
        "{err}"
    );
}

#[test]
fn revocation_sign_rejects_bad_requests() {
    let operator_key = key(20);
    let issuer = node_of(&operator_key);
    let target = RevocationTarget::Node(node_of(&key(10)));

    let wrong_key = SignedRevocation::sign(revocation("acme", target, issuer), &key(21), None);
    assert!(matches!(
        wrong_key,
        Err(MembershipError::InvalidRequest { .. })
    ));

    let mut long = revocation("acme", target, issuer);
    long.reason = "x".repeat(257);
    assert!(SignedRevocation::sign(long, &operator_key, None).is_err());

    let mut control = revocation("acme", target, issuer);
    control.reason = "bad\u{1b}[2Jreason".to_string();
    assert!(SignedRevocation::sign(control, &operator_key, None).is_err());

    let (_, other_chain) = enroll(30, operator_scope("msp", &["acme"]));
    let mismatched = SignedRevocation::sign(
        revocation("acme", target, issuer),
        &operator_key,
        Some(other_chain),
    );
    assert!(matches!(
        mismatched,
        Err(MembershipError::InvalidRequest { .. })
    ));
}

#[test]
fn revocation_encode_round_trip() {
    let signed = operator_revokes(RevocationTarget::Token {
        token_id: TokenId([5; 16]),
        enrolled_after: NOW,
    });
    let decoded = SignedRevocation::decode(&signed.encode()).unwrap();
    assert_eq!(decoded, signed);
    assert_eq!(decoded.id(), signed.id());
}

#[test]
fn revocation_rejects_every_single_byte_change() {
    let signed = operator_revokes(RevocationTarget::Node(node_of(&key(10))));
    let bytes = signed.encode();
    // The signed record and the chain's option tag and length; the chain's own bytes are
    // covered by `verify_rejects_every_single_byte_change`.
    let chain_len = signed.issuer_chain().unwrap().encode().len();
    for index in 0..bytes.len() - chain_len {
        let mut tampered = bytes.clone();
        tampered[index] ^= 0x01;
        let accepted = SignedRevocation::decode(&tampered)
            .map(|decoded| RevocationSet::new().insert(&fleet(), &decoded).is_ok())
            .unwrap_or(false);
        assert!(!accepted, "byte {index} was accepted");
    }
}

#[test]
fn revoked_token_cuts_off_later_enrollments() {
    let token = token(node_scope("acme"));
    let early = token.enroll(node_of(&key(10)), NOW + HOUR).unwrap();
    let late = token.enroll(node_of(&key(11)), NOW + 3 * HOUR).unwrap();
    let signed = operator_revokes(RevocationTarget::Token {
        token_id: token.id(),
        enrolled_after: NOW + 2 * HOUR,
    });
    let mut set = RevocationSet::new();
    set.insert(&fleet(), &signed).unwrap();

    assert!(!set.is_revoked(&early));
    assert!(set.is_revoked(&late));
}

#[test]
fn revocation_applies_only_to_members_of_its_tenant() {
    // The same node key enrolled in another tenant is untouched by acme's revocation; an
    // operator serving acme is revoked.
    let node_key = key(40);
    let signed = operator_revokes(RevocationTarget::Node(node_of(&node_key)));
    let mut set = RevocationSet::new();
    set.insert(&fleet(), &signed).unwrap();

    let in_globex = token(node_scope("globex"))
        .enroll(node_of(&node_key), NOW)
        .unwrap();
    let serving_acme = token(operator_scope("msp", &["acme"]))
        .enroll(node_of(&node_key), NOW)
        .unwrap();
    assert!(!set.is_revoked(&in_globex));
    assert!(set.is_revoked(&serving_acme));
}

#[test]
fn revocation_set_extend_is_union() {
    let (_, first) = enroll(10, node_scope("acme"));
    let (_, second) = enroll(11, node_scope("acme"));
    let mut a = RevocationSet::new();
    a.insert(
        &fleet(),
        &operator_revokes(RevocationTarget::Node(first.node())),
    )
    .unwrap();
    let mut b = RevocationSet::new();
    b.insert(
        &fleet(),
        &operator_revokes(RevocationTarget::Node(second.node())),
    )
    .unwrap();

    a.extend(&b);
    assert!(a.is_revoked(&first));
    assert!(a.is_revoked(&second));
    assert_eq!(a.len(), 2);
}

// The membership document.

#[test]
fn document_stores_and_reads_revocation() {
    let (operator_key, operator_chain) = enroll(20, operator_scope("msp", &["acme"]));
    let (_, node_chain) = enroll(10, node_scope("acme"));
    let record = revocation(
        "acme",
        RevocationTarget::Node(node_chain.node()),
        node_of(&operator_key),
    );
    let signed =
        SignedRevocation::sign(record, &operator_key, Some(operator_chain.clone())).unwrap();

    let mut doc = MembershipDocument::new(tenant("acme"));
    let change = doc
        .add_revocation(&signed, NOW + HOUR, &operator_key)
        .unwrap()
        .unwrap();
    assert_eq!(change.author(), node_of(&operator_key));
    assert_eq!(change.doc(), doc.id());
    change.verify().unwrap();
    let operator = operator_chain
        .verify(
            &fleet(),
            &operator_chain.node(),
            NOW + HOUR,
            &RevocationSet::new(),
        )
        .unwrap();
    authorize_change(&change, &operator).unwrap();

    let (set, rejected) = doc.revocation_set(&fleet());
    assert!(rejected.is_empty(), "{rejected:?}");
    assert!(set.is_revoked(&node_chain));

    // A replica built from the change reads the same set, and so does a saved snapshot.
    let mut replica = MembershipDocument::from_changes(tenant("acme"), [&change]).unwrap();
    assert_eq!(replica.revocation_set(&fleet()).0, set);
    let mut loaded = MembershipDocument::load(tenant("acme"), &doc.save()).unwrap();
    assert_eq!(loaded.revocation_set(&fleet()).0, set);
}

#[test]
fn document_add_same_revocation_is_no_change() {
    let signed = operator_revokes(RevocationTarget::Node(node_of(&key(10))));
    let mut doc = MembershipDocument::new(tenant("acme"));
    assert!(doc
        .add_revocation(&signed, NOW, &key(20))
        .unwrap()
        .is_some());
    assert!(doc
        .add_revocation(&signed, NOW, &key(20))
        .unwrap()
        .is_none());
}

#[test]
fn document_rejects_other_tenant_revocation() {
    let signed = operator_revokes(RevocationTarget::Node(node_of(&key(10))));
    let mut doc = MembershipDocument::new(tenant("globex"));
    let err = doc.add_revocation(&signed, NOW, &key(20)).unwrap_err();
    assert!(matches!(err, MembershipError::WrongTenant { .. }), "{err}");
}

#[test]
fn document_rejects_change_of_other_document() {
    let signed = operator_revokes(RevocationTarget::Node(node_of(&key(10))));
    let mut acme = MembershipDocument::new(tenant("acme"));
    let change = acme
        .add_revocation(&signed, NOW, &key(20))
        .unwrap()
        .unwrap();
    let mut globex = MembershipDocument::new(tenant("globex"));
    assert!(globex.apply(&change).is_err());
}

/// Writes `edit` to a copy of `doc` as operator `author` and returns the signed change.
fn raw_change(
    doc: &mut MembershipDocument,
    author: &SigningKey,
    edit: impl FnOnce(&mut automerge::AutoCommit),
) -> SignedChange {
    let mut raw = automerge::AutoCommit::load(&doc.save())
        .unwrap()
        .with_actor(automerge::ActorId::from(
            author.verifying_key().to_bytes().to_vec(),
        ));
    edit(&mut raw);
    raw.commit();
    let mut change = raw.get_last_local_change().unwrap();
    SignedChange::sign(doc.id().clone(), &mut change, author).unwrap()
}

#[test]
fn document_deleting_revocation_does_not_unrevoke() {
    let (_, node_chain) = enroll(10, node_scope("acme"));
    let signed = operator_revokes(RevocationTarget::Node(node_chain.node()));
    let mut doc = MembershipDocument::new(tenant("acme"));
    doc.add_revocation(&signed, NOW, &key(20)).unwrap();

    let key_name = format!("{REVOCATION_KEY_PREFIX}{}", signed.id());
    let delete = raw_change(&mut doc, &key(21), |raw| {
        raw.delete(automerge::ROOT, key_name.as_str()).unwrap();
    });
    doc.apply(&delete).unwrap();

    let mut check = automerge::AutoCommit::load(&doc.save()).unwrap();
    assert!(check
        .get(automerge::ROOT, key_name.as_str())
        .unwrap()
        .is_none());
    check.commit();
    assert!(doc.revocation_set(&fleet()).0.is_revoked(&node_chain));
}

#[test]
fn document_skips_invalid_records() {
    let (node_key, node_chain) = enroll(10, node_scope("acme"));
    let forged = SignedRevocation::sign(
        revocation(
            "acme",
            RevocationTarget::Node(node_of(&key(11))),
            node_of(&node_key),
        ),
        &node_key,
        Some(node_chain),
    )
    .unwrap();
    let valid = operator_revokes(RevocationTarget::Node(node_of(&key(12))));

    let mut doc = MembershipDocument::new(tenant("acme"));
    let forged_key = format!("{REVOCATION_KEY_PREFIX}{}", forged.id());
    let forged_bytes = forged.encode();
    let valid_bytes = valid.encode();
    let change = raw_change(&mut doc, &key(20), |raw| {
        raw.put(automerge::ROOT, forged_key.as_str(), forged_bytes)
            .unwrap();
        raw.put(automerge::ROOT, "revocation/not-an-id", valid_bytes)
            .unwrap();
        raw.put(automerge::ROOT, "revocation/garbage", vec![1u8, 2, 3])
            .unwrap();
        raw.put(automerge::ROOT, "revocation/text", "hello")
            .unwrap();
    });
    doc.apply(&change).unwrap();

    let (set, rejected) = doc.revocation_set(&fleet());
    assert!(set.is_empty());
    let mut keys: Vec<&str> = rejected.iter().map(|r| r.key.as_str()).collect();
    keys.sort();
    let mut expected = vec![
        forged_key.as_str(),
        "revocation/garbage",
        "revocation/not-an-id",
        "revocation/text",
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert!(rejected.iter().all(|r| r.change == change.hash()));
}

#[test]
fn document_merges_concurrent_revocations() {
    let (first_key, first_chain) = enroll(20, operator_scope("msp", &["acme"]));
    let (second_key, second_chain) = enroll(21, operator_scope("msp2", &["acme"]));
    let (_, a) = enroll(10, node_scope("acme"));
    let (_, b) = enroll(11, node_scope("acme"));
    let first = SignedRevocation::sign(
        revocation(
            "acme",
            RevocationTarget::Node(a.node()),
            node_of(&first_key),
        ),
        &first_key,
        Some(first_chain),
    )
    .unwrap();
    let second = SignedRevocation::sign(
        revocation(
            "acme",
            RevocationTarget::Node(b.node()),
            node_of(&second_key),
        ),
        &second_key,
        Some(second_chain),
    )
    .unwrap();

    let mut left = MembershipDocument::new(tenant("acme"));
    let mut right = MembershipDocument::new(tenant("acme"));
    let left_change = left
        .add_revocation(&first, NOW, &first_key)
        .unwrap()
        .unwrap();
    let right_change = right
        .add_revocation(&second, NOW, &second_key)
        .unwrap()
        .unwrap();
    left.apply(&right_change).unwrap();
    right.apply(&left_change).unwrap();

    for doc in [&mut left, &mut right] {
        let (set, rejected) = doc.revocation_set(&fleet());
        assert!(rejected.is_empty(), "{rejected:?}");
        assert!(set.is_revoked(&a));
        assert!(set.is_revoked(&b));
    }
}

// Change authorization.

fn node_change(node_key: &SigningKey, doc_tenant: &str, owner: NodeId) -> SignedChange {
    let mut doc = NodeDocument::new(tenant(doc_tenant), owner);
    let identity = Identity {
        node_id: owner.to_string(),
        tenant: doc_tenant.to_string(),
        site: "leeds".to_string(),
        hostname: "web01".to_string(),
        agent_version: "0.1.0".to_string(),
    };
    let mut change = doc
        .record(&identity, &Facts::default(), NOW)
        .unwrap()
        .unwrap();
    SignedChange::sign(
        DocId::node(tenant(doc_tenant), owner),
        &mut change,
        node_key,
    )
    .unwrap()
}

fn member(chain: &CertificateChain) -> fleetmesh_model::membership::VerifiedMember {
    chain
        .verify(&fleet(), &chain.node(), NOW, &RevocationSet::new())
        .unwrap()
}

#[test]
fn authorize_node_writes_own_document() {
    let (node_key, chain) = enroll(10, node_scope("acme"));
    let change = node_change(&node_key, "acme", chain.node());
    assert!(authorize_change(&change, &member(&chain)).is_ok());
}

#[test]
fn authorize_rejects_node_document_in_other_tenant() {
    let (node_key, chain) = enroll(10, node_scope("acme"));
    let change = node_change(&node_key, "globex", chain.node());
    let err = authorize_change(&change, &member(&chain)).unwrap_err();
    assert!(err.to_string().contains("own tenant"), "{err}");
}

#[test]
fn authorize_rejects_other_author() {
    let (node_key, _) = enroll(10, node_scope("acme"));
    let (_, other_chain) = enroll(11, node_scope("acme"));
    let change = node_change(&node_key, "acme", node_of(&node_key));
    let err = authorize_change(&change, &member(&other_chain)).unwrap_err();
    assert!(
        matches!(err, MembershipError::NotAuthorized { .. }),
        "{err}"
    );
}

#[test]
fn authorize_tenant_document_needs_operator_of_tenant() {
    let signed = operator_revokes(RevocationTarget::Node(node_of(&key(50))));

    let (plain_key, plain_chain) = enroll(10, node_scope("acme"));
    let mut doc = MembershipDocument::new(tenant("acme"));
    let by_plain = doc
        .add_revocation(&signed, NOW, &plain_key)
        .unwrap()
        .unwrap();
    let err = authorize_change(&by_plain, &member(&plain_chain)).unwrap_err();
    assert!(
        err.to_string().contains("operators of that tenant"),
        "{err}"
    );

    let (outside_key, outside_chain) = enroll(21, operator_scope("msp", &["globex"]));
    let mut doc = MembershipDocument::new(tenant("acme"));
    let by_outsider = doc
        .add_revocation(&signed, NOW, &outside_key)
        .unwrap()
        .unwrap();
    assert!(authorize_change(&by_outsider, &member(&outside_chain)).is_err());

    let (operator_key, operator_chain) = enroll(22, operator_scope("msp", &["acme"]));
    let mut doc = MembershipDocument::new(tenant("acme"));
    let by_operator = doc
        .add_revocation(&signed, NOW, &operator_key)
        .unwrap()
        .unwrap();
    assert!(authorize_change(&by_operator, &member(&operator_chain)).is_ok());

    let policy = by_operator.with_doc(DocId::tenant_doc(DocKind::Policy, tenant("acme")));
    assert!(authorize_change(&policy, &member(&operator_chain)).is_ok());
}
