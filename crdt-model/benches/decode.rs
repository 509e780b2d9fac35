//! Decoding of signed changes: a first collection of 700 packages (a compressed change), one
//! package upgrade (an uncompressed change), and with `DECODE_BENCH_BOMBS=1` the rejection of
//! the op-count bomb of `tests/regressions/` and of a DEFLATE bomb.
//!
//! Run with `DECODE_BENCH_BOMBS=1 cargo bench -p fleetmesh-model --bench decode`.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed benchmark")]
#![allow(missing_docs, reason = "criterion generates the entry point")]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ed25519_dalek::SigningKey;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use fleetmesh_model::facts::Package;
use fleetmesh_model::{
    DocId, Facts, Identity, NodeDocument, NodeId, SignedChange, TenantId, CHANGE_INFLATED_LEN_MAX,
};

fn identity(node: NodeId) -> Identity {
    Identity {
        node_id: node.to_string(),
        tenant: "acme".to_string(),
        site: "leeds".to_string(),
        hostname: "web01".to_string(),
        agent_version: "0.1.0".to_string(),
    }
}

fn facts(packages: usize, upgraded: Option<usize>) -> Facts {
    let mut facts = Facts::default();
    facts.system.hostname = "web01".to_string();
    facts.os.id = Some("debian".to_string());
    facts.packages = (0..packages)
        .map(|i| {
            let patch = if upgraded == Some(i) { 1 } else { 0 };
            let package = Package {
                name: format!("package-{i:04}"),
                version: format!("1.{i}.{patch}-1"),
                arch: Some("amd64".to_string()),
                source: Some(format!("source-{}", i / 3)),
                manager: "dpkg".to_string(),
                ..Package::default()
            };
            (package.key(), package)
        })
        .collect::<BTreeMap<_, _>>();
    facts
}

/// Returns the first collection of 700 packages and the upgrade of one of them, signed.
fn changes() -> (SignedChange, SignedChange) {
    let key = SigningKey::from_bytes(&[3; 32]);
    let node = NodeId(key.verifying_key().to_bytes());
    let mut doc = NodeDocument::new(TenantId::new("acme").unwrap(), node);
    let first = doc
        .record_signed(&identity(node), &facts(700, None), 1_700_000_000, &key)
        .unwrap()
        .unwrap();
    let upgrade = doc
        .record_signed(&identity(node), &facts(700, Some(350)), 1_700_000_060, &key)
        .unwrap()
        .unwrap();
    (first, upgrade)
}

fn regression_input(name: &str) -> Option<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/regressions")
        .join(name);
    let text = std::fs::read_to_string(path).ok()?;
    let digits: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .collect();
    hex::decode(digits).ok()
}

/// Builds a compressed change chunk that inflates to just over [`CHANGE_INFLATED_LEN_MAX`]: an
/// empty change whose commit message is all zero bytes. The checksum is left zero.
fn deflate_bomb() -> Vec<u8> {
    let message_len = CHANGE_INFLATED_LEN_MAX;
    let mut body = vec![0, 32];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[1, 1, 0]);
    write_uleb(message_len as u64, &mut body);
    body.resize(body.len() + message_len, 0);
    body.extend_from_slice(&[0, 0]);

    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(&body).unwrap();
    let compressed = encoder.finish().unwrap();

    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    write_uleb(compressed.len() as u64, &mut chunk);
    chunk.extend_from_slice(&compressed);
    chunk
}

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

fn decode(c: &mut Criterion) {
    let (first, upgrade) = changes();
    let doc = first.doc().clone();
    let first_change = first.to_change().unwrap();
    println!(
        "first collection: {} bytes ({} inflated, {} operations), upgrade: {} bytes",
        first.bytes().len(),
        first_change.raw_bytes().len(),
        first_change.len(),
        upgrade.bytes().len()
    );

    for (name, change) in [
        ("decode_700_packages", &first),
        ("decode_upgrade", &upgrade),
    ] {
        c.bench_function(name, |b| {
            b.iter_batched(
                || change.bytes().to_vec(),
                |bytes| SignedChange::decode(doc.clone(), bytes, None).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    c.bench_function("to_change_700_packages", |b| {
        b.iter(|| first.to_change().unwrap())
    });

    // The bombs hang an unguarded decoder, so they run only when the guard is in place.
    if std::env::var_os("DECODE_BENCH_BOMBS").is_some() {
        let bomb = regression_input("change-op-count-bomb.hex").unwrap();
        let node_doc = DocId::node(TenantId::new("acme").unwrap(), NodeId([7; 32]));
        c.bench_function("decode_op_count_bomb", |b| {
            b.iter_batched(
                || bomb.clone(),
                |bytes| SignedChange::decode(node_doc.clone(), bytes, None).unwrap_err(),
                BatchSize::SmallInput,
            )
        });

        let deflate_bomb = deflate_bomb();
        println!("deflate bomb: {} bytes", deflate_bomb.len());
        c.bench_function("decode_deflate_bomb", |b| {
            b.iter_batched(
                || deflate_bomb.clone(),
                |bytes| SignedChange::decode(node_doc.clone(), bytes, None).unwrap_err(),
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, decode);
criterion_main!(benches);
