//! Property tests for every decoder of network input in fleetmesh-model: document ids, signed
//! changes (raw automerge bytes and the wire form), certificate chains, revocations, join token
//! text and fleet id text.
//!
//! Each decoder gets three kinds of input. Arbitrary bytes must give an error or a value within
//! the decoder's limits, without a panic. Valid values must survive a round trip. Mutated valid
//! encodings (bit flips, overwritten, inserted and deleted bytes, truncation and extension) must
//! not panic either, and a mutated signed record that still verifies must mean exactly what the
//! original meant. `membership_props.rs` already contains the basic round trips of chains, tokens
//! and root-signed revocations, arbitrary bytes for their decoders and single-byte tampering. This
//! file adds the rest.
//!
//! Inputs that a random search does not find are built by hand. Small ones live as hex in
//! `tests/regressions/` and `regression_inputs_replay` decodes each of them with a time limit.
//! The DEFLATE bomb of `change_decode_rejects_deflate_bomb` is built in code, because it is 100 KB.
//! Each property runs few cases by default, so the file runs in seconds. Set `PROPTEST_CASES` for
//! a longer run. Proptest records the seeds of failing cases in
//! `tests/regressions/decode_props.txt` and replays them first.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ScalarValue, ROOT};
use ed25519_dalek::SigningKey;
use fleetmesh_model::ids::NAME_LEN_MAX;
use fleetmesh_model::membership::{
    CertificateChain, FleetId, JoinToken, Revocation, RevocationTarget, Role, Scope,
    SignedRevocation, TokenId, TokenValidity, CHAIN_LEN_MAX, REASON_LEN_MAX, REVOCATION_LEN_MAX,
    TENANTS_MAX,
};
use fleetmesh_model::{
    DocId, DocKind, NodeId, SignedChange, TenantId, VerifyError, WireChange,
    CHANGE_INFLATED_LEN_MAX, CHANGE_OPS_MAX,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

const NOW: i64 = 1_750_000_000;
const DAY: i64 = 86_400;

/// Where proptest stores the seeds of failing cases, relative to the crate root (the working
/// directory of `cargo test`).
const FAILURE_SEEDS: &str = "tests/regressions/decode_props.txt";

/// Time a regression input may take to decode before the test calls it a hang. Every decoder
/// here returns within milliseconds for an input of a few hundred bytes.
const DECODE_TIMEOUT: Duration = Duration::from_secs(20);

/// Returns a config with `default_cases` cases, unless `PROPTEST_CASES` sets another count.
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(FAILURE_SEEDS))),
        ..ProptestConfig::default()
    }
}

// Mutations of valid encodings.

/// One edit of an encoded value.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit { at: Index, bit: u8 },
    SetByte { at: Index, value: u8 },
    Insert { at: Index, bytes: Vec<u8> },
    Delete { at: Index, len: usize },
    Truncate { at: Index },
    Extend { bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes = || prop::collection::vec(any::<u8>(), 1..16);
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        1 => (any::<Index>(), bytes()).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<Index>(), 1..16usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        1 => bytes().prop_map(|bytes| Mutation::Extend { bytes }),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

/// Applies `edits` in order. Edits that need a byte to point at do nothing on empty input.
fn mutate(bytes: &[u8], edits: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for edit in edits {
        if out.is_empty() && !matches!(edit, Mutation::Insert { .. } | Mutation::Extend { .. }) {
            continue;
        }
        match edit {
            Mutation::FlipBit { at, bit } => {
                let position = at.index(out.len());
                out[position] ^= 1 << bit;
            }
            Mutation::SetByte { at, value } => {
                let position = at.index(out.len());
                out[position] = *value;
            }
            Mutation::Insert { at, bytes } => {
                let position = at.index(out.len() + 1);
                out.splice(position..position, bytes.iter().copied());
            }
            Mutation::Delete { at, len } => {
                let start = at.index(out.len());
                let end = (start + len).min(out.len());
                out.drain(start..end);
            }
            Mutation::Truncate { at } => out.truncate(at.index(out.len())),
            Mutation::Extend { bytes } => out.extend_from_slice(bytes),
        }
    }
    out
}

// Shared values.

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

fn acme() -> TenantId {
    TenantId::new("acme").unwrap()
}

fn tenant_name() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,64}"
}

fn doc_kind() -> impl Strategy<Value = DocKind> {
    prop_oneof![
        Just(DocKind::Node),
        Just(DocKind::Membership),
        Just(DocKind::Policy)
    ]
}

// Document ids.

fn doc_id() -> impl Strategy<Value = DocId> {
    (doc_kind(), tenant_name(), any::<[u8; 32]>()).prop_map(|(kind, tenant, key)| DocId {
        kind,
        tenant: TenantId::new(&tenant).unwrap(),
        key,
    })
}

/// Generates bytes shaped like a document id: a kind tag, a length byte, name-like bytes and a
/// key, each of them sometimes out of range.
fn doc_id_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        0..4u8,
        0..80u8,
        prop::collection::vec(
            prop_oneof![Just(b'a'), Just(b'.'), Just(b'A'), any::<u8>()],
            0..80,
        ),
        prop::collection::vec(any::<u8>(), 28..36),
    )
        .prop_map(|(kind, len, name, key)| {
            let mut bytes = vec![kind, len];
            bytes.extend_from_slice(&name);
            bytes.extend_from_slice(&key);
            bytes
        })
}

/// Checks what a decoded document id promises: a valid tenant and one encoding per id.
fn check_decoded_doc_id(input: &[u8], decoded: &DocId) -> Result<(), TestCaseError> {
    prop_assert!(decoded.tenant.as_str().len() <= NAME_LEN_MAX);
    prop_assert!(TenantId::new(decoded.tenant.as_str()).is_ok());
    prop_assert_eq!(
        decoded.to_bytes(),
        input.to_vec(),
        "{:?} has two encodings",
        decoded
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn doc_id_arbitrary_bytes(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..120), doc_id_like_bytes()],
    ) {
        if let Ok(decoded) = DocId::from_bytes(&bytes) {
            check_decoded_doc_id(&bytes, &decoded)?;
        }
    }

    #[test]
    fn doc_id_round_trip(id in doc_id()) {
        prop_assert_eq!(DocId::from_bytes(&id.to_bytes()), Ok(id));
    }

    #[test]
    fn doc_id_mutations(id in doc_id(), edits in mutations()) {
        let bytes = mutate(&id.to_bytes(), &edits);
        if let Ok(decoded) = DocId::from_bytes(&bytes) {
            check_decoded_doc_id(&bytes, &decoded)?;
        }
    }

    #[test]
    fn doc_id_truncation_and_extension_fail(
        id in doc_id(),
        cut in any::<Index>(),
        tail in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let bytes = id.to_bytes();
        let len = cut.index(bytes.len());
        prop_assert!(DocId::from_bytes(&bytes[..len]).is_err(), "prefix of {} bytes", len);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&tail);
        prop_assert!(DocId::from_bytes(&longer).is_err(), "{} extra bytes", tail.len());
    }
}

// Signed changes.

/// One edit of a document, turned into automerge operations by [`build_change`].
#[derive(Clone, Debug)]
enum Edit {
    Put {
        key: u8,
        value: ScalarValue,
    },
    /// A string long enough that automerge compresses the change (over 256 bytes).
    LongText {
        key: u8,
        repeat: usize,
    },
    /// A list with this many elements.
    List {
        key: u8,
        len: u8,
    },
    /// Deletes key `k0`, which every document starts with.
    Delete,
}

fn scalar() -> impl Strategy<Value = ScalarValue> {
    prop_oneof![
        any::<i64>().prop_map(ScalarValue::Int),
        any::<u64>().prop_map(ScalarValue::Uint),
        any::<bool>().prop_map(ScalarValue::Boolean),
        ".{0,24}".prop_map(|text| ScalarValue::Str(text.into())),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(ScalarValue::Bytes),
        Just(ScalarValue::Null),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (0..6u8, scalar()).prop_map(|(key, value)| Edit::Put { key, value }),
        1 => (0..6u8, 40..400usize).prop_map(|(key, repeat)| Edit::LongText { key, repeat }),
        1 => (0..6u8, 0..20u8).prop_map(|(key, len)| Edit::List { key, len }),
        1 => Just(Edit::Delete),
    ]
}

/// The inputs of one signed change: the author's key seed, the document kind and the edits.
#[derive(Clone, Debug)]
struct ChangeSpec {
    seed: u8,
    kind: DocKind,
    edits: Vec<Edit>,
}

fn change_spec() -> impl Strategy<Value = ChangeSpec> {
    (2..=255u8, doc_kind(), prop::collection::vec(edit(), 1..8))
        .prop_map(|(seed, kind, edits)| ChangeSpec { seed, kind, edits })
}

/// Builds and signs one change of a document in tenant `acme`. A node document belongs to the
/// author, so the change verifies.
fn build_change(spec: &ChangeSpec) -> SignedChange {
    let key = key(spec.seed);
    let author = node_of(&key);
    let mut document = AutoCommit::new().with_actor(ActorId::from(author.0.to_vec()));
    // A first value, so every change below has at least one operation and a deletion has a target.
    document.put(ROOT, "k0", 0).unwrap();

    for edit in &spec.edits {
        match edit {
            Edit::Put { key, value } => document.put(ROOT, format!("k{key}"), value.clone()),
            Edit::LongText { key, repeat } => {
                document.put(ROOT, format!("k{key}"), "fleetmesh ".repeat(*repeat))
            }
            Edit::List { key, len } => {
                let list = document
                    .put_object(ROOT, format!("k{key}"), ObjType::List)
                    .unwrap();
                (0..usize::from(*len)).try_for_each(|i| document.insert(&list, i, i as i64))
            }
            Edit::Delete => document.delete(ROOT, "k0"),
        }
        .unwrap();
    }
    document.commit();
    let mut change = document.get_last_local_change().unwrap();

    let doc = match spec.kind {
        DocKind::Node => DocId::node(acme(), author),
        kind => DocId::tenant_doc(kind, acme()),
    };
    SignedChange::sign(doc, &mut change, &key).unwrap()
}

fn wire_bytes(change: &SignedChange) -> Vec<u8> {
    postcard::to_stdvec(&change.to_wire()).unwrap()
}

fn decode_wire(bytes: &[u8]) -> Option<SignedChange> {
    let wire: WireChange = postcard::from_bytes(bytes).ok()?;
    wire.into_signed().ok()
}

/// Generates bytes shaped like an automerge chunk: magic bytes, a checksum, a chunk type
/// (document, change, compressed change, bundle or unknown), a length and a random body.
fn chunk_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<[u8; 4]>(),
        0..5u8,
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
    )
        .prop_map(|(checksum, kind, body, exact_len)| {
            let mut bytes = vec![0x85, 0x6f, 0x4a, 0x83];
            bytes.extend_from_slice(&checksum);
            bytes.push(kind);
            let len = if exact_len {
                body.len()
            } else {
                body.len() / 2
            };
            write_uleb(len as u64, &mut bytes);
            bytes.extend_from_slice(&body);
            bytes
        })
}

/// Checks that a mutated change that verifies means what `original` means: same document,
/// author, sequence number, change hash and signature.
///
/// NOTE: This compares meaning, not bytes, because different bytes can carry the same change
/// hash. Automerge 0.12 does not check the 4 checksum bytes of a change chunk when it decodes a
/// single change, so a copy with other checksum bytes keeps the hash, and the signature over the
/// hash still verifies. For a compressed chunk, the hash covers the inflated change.
fn check_same_change(decoded: &SignedChange, original: &SignedChange) -> Result<(), TestCaseError> {
    prop_assert_eq!(decoded.doc(), original.doc());
    prop_assert_eq!(decoded.author(), original.author());
    prop_assert_eq!(decoded.seq(), original.seq());
    prop_assert_eq!(decoded.hash(), original.hash());
    prop_assert_eq!(decoded.signature(), original.signature());
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn change_arbitrary_bytes(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), chunk_like_bytes()],
        signature in any::<Option<[u8; 32]>>(),
    ) {
        let signature = signature.map(|half| {
            let mut full = [0u8; 64];
            full[..32].copy_from_slice(&half);
            full
        });
        let doc = DocId::node(acme(), NodeId([3; 32]));
        if let Ok(decoded) = SignedChange::decode(doc, bytes.clone(), signature) {
            prop_assert_eq!(decoded.bytes(), bytes.as_slice());
            prop_assert!(decoded.verify().is_err(), "random bytes verified");
        }
        if let Some(decoded) = decode_wire(&bytes) {
            prop_assert!(decoded.wire_len() <= bytes.len());
        }
    }

    #[test]
    fn change_wire_round_trip(spec in change_spec()) {
        let change = build_change(&spec);
        prop_assert!(change.verify().is_ok(), "{:?}", change.verify());

        let bytes = wire_bytes(&change);
        prop_assert_eq!(bytes.len(), change.wire_len());
        let decoded = decode_wire(&bytes);
        prop_assert_eq!(decoded.as_ref(), Some(&change));
        prop_assert!(decoded.unwrap().verify().is_ok());

        let raw = SignedChange::decode(change.doc().clone(), change.bytes().to_vec(), change.signature().copied());
        prop_assert_eq!(raw.ok(), Some(change));
    }

    #[test]
    fn change_byte_mutations(spec in change_spec(), edits in mutations()) {
        let change = build_change(&spec);
        let bytes = mutate(change.bytes(), &edits);
        let decoded = SignedChange::decode(change.doc().clone(), bytes.clone(), change.signature().copied());
        if let Ok(decoded) = decoded {
            prop_assert_eq!(decoded.bytes(), bytes.as_slice());
            prop_assert!(decoded.to_change().is_ok(), "decoded once, failed the second time");
            if decoded.verify().is_ok() {
                check_same_change(&decoded, &change)?;
            }
        }
    }

    #[test]
    fn change_wire_mutations(spec in change_spec(), edits in mutations()) {
        let change = build_change(&spec);
        let bytes = mutate(&wire_bytes(&change), &edits);
        if let Some(decoded) = decode_wire(&bytes) {
            prop_assert!(decoded.wire_len() <= bytes.len());
            if decoded.verify().is_ok() {
                check_same_change(&decoded, &change)?;
            }
        }
    }
}

// Certificate chains.

fn token_for(scope: Scope, seed: u64) -> JoinToken {
    let validity = TokenValidity {
        not_before: NOW - DAY,
        expires: NOW + DAY,
        certificate_expires: NOW + 365 * DAY,
    };
    JoinToken::create(&root(), scope, validity, &mut StdRng::seed_from_u64(seed)).unwrap()
}

/// Generates the chain of node `node_seed`, enrolled in `acme` as a node or as an operator
/// with a few further tenants.
fn chain() -> impl Strategy<Value = (CertificateChain, NodeId)> {
    (
        2..=255u8,
        any::<u64>(),
        any::<bool>(),
        prop::collection::vec(tenant_name(), 0..4),
    )
        .prop_map(|(node_seed, token_seed, operator, tenants)| {
            let (role, tenants) = if operator {
                let tenants = tenants.iter().map(|t| TenantId::new(t).unwrap()).collect();
                (Role::Operator, tenants)
            } else {
                (Role::Node, Vec::new())
            };
            let scope = Scope::new(acme(), "leeds", role, tenants).unwrap();
            let node = node_of(&key(node_seed));
            let chain = token_for(scope, token_seed).enroll(node, NOW).unwrap();
            (chain, node)
        })
}

/// Checks the limits that a decoded chain promises, whether or not it verifies.
fn check_decoded_chain(chain: &CertificateChain) -> Result<(), TestCaseError> {
    prop_assert!(chain.encode().len() <= CHAIN_LEN_MAX);
    for scope in [&chain.enrollment().scope, &chain.certificate().scope] {
        prop_assert!(scope.tenants.len() <= TENANTS_MAX);
        prop_assert!(scope.role == Role::Operator || scope.tenants.is_empty());
        prop_assert!(!scope.site.is_empty() && scope.site.len() <= NAME_LEN_MAX);
    }
    let validity = chain.enrollment().validity;
    prop_assert!(validity.not_before < validity.expires);
    prop_assert!(validity.expires <= validity.certificate_expires);
    Ok(())
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn chain_mutations_never_forge((chain, node) in chain(), edits in mutations()) {
        let bytes = mutate(&chain.encode(), &edits);
        if let Ok(decoded) = CertificateChain::decode(&bytes) {
            check_decoded_chain(&decoded)?;
            let verified = decoded.verify(&fleet(), &node, NOW, &Default::default());
            if verified.is_ok() {
                prop_assert_eq!(&decoded, &chain, "a changed chain verified");
            }
            // A thief may present the chain under the node id it names, not only the original.
            if decoded.verify(&fleet(), &decoded.node(), NOW, &Default::default()).is_ok() {
                prop_assert_eq!(&decoded, &chain, "a changed chain verified for its own node");
            }
        }
    }

    #[test]
    fn chain_truncation_and_extension_fail(
        (chain, _node) in chain(),
        cut in any::<Index>(),
        tail in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let bytes = chain.encode();
        let len = cut.index(bytes.len());
        prop_assert!(CertificateChain::decode(&bytes[..len]).is_err(), "prefix of {} bytes", len);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&tail);
        prop_assert!(CertificateChain::decode(&longer).is_err(), "{} extra bytes", tail.len());
    }
}

// Revocations.

/// Returns an operator of `acme` (node key seed 200) and its chain.
fn operator() -> &'static (SigningKey, CertificateChain) {
    static OPERATOR: OnceLock<(SigningKey, CertificateChain)> = OnceLock::new();
    OPERATOR.get_or_init(|| {
        let scope = Scope::new(acme(), "noc", Role::Operator, vec![]).unwrap();
        let operator_key = key(200);
        let chain = token_for(scope, 7)
            .enroll(node_of(&operator_key), NOW)
            .unwrap();
        (operator_key, chain)
    })
}

/// Generates a revocation signed by the fleet root or by the operator of [`operator`].
fn signed_revocation() -> impl Strategy<Value = SignedRevocation> {
    (
        any::<bool>(),
        any::<[u8; 32]>(),
        any::<[u8; 16]>(),
        any::<i64>(),
        any::<bool>(),
        "[^\\p{Cc}]{0,40}",
        0..DAY,
    )
        .prop_map(
            |(by_root, node, token, enrolled_after, by_token, reason, offset)| {
                let target = if by_token {
                    RevocationTarget::Token {
                        token_id: TokenId(token),
                        enrolled_after,
                    }
                } else {
                    RevocationTarget::Node(NodeId(node))
                };
                let (issuer_key, issuer_chain) = if by_root {
                    (root(), None)
                } else {
                    let (operator_key, chain) = operator();
                    (operator_key.clone(), Some(chain.clone()))
                };
                let record = Revocation {
                    tenant: acme(),
                    target,
                    reason,
                    issued_at: NOW + offset,
                    issuer: node_of(&issuer_key),
                };
                SignedRevocation::sign(record, &issuer_key, issuer_chain).unwrap()
            },
        )
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn revocation_round_trip_verifies(revocation in signed_revocation()) {
        let bytes = revocation.encode();
        prop_assert!(bytes.len() <= REVOCATION_LEN_MAX);
        let decoded = SignedRevocation::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded, &revocation);
        prop_assert!(decoded.verify(&fleet()).is_ok(), "{:?}", decoded.verify(&fleet()));
        prop_assert_eq!(decoded.id(), revocation.id());
    }

    #[test]
    fn revocation_mutations_never_forge(revocation in signed_revocation(), edits in mutations()) {
        let bytes = mutate(&revocation.encode(), &edits);
        if let Ok(decoded) = SignedRevocation::decode(&bytes) {
            let reason = &decoded.revocation().reason;
            prop_assert!(reason.len() <= REASON_LEN_MAX);
            prop_assert!(!reason.chars().any(char::is_control));
            if let Some(chain) = decoded.issuer_chain() {
                check_decoded_chain(chain)?;
            }
            if decoded.verify(&fleet()).is_ok() {
                prop_assert_eq!(&decoded, &revocation, "a changed revocation verified");
            }
        }
    }

    #[test]
    fn revocation_truncation_and_extension_fail(
        revocation in signed_revocation(),
        cut in any::<Index>(),
        tail in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let bytes = revocation.encode();
        let len = cut.index(bytes.len());
        prop_assert!(SignedRevocation::decode(&bytes[..len]).is_err(), "prefix of {} bytes", len);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&tail);
        prop_assert!(SignedRevocation::decode(&longer).is_err(), "{} extra bytes", tail.len());
    }
}

// Join token and fleet id text.

/// One edit of a text form.
#[derive(Clone, Debug)]
enum TextEdit {
    Replace { at: Index, with: char },
    Insert { at: Index, text: String },
    Delete { at: Index, len: usize },
    Truncate { at: Index },
    Append { text: String },
    Uppercase,
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    let char_like = prop_oneof![
        prop::char::range('a', 'z'),
        prop::char::range('2', '7'),
        Just(' '),
        Just('\n'),
        Just('0'),
        any::<char>(),
    ];
    prop_oneof![
        3 => (any::<Index>(), char_like).prop_map(|(at, with)| TextEdit::Replace { at, with }),
        1 => (any::<Index>(), "[a-z2-7 \n]{1,8}").prop_map(|(at, text)| TextEdit::Insert { at, text }),
        1 => (any::<Index>(), 1..8usize).prop_map(|(at, len)| TextEdit::Delete { at, len }),
        1 => any::<Index>().prop_map(|at| TextEdit::Truncate { at }),
        1 => "[a-z2-7]{1,8}".prop_map(|text| TextEdit::Append { text }),
        1 => Just(TextEdit::Uppercase),
    ]
}

/// Applies `edits` to `text` by characters, so the result stays a valid string.
fn edit_text(text: &str, edits: &[TextEdit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        let needs_char = !matches!(
            edit,
            TextEdit::Insert { .. } | TextEdit::Append { .. } | TextEdit::Uppercase
        );
        if chars.is_empty() && needs_char {
            continue;
        }
        match edit {
            TextEdit::Replace { at, with } => {
                let position = at.index(chars.len());
                chars[position] = *with;
            }
            TextEdit::Insert { at, text } => {
                let position = at.index(chars.len() + 1);
                chars.splice(position..position, text.chars());
            }
            TextEdit::Delete { at, len } => {
                let start = at.index(chars.len());
                let end = (start + len).min(chars.len());
                chars.drain(start..end);
            }
            TextEdit::Truncate { at } => chars.truncate(at.index(chars.len())),
            TextEdit::Append { text } => chars.extend(text.chars()),
            TextEdit::Uppercase => chars = chars.iter().flat_map(|c| c.to_uppercase()).collect(),
        }
    }
    chars.into_iter().collect()
}

fn text_edits() -> impl Strategy<Value = Vec<TextEdit>> {
    prop::collection::vec(text_edit(), 1..4)
}

/// Returns one node token and one operator token of `acme`.
fn tokens() -> &'static [JoinToken; 2] {
    static TOKENS: OnceLock<[JoinToken; 2]> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let node = Scope::new(acme(), "leeds", Role::Node, vec![]).unwrap();
        let tenants = vec![
            TenantId::new("globex").unwrap(),
            TenantId::new("initech").unwrap(),
        ];
        let operator = Scope::new(acme(), "noc", Role::Operator, tenants).unwrap();
        [token_for(node, 11), token_for(operator, 12)]
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn token_text_edits_never_change_token(which in 0..2usize, edits in text_edits()) {
        let token = &tokens()[which];
        let text = edit_text(&token.to_text(), &edits);
        if let Ok(parsed) = JoinToken::from_text(&text) {
            // Case and whitespace do not count, so an edit may leave the same token.
            prop_assert_eq!(parsed.enrollment(), token.enrollment());
            prop_assert_eq!(parsed.to_text(), token.to_text());
        }
    }

    #[test]
    fn fleet_id_text_edits_never_change_id(bytes in any::<[u8; 32]>(), edits in text_edits()) {
        let fleet = FleetId(bytes);
        let text = edit_text(&fleet.to_string(), &edits);
        if let Ok(parsed) = text.parse::<FleetId>() {
            prop_assert_eq!(parsed, fleet, "{:?} parsed as another fleet", text);
        }
    }
}

// Inputs that need more than a random search: oversized work hidden in a small input.

fn write_uleb(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Wraps an automerge chunk body: magic bytes, checksum, chunk type, length, body.
fn automerge_chunk(chunk_type: u8, body: &[u8], checksum: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0x85, 0x6f, 0x4a, 0x83];
    out.extend_from_slice(&checksum);
    out.push(chunk_type);
    write_uleb(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// A writer of a raw DEFLATE stream (RFC 1951) with one block of fixed Huffman codes.
struct FixedDeflate {
    out: Vec<u8>,
    bits: u64,
    bit_count: u32,
}

impl FixedDeflate {
    fn new() -> FixedDeflate {
        let mut writer = FixedDeflate {
            out: Vec::new(),
            bits: 0,
            bit_count: 0,
        };
        writer.write_bits(1, 1); // BFINAL: the only block
        writer.write_bits(1, 2); // BTYPE 01: fixed Huffman codes
        writer
    }

    fn write_bits(&mut self, value: u64, count: u32) {
        self.bits |= value << self.bit_count;
        self.bit_count += count;
        while self.bit_count >= 8 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.bit_count -= 8;
        }
    }

    /// Writes a Huffman code, which DEFLATE packs starting from its most significant bit.
    fn write_code(&mut self, code: u64, len: u32) {
        let reversed = (0..len).fold(0, |acc, i| acc | (((code >> i) & 1) << (len - 1 - i)));
        self.write_bits(reversed, len);
    }

    fn literal(&mut self, byte: u8) {
        match byte {
            0..=143 => self.write_code(0x30 + u64::from(byte), 8),
            _ => self.write_code(0x190 + u64::from(byte - 144), 9),
        }
    }

    /// Repeats the previous byte 258 times: length code 285, distance code 0 (distance 1).
    fn repeat_258(&mut self) {
        self.write_code(0xc5, 8);
        self.write_code(0, 5);
    }

    fn finish(mut self) -> Vec<u8> {
        self.write_code(0, 7); // end of block
        if self.bit_count > 0 {
            self.out.push(self.bits as u8);
        }
        self.out
    }
}

/// Builds a compressed change chunk of about `inflated_len / 160` bytes that inflates to a
/// valid change of `inflated_len` bytes or a little more: an empty change whose commit message
/// is all zero bytes.
fn deflate_bomb_change(inflated_len: usize) -> Vec<u8> {
    let repeats = inflated_len / 258 + 1;
    let zeros = 1 + 258 * repeats;

    // The change body: no dependencies, a 32-byte actor, seq 1, start op 1, time 0, a message
    // of `zeros - 2` zero bytes, then the two zero bytes "no other actors" and "no columns".
    let mut prefix = vec![0, 32];
    prefix.extend_from_slice(&[7; 32]);
    prefix.extend_from_slice(&[1, 1, 0]);
    write_uleb((zeros - 2) as u64, &mut prefix);

    let mut deflate = FixedDeflate::new();
    prefix.iter().for_each(|byte| deflate.literal(*byte));
    deflate.literal(0);
    (0..repeats).for_each(|_| deflate.repeat_258());
    let compressed = deflate.finish();

    // Automerge stores the checksum of the inflated change chunk in the compressed chunk.
    let mut hasher = Sha256::new();
    hasher.update([1]);
    let mut len_bytes = Vec::new();
    write_uleb((prefix.len() + zeros) as u64, &mut len_bytes);
    hasher.update(&len_bytes);
    hasher.update(&prefix);
    let zero_block = vec![0u8; 1 << 16];
    let mut left = zeros;
    while left > 0 {
        let take = left.min(zero_block.len());
        hasher.update(&zero_block[..take]);
        left -= take;
    }
    let digest = hasher.finalize();
    automerge_chunk(2, &compressed, [digest[0], digest[1], digest[2], digest[3]])
}

#[test]
fn change_decode_rejects_deflate_bomb() {
    let bytes = deflate_bomb_change(CHANGE_INFLATED_LEN_MAX + 1);
    let len = bytes.len();
    let doc = DocId::node(acme(), NodeId([7; 32]));

    let decoded = SignedChange::decode(doc, bytes, None);

    let inflated = decoded
        .as_ref()
        .ok()
        .and_then(|change| change.to_change().ok())
        .map(|change| change.raw_bytes().len());
    assert!(
        decoded.is_err(),
        "a compressed change of {len} bytes inflated to {inflated:?} bytes and was accepted. \
         Inflate changes with a size limit before decoding them."
    );
    let message = decoded.unwrap_err().to_string();
    assert!(message.contains("CHANGE_INFLATED_LEN_MAX"), "{message}");
}

/// A compressed change under the inflate limit still decodes: the limit, not the compression,
/// rejects the bomb.
#[test]
fn change_decode_accepts_compressed_under_limit() {
    let bytes = deflate_bomb_change(1 << 20);
    let doc = DocId::node(acme(), NodeId([7; 32]));

    let decoded = SignedChange::decode(doc, bytes, None).unwrap();

    let change = decoded.to_change().unwrap();
    assert!(change.raw_bytes().len() > 1 << 20);
    assert_eq!(change.hash(), decoded.hash());
}

/// A signed compressed change keeps its hash through decoding, because the signature covers
/// the hash.
#[test]
fn change_decode_keeps_hash_of_compressed_change() {
    let spec = ChangeSpec {
        seed: 9,
        kind: DocKind::Node,
        edits: vec![Edit::LongText {
            key: 1,
            repeat: 200,
        }],
    };
    let change = build_change(&spec);
    // Automerge compresses a change chunk over 256 bytes: chunk type 2.
    assert_eq!(change.bytes()[8], 2, "the change is not compressed");

    let decoded = SignedChange::decode(
        change.doc().clone(),
        change.bytes().to_vec(),
        change.signature().copied(),
    )
    .unwrap();

    assert_eq!(decoded.hash(), change.hash());
    assert!(decoded.verify().is_ok(), "{:?}", decoded.verify());
    assert_eq!(decoded.to_change().unwrap().hash(), change.hash());
}

/// Builds a change chunk whose columns claim `ops` operations in a few bytes, each a put of
/// null at key "a" of the root map: every column is a single run of `ops` rows.
fn op_count_change(ops: u64) -> Vec<u8> {
    let run = |value: &[u8]| {
        let mut column = Vec::new();
        write_sleb(ops as i64, &mut column);
        column.extend_from_slice(value);
        column
    };
    let key = run(&[1, b'a']);
    let action = run(&[1]);
    let value_meta = run(&[0]);
    let pred_count = run(&[0]);
    let mut insert = Vec::new();
    write_uleb(ops, &mut insert);

    // No dependencies, a 32-byte actor, seq 1, start op 1, time 0, no message, no other actors.
    let mut body = vec![0, 32];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[1, 1, 0, 0, 0]);
    // Column specs (id << 4 | type) in their normal order, with lengths, then the data.
    let columns = [
        (0x15, key),
        (0x34, insert),
        (0x42, action),
        (0x56, value_meta),
        (0x70, pred_count),
    ];
    write_uleb(columns.len() as u64, &mut body);
    for (spec, data) in &columns {
        write_uleb(*spec, &mut body);
        write_uleb(data.len() as u64, &mut body);
    }
    for (_, data) in &columns {
        body.extend_from_slice(data);
    }

    let mut hasher = Sha256::new();
    hasher.update([1]);
    let mut len_bytes = Vec::new();
    write_uleb(body.len() as u64, &mut len_bytes);
    hasher.update(&len_bytes);
    hasher.update(&body);
    let digest = hasher.finalize();
    automerge_chunk(1, &body, [digest[0], digest[1], digest[2], digest[3]])
}

fn write_sleb(mut value: i64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let sign_bit_clear = byte & 0x40 == 0;
        if (value == 0 && sign_bit_clear) || (value == -1 && !sign_bit_clear) {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn decode_ops_change(bytes: Vec<u8>) -> Result<usize, VerifyError> {
    let decoded = SignedChange::decode(DocId::node(acme(), NodeId([7; 32])), bytes, None)?;
    Ok(decoded.to_change()?.len())
}

#[test]
fn change_decode_rejects_ops_over_limit() {
    let bytes = op_count_change(CHANGE_OPS_MAX + 1);
    assert!(bytes.len() < 120, "{} bytes", bytes.len());

    let result = decode_with_timeout("a change over CHANGE_OPS_MAX", bytes, decode_ops_change);

    let message = result.unwrap_err().to_string();
    assert!(message.contains("CHANGE_OPS_MAX"), "{message}");
}

/// The op-count bomb of `tests/regressions/` claims 2^62 operations in 114 bytes.
#[test]
fn change_op_count_bomb_rejected_by_limit() {
    let (_, bytes) = regression_inputs()
        .into_iter()
        .find(|(path, _)| path.ends_with("change-op-count-bomb.hex"))
        .expect("tests/regressions/change-op-count-bomb.hex is missing");

    let result = decode_with_timeout("the op-count bomb", bytes, decode_ops_change);

    let message = result.unwrap_err().to_string();
    assert!(message.contains("CHANGE_OPS_MAX"), "{message}");
}

/// The same construction with fewer operations decodes, so the limit is what rejects it.
#[test]
fn change_decode_accepts_ops_under_limit() {
    let bytes = op_count_change(1000);

    let result = decode_with_timeout("a change of 1000 operations", bytes, decode_ops_change);

    assert_eq!(result, Ok(1000));
}

/// Decodes `bytes` with `decode` on another thread and waits at most [`DECODE_TIMEOUT`]. The
/// thread of a decoder that hangs keeps running until the test process exits.
fn decode_with_timeout<T: Send + 'static>(
    name: &str,
    bytes: Vec<u8>,
    decode: fn(Vec<u8>) -> T,
) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        // The receiver is gone only if the test already failed.
        let _ = sender.send(decode(bytes));
    });
    match receiver.recv_timeout(DECODE_TIMEOUT) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "decoding {name} timed out after {DECODE_TIMEOUT:?}, so the decoder does work out \
             of proportion to its input"
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("decoding {name} panicked"),
    }
}

/// Returns the regression inputs: `tests/regressions/*.hex`, ignoring whitespace and lines that
/// start with `#`.
fn regression_inputs() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "hex"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let digits: String = text
                .lines()
                .filter(|line| !line.trim_start().starts_with('#'))
                .flat_map(str::split_whitespace)
                .collect();
            let bytes = hex::decode(&digits)
                .unwrap_or_else(|err| panic!("{} is not hex: {err}", path.display()));
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

fn decode_change(bytes: Vec<u8>) -> bool {
    SignedChange::decode(DocId::node(acme(), NodeId([7; 32])), bytes, None).is_ok()
}

fn decode_chain(bytes: Vec<u8>) -> bool {
    CertificateChain::decode(&bytes).is_ok()
}

fn decode_revocation(bytes: Vec<u8>) -> bool {
    SignedRevocation::decode(&bytes).is_ok()
}

fn decode_doc_id(bytes: Vec<u8>) -> bool {
    DocId::from_bytes(&bytes).is_ok()
}

/// Replays every regression input through the decoder its file name starts with (`change-`,
/// `chain-`, `revocation-`, `doc-id-`). Each must return, without a panic, within the timeout.
#[test]
fn regression_inputs_replay() {
    let inputs = regression_inputs();
    assert!(!inputs.is_empty(), "no regression inputs found");
    for (path, bytes) in inputs {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let decode: fn(Vec<u8>) -> bool = match name.split('-').next() {
            Some("change") => decode_change,
            Some("chain") => decode_chain,
            Some("revocation") => decode_revocation,
            Some("doc") => decode_doc_id,
            _ => panic!("{name}: the file name does not start with a decoder name"),
        };
        decode_with_timeout(&name, bytes, decode);
    }
}
