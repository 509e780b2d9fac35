//! Property tests for the membership encodings: round trips, decoders fed arbitrary input, and
//! tampering with encoded chains and tokens.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use ed25519_dalek::SigningKey;
use fleetmesh_model::membership::{
    CertificateChain, FleetId, JoinToken, Revocation, RevocationSet, RevocationTarget, Role, Scope,
    SignedRevocation, TokenId, TokenValidity, CHAIN_LEN_MAX, JOIN_TOKEN_PREFIX,
};
use fleetmesh_model::{NodeId, TenantId};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

const NOW: i64 = 1_750_000_000;
const DAY: i64 = 86_400;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn node_of(key: &SigningKey) -> NodeId {
    NodeId(key.verifying_key().to_bytes())
}

fn fleet() -> FleetId {
    FleetId::from_root(&key(1).verifying_key())
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,20}"
}

/// Generates a valid scope: a node, or an operator with up to four further tenants.
fn scope() -> impl Strategy<Value = Scope> {
    (
        name(),
        name(),
        any::<bool>(),
        prop::collection::vec(name(), 0..4),
    )
        .prop_map(|(tenant, site, operator, tenants)| {
            let (role, tenants) = if operator {
                let tenants = tenants
                    .iter()
                    .filter_map(|t| TenantId::new(t).ok())
                    .collect();
                (Role::Operator, tenants)
            } else {
                (Role::Node, Vec::new())
            };
            let tenant = TenantId::new(&tenant).unwrap_or_default();
            Scope::new(tenant, &site, role, tenants).unwrap_or_else(|err| panic!("{err}"))
        })
}

/// Generates a token with a random window, and a chain enrolled at a random time inside it.
fn enrolled() -> impl Strategy<Value = (JoinToken, CertificateChain, i64)> {
    (
        scope(),
        any::<u64>(),
        1..30 * DAY,
        0..365 * DAY,
        any::<u8>(),
        0.0..1.0f64,
    )
        .prop_map(|(scope, seed, window, extra_life, node_seed, position)| {
            let validity = TokenValidity {
                not_before: NOW,
                expires: NOW + window,
                certificate_expires: NOW + window + extra_life,
            };
            let token =
                JoinToken::create(&key(1), scope, validity, &mut StdRng::seed_from_u64(seed))
                    .unwrap_or_else(|err| panic!("{err}"));
            let enrolled_at = NOW + (window as f64 * position) as i64;
            let enrolled_at = enrolled_at.min(NOW + window - 1);
            let chain = token
                .enroll(node_of(&key(node_seed)), enrolled_at)
                .unwrap_or_else(|err| panic!("{err}"));
            (token, chain, enrolled_at)
        })
}

/// Encodes `payload` as token text with a valid checksum, so the binary decoder is reached.
fn checksummed_token_text(payload: &[u8]) -> String {
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

proptest! {
    #[test]
    fn chain_round_trip_verifies((_token, chain, enrolled_at) in enrolled()) {
        let bytes = chain.encode();
        prop_assert!(bytes.len() <= CHAIN_LEN_MAX);
        let decoded = CertificateChain::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded, &chain);
        let member = decoded.verify(&fleet(), &chain.node(), enrolled_at, &RevocationSet::new());
        prop_assert!(member.is_ok(), "{:?}", member);
    }

    #[test]
    fn token_text_round_trip((token, _chain, _at) in enrolled()) {
        let text = token.to_text();
        let parsed = JoinToken::from_text(&text).unwrap();
        prop_assert_eq!(parsed.enrollment(), token.enrollment());
        prop_assert_eq!(parsed.to_text(), text);
    }

    #[test]
    fn fleet_id_text_round_trip(bytes in any::<[u8; 32]>()) {
        let fleet = FleetId(bytes);
        prop_assert_eq!(fleet.to_string().parse::<FleetId>().ok(), Some(fleet));
    }

    #[test]
    fn revocation_round_trip(
        target_node in any::<[u8; 32]>(),
        token_id in any::<[u8; 16]>(),
        enrolled_after in any::<i64>(),
        by_token in any::<bool>(),
        reason in "[ -~]{0,100}",
        issued_at in any::<i64>(),
    ) {
        let target = if by_token {
            RevocationTarget::Token { token_id: TokenId(token_id), enrolled_after }
        } else {
            RevocationTarget::Node(NodeId(target_node))
        };
        let record = Revocation {
            tenant: TenantId::new("acme").unwrap(),
            target,
            reason,
            issued_at,
            issuer: fleet().as_node(),
        };
        let signed = SignedRevocation::sign(record, &key(1), None).unwrap();
        let decoded = SignedRevocation::decode(&signed.encode()).unwrap();
        prop_assert_eq!(&decoded, &signed);
        prop_assert!(RevocationSet::new().insert(&fleet(), &decoded).is_ok());
    }

    #[test]
    fn decoders_accept_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = CertificateChain::decode(&bytes);
        let _ = SignedRevocation::decode(&bytes);
        let _ = JoinToken::from_text(&checksummed_token_text(&bytes));
    }

    #[test]
    fn text_parsers_accept_arbitrary_strings(text in ".{0,400}") {
        let _ = JoinToken::from_text(&text);
        let _ = text.parse::<FleetId>();
        let _ = JoinToken::from_text(&format!("{JOIN_TOKEN_PREFIX}{text}"));
    }

    #[test]
    fn decoders_accept_mutated_chains(
        (_token, chain, _at) in enrolled(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = chain.encode();
        for (index, value) in edits {
            let position = index.index(bytes.len());
            bytes[position] = value;
        }
        let _ = CertificateChain::decode(&bytes);
        let _ = CertificateChain::decode(&bytes[..cut.index(bytes.len())]);
        let _ = JoinToken::from_text(&checksummed_token_text(&bytes));
    }

    #[test]
    fn tampered_chain_never_verifies(
        (_token, chain, enrolled_at) in enrolled(),
        index in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        let mut bytes = chain.encode();
        let position = index.index(bytes.len());
        bytes[position] ^= flip;
        let accepted = CertificateChain::decode(&bytes)
            .map(|decoded| {
                decoded
                    .verify(&fleet(), &chain.node(), enrolled_at, &RevocationSet::new())
                    .is_ok()
            })
            .unwrap_or(false);
        prop_assert!(!accepted, "byte {} xor {:#04x} was accepted", position, flip);
    }

    #[test]
    fn tampered_token_payload_never_parses(
        (token, _chain, _at) in enrolled(),
        index in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        // Even with a recomputed checksum, a changed byte must fail the signature or key check.
        let text = token.to_text();
        let body = text[JOIN_TOKEN_PREFIX.len()..].to_ascii_uppercase();
        let data = data_encoding::BASE32_NOPAD.decode(body.as_bytes()).unwrap();
        let mut payload = data[..data.len() - 4].to_vec();
        let position = index.index(payload.len());
        payload[position] ^= flip;
        let parsed = JoinToken::from_text(&checksummed_token_text(&payload));
        prop_assert!(parsed.is_err(), "byte {} xor {:#04x} was accepted", position, flip);
    }
}
