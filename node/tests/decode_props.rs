//! Property tests for the decoders that read what a peer sends: stream frames ([`read_frame`]),
//! the handshake ([`Hello::decode`]) and sync messages ([`Message::decode`]).
//!
//! Each decoder gets arbitrary input, round trips of valid values and mutated valid encodings
//! (bit flips, overwritten, inserted and deleted bytes, truncation and extension). None of them
//! may panic, and what they return must stay within their limits. A mutated message may still
//! decode, but every change in it that verifies must be one of the original changes. The unit
//! tests in `sync/message.rs` already cover message round trips, arbitrary bytes, mutations
//! without verification and truncation. This file adds the limits, the tail checks, bodies behind
//! every variant tag, verification of mutated changes, and the frame and hello decoders.
//!
//! Inputs that a random search does not find are built by hand. Small ones live as hex in
//! `tests/regressions/` and `regression_inputs_replay` decodes each of them with a time limit.
//! The DEFLATE bomb of `message_decode_rejects_deflate_bomb` is built in code, because it is 100 KB.
//! Each property runs few cases by default, so the file runs in seconds. Set `PROPTEST_CASES` for
//! a longer run. Proptest records the seeds of failing cases in
//! `tests/regressions/decode_props.txt` and replays them first.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT};
use ed25519_dalek::SigningKey;
use fleetmesh_model::{DocId, DocKind, NodeId, SignedChange, TenantId, CHANGE_INFLATED_LEN_MAX};
use fleetmesh_node::net::{read_frame, write_frame, FrameError, Hello, FRAME_LEN_MAX};
use fleetmesh_node::sync::recon::MAX_DEPTH;
use fleetmesh_node::sync::{ChainHead, Message, MessageError, MessageKind, Prefix, RangeEntry};
use futures::executor::block_on;
use futures::io::Cursor;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

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

fn tenant() -> impl Strategy<Value = TenantId> {
    "[a-z0-9._-]{1,64}".prop_map(|name| TenantId::new(&name).unwrap())
}

// Frames.

/// What [`read_frame`] must return for `stream` and `max`, as a plain function of the bytes.
#[derive(Debug, PartialEq)]
enum Expected {
    /// The stream ends before the length prefix.
    End,
    /// The announced length is over `max`.
    TooLarge { len: usize },
    /// The stream ends inside the payload.
    Truncated,
    /// One frame.
    Payload(Vec<u8>),
}

fn expected_frame(stream: &[u8], max: usize) -> Expected {
    if stream.is_empty() {
        return Expected::End;
    }
    let Some(prefix) = stream.get(..4) else {
        return Expected::Truncated;
    };
    let len = u32::from_be_bytes(prefix.try_into().unwrap()) as usize;
    if len > max {
        return Expected::TooLarge { len };
    }
    match stream.get(4..4 + len) {
        Some(payload) => Expected::Payload(payload.to_vec()),
        None => Expected::Truncated,
    }
}

fn read_one(stream: &[u8], max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut reader = Cursor::new(stream.to_vec());
    block_on(read_frame(&mut reader, max))
}

/// Checks one [`read_frame`] result against [`expected_frame`].
fn check_frame(stream: &[u8], max: usize) -> Result<(), TestCaseError> {
    let result = read_one(stream, max);
    match (expected_frame(stream, max), result) {
        (Expected::End, Ok(None)) => {}
        (
            Expected::TooLarge { len },
            Err(FrameError::TooLarge {
                len: found,
                max: limit,
            }),
        ) => {
            prop_assert_eq!((found, limit), (len, max));
        }
        (Expected::Truncated, Err(FrameError::Io(err))) => {
            prop_assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        }
        (Expected::Payload(payload), Ok(Some(found))) => {
            prop_assert!(found.len() <= max);
            prop_assert_eq!(found, payload);
        }
        (expected, found) => {
            prop_assert!(
                false,
                "expected {:?}, read_frame returned {:?}",
                expected,
                found
            );
        }
    }
    Ok(())
}

/// Generates a length prefix: random, or at and around the limit `max`.
fn length_prefix(max: usize) -> impl Strategy<Value = [u8; 4]> {
    prop_oneof![
        any::<[u8; 4]>(),
        (0..=max as u32 + 2).prop_map(u32::to_be_bytes),
        Just(u32::MAX.to_be_bytes()),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn frame_arbitrary_streams(
        (max, prefix) in (0..64usize).prop_flat_map(|max| (Just(max), length_prefix(max))),
        prefix_len in 0..=4usize,
        body in prop::collection::vec(any::<u8>(), 0..80),
    ) {
        let mut stream = prefix[..prefix_len].to_vec();
        if prefix_len == 4 {
            stream.extend_from_slice(&body);
        }
        check_frame(&stream, max)?;
    }

    #[test]
    fn frame_round_trip(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6)) {
        let mut stream = Vec::new();
        for payload in &payloads {
            block_on(write_frame(&mut stream, payload)).unwrap();
        }
        let max = payloads.iter().map(Vec::len).max().unwrap_or(0);
        let mut reader = Cursor::new(stream);
        for payload in &payloads {
            let read = block_on(read_frame(&mut reader, max)).unwrap();
            prop_assert_eq!(read.as_ref(), Some(payload));
        }
        prop_assert!(block_on(read_frame(&mut reader, max)).unwrap().is_none());
    }

    #[test]
    fn frame_stream_mutations(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 1..4),
        edits in mutations(),
        max in prop_oneof![0..120usize, Just(FRAME_LEN_MAX)],
    ) {
        let mut stream = Vec::new();
        for payload in &payloads {
            block_on(write_frame(&mut stream, payload)).unwrap();
        }
        let stream = mutate(&stream, &edits);

        // Read frame after frame, as the daemon does, and compare each read with the model.
        let mut offset = 0;
        loop {
            let rest = &stream[offset..];
            check_frame(rest, max)?;
            match expected_frame(rest, max) {
                Expected::Payload(payload) => offset += 4 + payload.len(),
                _ => break,
            }
        }
    }
}

#[test]
fn frame_limit_checked_before_payload() {
    // Announced lengths over the limit fail at once, before any payload is read.
    for len in [FRAME_LEN_MAX as u32 + 1, u32::MAX] {
        let result = read_one(&len.to_be_bytes(), FRAME_LEN_MAX);
        assert!(
            matches!(result, Err(FrameError::TooLarge { len: found, max }) if found == len as usize && max == FRAME_LEN_MAX),
            "length {len}: {result:?}"
        );
    }

    // At the limit, a missing payload is an I/O error, not a frame.
    let result = read_one(&(FRAME_LEN_MAX as u32).to_be_bytes(), FRAME_LEN_MAX);
    assert!(matches!(result, Err(FrameError::Io(_))), "{result:?}");
}

// Hellos.

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u16>(),
        ".{0,40}",
        ".{0,40}",
        prop::collection::vec(tenant(), 0..6),
        prop::collection::vec(any::<u8>(), 0..400),
    )
        .prop_map(|(version, fleet, site, tenants, credentials)| Hello {
            version,
            fleet,
            site,
            tenants,
            credentials,
        })
}

/// Returns the hello length limit, as the error for an oversized hello reports it.
fn hello_len_max() -> usize {
    match Hello::decode(&vec![0; 1 << 20]) {
        Err(FrameError::TooLarge { max, .. }) => max,
        other => panic!("a 1 MiB hello was not rejected as too large: {other:?}"),
    }
}

/// Checks that a decoded hello fits in the hello limit and that re-encoding does not make it
/// longer than what the peer sent.
fn check_decoded_hello(input: &[u8], decoded: &Hello) -> Result<(), TestCaseError> {
    let encoded = decoded.encode();
    prop_assert!(
        encoded.len() <= input.len(),
        "{} bytes re-encode to {}",
        input.len(),
        encoded.len()
    );
    prop_assert!(encoded.len() <= hello_len_max());
    for tenant in &decoded.tenants {
        prop_assert!(
            TenantId::new(tenant.as_str()).is_ok(),
            "invalid tenant {:?}",
            tenant
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn hello_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(decoded) = Hello::decode(&bytes) {
            check_decoded_hello(&bytes, &decoded)?;
        }
    }

    #[test]
    fn hello_round_trip(hello in hello()) {
        let bytes = hello.encode();
        let decoded = Hello::decode(&bytes);
        prop_assert!(decoded.is_ok(), "{:?}", decoded);
        prop_assert_eq!(decoded.unwrap(), hello);
    }

    #[test]
    fn hello_mutations(hello in hello(), edits in mutations()) {
        let bytes = mutate(&hello.encode(), &edits);
        if let Ok(decoded) = Hello::decode(&bytes) {
            check_decoded_hello(&bytes, &decoded)?;
        }
    }
}

#[test]
fn hello_trailing_bytes_rejected() {
    let hello = Hello {
        version: 1,
        fleet: "fleet1example".to_string(),
        site: "leeds".to_string(),
        tenants: vec![TenantId::new("acme").unwrap()],
        credentials: Vec::new(),
    };
    let mut bytes = hello.encode();
    bytes.push(0);

    let result = Hello::decode(&bytes);

    assert!(
        matches!(result, Err(FrameError::InvalidHello(_))),
        "{result:?}"
    );
}

#[test]
fn hello_limit_boundary() {
    let max = hello_len_max();
    let mut hello = Hello {
        version: 1,
        fleet: "fleet1example".to_string(),
        site: "leeds".to_string(),
        tenants: vec![TenantId::new("acme").unwrap()],
        credentials: Vec::new(),
    };
    // Grow the credentials until the encoding is exactly at the limit. Their length prefix grows
    // with them, so the last bytes are added one at a time.
    hello.credentials = vec![7; max - hello.encode().len() - 3];
    while hello.encode().len() < max {
        hello.credentials.push(7);
    }
    assert_eq!(hello.encode().len(), max);
    assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);

    hello.credentials.push(7);
    let result = Hello::decode(&hello.encode());
    assert!(
        matches!(result, Err(FrameError::TooLarge { len, max: limit }) if len == max + 1 && limit == max),
        "{result:?}"
    );
}

// Sync messages.

/// Returns signed changes of two nodes in two tenants: small ones, a compressed one (over
/// 256 bytes) and an unsigned copy, built once per test process.
fn sample_changes() -> &'static [SignedChange] {
    static CHANGES: OnceLock<Vec<SignedChange>> = OnceLock::new();
    CHANGES.get_or_init(|| {
        let mut changes = Vec::new();
        for (tenant, seed) in [("acme", 21u8), ("globex", 22)] {
            let key = SigningKey::from_bytes(&[seed; 32]);
            let node = NodeId(key.verifying_key().to_bytes());
            let doc = DocId::node(TenantId::new(tenant).unwrap(), node);
            let mut document = AutoCommit::new().with_actor(ActorId::from(node.0.to_vec()));
            let values = [
                "debian 12".to_string(),
                "openssl 3.0.15".to_string(),
                "fleetmesh ".repeat(60),
            ];
            for (i, value) in values.into_iter().enumerate() {
                document.put(ROOT, format!("fact{i}"), value).unwrap();
                document.commit();
                let mut change = document.get_last_local_change().unwrap();
                changes.push(SignedChange::sign(doc.clone(), &mut change, &key).unwrap());
            }
        }
        let unsigned = changes[0].with_signature(None);
        changes.push(unsigned);
        changes
    })
}

fn prefix() -> impl Strategy<Value = Prefix> {
    (0..=MAX_DEPTH, any::<u32>()).prop_map(|(depth, bits)| {
        let mask = (1u64 << (4 * u32::from(depth))) - 1;
        Prefix::new(depth, (u64::from(bits) & mask) as u32).unwrap()
    })
}

fn head(tenant: TenantId) -> impl Strategy<Value = ChainHead> {
    (
        prop_oneof![
            Just(DocKind::Node),
            Just(DocKind::Membership),
            Just(DocKind::Policy)
        ],
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(move |(kind, key, author, owned, seq)| ChainHead {
            doc: DocId {
                kind,
                tenant: tenant.clone(),
                key,
            },
            author: NodeId(if owned { key } else { author }),
            seq,
        })
}

fn heads() -> impl Strategy<Value = Vec<ChainHead>> {
    prop::collection::vec(
        tenant().prop_flat_map(|t| prop::collection::vec(head(t), 1..4)),
        0..4,
    )
    .prop_map(|groups| groups.into_iter().flatten().collect())
}

fn range_entry(tenant: TenantId) -> impl Strategy<Value = RangeEntry> {
    prop_oneof![
        (prefix(), any::<u128>(), any::<u64>()).prop_map(|(prefix, fingerprint, count)| {
            RangeEntry::Fingerprint {
                prefix,
                fingerprint,
                count,
            }
        }),
        (prefix(), prop::collection::vec(head(tenant), 0..4))
            .prop_map(|(prefix, heads)| RangeEntry::Items { prefix, heads }),
    ]
}

fn changes() -> impl Strategy<Value = Vec<SignedChange>> {
    prop::collection::vec(0..sample_changes().len(), 0..4).prop_map(|picks| {
        picks
            .into_iter()
            .map(|i| sample_changes()[i].clone())
            .collect()
    })
}

fn changes_nonempty() -> impl Strategy<Value = Vec<SignedChange>> {
    prop::collection::vec(0..sample_changes().len(), 1..4).prop_map(|picks| {
        picks
            .into_iter()
            .map(|i| sample_changes()[i].clone())
            .collect()
    })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (tenant(), any::<u128>(), any::<u64>()).prop_map(|(tenant, fingerprint, count)| {
            Message::Summary {
                tenant,
                fingerprint,
                count,
            }
        }),
        tenant().prop_flat_map(|tenant| {
            prop::collection::vec(range_entry(tenant.clone()), 0..5).prop_map(move |ranges| {
                Message::Ranges {
                    tenant: tenant.clone(),
                    ranges,
                }
            })
        }),
        changes().prop_map(Message::Changes),
        changes().prop_map(Message::Repair),
        heads().prop_map(|heads| Message::IHave { heads }),
        heads().prop_map(|wants| Message::Graft { wants }),
        heads().prop_map(|wants| Message::Request { wants }),
        Just(Message::Prune),
    ]
}

/// Returns the changes a message carries.
fn carried_changes(message: &Message) -> &[SignedChange] {
    match message {
        Message::Changes(changes) | Message::Repair(changes) => changes,
        _ => &[],
    }
}

/// Checks that a decoded message re-encodes to no more than the input, and that every change in
/// it that verifies is one of `originals` (same document, hash and signature).
fn check_decoded_message(
    input: &[u8],
    decoded: &Message,
    originals: &[SignedChange],
) -> Result<(), TestCaseError> {
    prop_assert!(
        decoded.encoded_len() <= input.len(),
        "{} bytes decode to a {:?} of {} bytes",
        input.len(),
        decoded.kind(),
        decoded.encoded_len()
    );
    for change in carried_changes(decoded) {
        if change.verify().is_ok() {
            let known = originals.iter().any(|original| {
                original.doc() == change.doc()
                    && original.hash() == change.hash()
                    && original.signature() == change.signature()
            });
            prop_assert!(known, "a changed change verified: {:?}", change);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn message_limit_is_exact(message in message()) {
        let bytes = message.encode();
        let len = bytes.len();
        let decoded = Message::decode(&bytes, len);
        prop_assert!(decoded.is_ok(), "{:?}", decoded);
        prop_assert_eq!(decoded.unwrap(), message);
        let result = Message::decode(&bytes, len - 1);
        prop_assert!(
            matches!(result, Err(MessageError::TooLarge { len: found, max }) if found == len && max == len - 1),
            "{:?}", result
        );
    }

    #[test]
    fn message_extension_fails(message in message(), tail in prop::collection::vec(any::<u8>(), 1..16)) {
        let mut bytes = message.encode();
        bytes.extend_from_slice(&tail);
        let result = Message::decode(&bytes, FRAME_LEN_MAX);
        prop_assert!(result.is_err(), "{} extra bytes after a {:?} decoded", tail.len(), message.kind());
    }

    #[test]
    fn message_bodies_behind_every_tag(
        tag in 0..9u8,
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        // Version 1, then a variant tag (8 is unknown), then arbitrary bytes.
        let mut bytes = vec![1, tag];
        bytes.extend_from_slice(&body);
        if let Ok(decoded) = Message::decode(&bytes, FRAME_LEN_MAX) {
            check_decoded_message(&bytes, &decoded, &[])?;
        }
    }

    #[test]
    fn message_mutations_never_forge(
        message in prop_oneof![
            1 => message(),
            // Most mutations of a change fail to decode, so changes get extra weight.
            2 => changes_nonempty().prop_map(Message::Changes),
            1 => changes_nonempty().prop_map(Message::Repair),
        ],
        edits in mutations(),
    ) {
        let bytes = mutate(&message.encode(), &edits);
        if let Ok(decoded) = Message::decode(&bytes, FRAME_LEN_MAX) {
            check_decoded_message(&bytes, &decoded, carried_changes(&message))?;
        }
    }
}

#[test]
fn message_each_kind_at_limit() {
    let acme = TenantId::new("acme").unwrap();
    let head = ChainHead {
        doc: DocId::node(acme.clone(), NodeId([4; 32])),
        author: NodeId([4; 32]),
        seq: 9,
    };
    let samples = [
        Message::Summary {
            tenant: acme.clone(),
            fingerprint: 5,
            count: 6,
        },
        Message::Ranges {
            tenant: acme.clone(),
            ranges: vec![RangeEntry::Items {
                prefix: Prefix::ROOT,
                heads: vec![head.clone()],
            }],
        },
        Message::Changes(sample_changes().to_vec()),
        Message::Repair(sample_changes().to_vec()),
        Message::IHave {
            heads: vec![head.clone()],
        },
        Message::Graft {
            wants: vec![head.clone()],
        },
        Message::Request { wants: vec![head] },
        Message::Prune,
    ];
    let kinds: Vec<MessageKind> = samples.iter().map(Message::kind).collect();
    assert_eq!(
        kinds,
        MessageKind::ALL,
        "one sample per kind, in wire order"
    );

    for message in samples {
        let bytes = message.encode();
        let len = bytes.len();
        assert_eq!(Message::decode(&bytes, len).unwrap(), message);
        assert!(
            matches!(
                Message::decode(&bytes, len - 1),
                Err(MessageError::TooLarge { .. })
            ),
            "{:?} of {len} bytes passed a limit of {} bytes",
            message.kind(),
            len - 1
        );
    }
}

#[test]
fn message_near_frame_limit_decodes() {
    // An announcement of as many chains as fit in the largest frame.
    let acme = TenantId::new("acme").unwrap();
    let head = |i: u32| {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        ChainHead {
            doc: DocId::node(acme.clone(), NodeId(key)),
            author: NodeId(key),
            seq: 1,
        }
    };
    let one = Message::IHave {
        heads: vec![head(0)],
    }
    .encoded_len();
    let two = Message::IHave {
        heads: vec![head(0), head(1)],
    }
    .encoded_len();
    let count = (FRAME_LEN_MAX - one) / (two - one);
    let message = Message::IHave {
        heads: (0..count as u32).map(head).collect(),
    };
    let bytes = message.encode();
    assert!(bytes.len() <= FRAME_LEN_MAX, "{} bytes", bytes.len());
    assert!(bytes.len() > FRAME_LEN_MAX - 64, "{} bytes", bytes.len());

    assert_eq!(Message::decode(&bytes, FRAME_LEN_MAX).unwrap(), message);
    let mut longer = bytes;
    longer.resize(FRAME_LEN_MAX + 1, 0);
    assert!(matches!(
        Message::decode(&longer, FRAME_LEN_MAX),
        Err(MessageError::TooLarge { .. })
    ));
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

/// Builds a compressed automerge change chunk of about `inflated_len / 160` bytes that inflates
/// to a valid change of at least `inflated_len` bytes: an empty change whose commit message is
/// all zero bytes. The checksum is left zero, because automerge does not check it here.
fn deflate_bomb_change(inflated_len: usize) -> Vec<u8> {
    let repeats = inflated_len / 258 + 1;
    let zeros = 1 + 258 * repeats;

    // No dependencies, a 32-byte actor, seq 1, start op 1, time 0, a message of `zeros - 2` zero
    // bytes, then the zero bytes "no other actors" and "no columns".
    let mut body = vec![0, 32];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[1, 1, 0]);
    write_uleb((zeros - 2) as u64, &mut body);

    let mut deflate = FixedDeflate::new();
    body.iter().for_each(|byte| deflate.literal(*byte));
    deflate.literal(0);
    (0..repeats).for_each(|_| deflate.repeat_258());
    let compressed = deflate.finish();

    // Magic bytes, checksum, chunk type 2 (compressed change), length, DEFLATE data.
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    write_uleb(compressed.len() as u64, &mut chunk);
    chunk.extend_from_slice(&compressed);
    chunk
}

/// Wraps one unsigned change of node `[7; 32]` in tenant `acme` into a `Changes` message.
fn changes_message(change: &[u8]) -> Vec<u8> {
    let doc = DocId::node(TenantId::new("acme").unwrap(), NodeId([7; 32])).to_bytes();
    // Version 1, variant tag 2 (changes), one change: document id, change bytes, no signature.
    let mut message = vec![1, 2, 1];
    write_uleb(doc.len() as u64, &mut message);
    message.extend_from_slice(&doc);
    write_uleb(change.len() as u64, &mut message);
    message.extend_from_slice(change);
    message.push(0);
    message
}

#[test]
fn message_decode_rejects_deflate_bomb() {
    let inflated_len = CHANGE_INFLATED_LEN_MAX + 1;
    let bytes = changes_message(&deflate_bomb_change(inflated_len));
    assert!(bytes.len() < FRAME_LEN_MAX / 16, "{} bytes", bytes.len());

    let result = Message::decode(&bytes, FRAME_LEN_MAX);
    assert!(
        result.is_err(),
        "a message of {} bytes with a change that inflates to over {inflated_len} bytes was \
         accepted. Inflate changes with a size limit before decoding them.",
        bytes.len()
    );
}

/// Decodes `bytes` with `decode` on another thread and waits at most [`DECODE_TIMEOUT`]. The
/// thread of a decoder that hangs keeps running until the test process exits.
fn decode_with_timeout(name: &str, bytes: Vec<u8>, decode: fn(Vec<u8>) -> bool) -> bool {
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

fn decode_message(bytes: Vec<u8>) -> bool {
    Message::decode(&bytes, FRAME_LEN_MAX).is_ok()
}

fn decode_hello(bytes: Vec<u8>) -> bool {
    Hello::decode(&bytes).is_ok()
}

fn decode_frame(bytes: Vec<u8>) -> bool {
    read_one(&bytes, FRAME_LEN_MAX).is_ok()
}

/// Replays every regression input through the decoder its file name starts with (`message-`,
/// `hello-`, `frame-`). Each must return, without a panic, within the timeout.
#[test]
fn regression_inputs_replay() {
    let inputs = regression_inputs();
    assert!(!inputs.is_empty(), "no regression inputs found");
    for (path, bytes) in inputs {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let decode: fn(Vec<u8>) -> bool = match name.split('-').next() {
            Some("message") => decode_message,
            Some("hello") => decode_hello,
            Some("frame") => decode_frame,
            _ => panic!("{name}: the file name does not start with a decoder name"),
        };
        decode_with_timeout(&name, bytes, decode);
    }
}
