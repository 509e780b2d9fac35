//! Policy evaluation on one node: the cost a node pays after each collection.
//!
//! The store contains 1,000 nodes. One of them is the shared Debian 12 fixture root, collected and
//! materialized as the daemon does it; the others are copies of its package rows. The benchmarks:
//!
//! - `policy/copy_own_rows`: `node_fact_tables`, the private in-memory copy of one node's rows
//!   that checks run on;
//! - `policy/evaluate_two_checks`: the copy plus two checks, the sshd `PermitRootLogin` check of
//!   docs/policies.md and a package version check.
//!
//! Run with `cargo bench -p fleetmesh-node --bench policy`. It skips when the fixture root is not
//! beside the checkout.

// criterion_group! defines a public function without documentation.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use fleetmesh_model::policy::{Check, Policy, Severity};
use fleetmesh_model::{Identity, NodeDocument, NodeId, TenantId};
use fleetmesh_node::collect::{collect, CollectOptions};
use fleetmesh_node::policy::{evaluate, node_fact_tables};
use fleetmesh_node::store::materialize::{apply_node_change, create_tables};
use rusqlite::{params, Connection};

const OTHER_NODES: u32 = 999;
const T0: i64 = 1_700_000_000;

fn checks() -> BTreeMap<String, Policy> {
    let policy = Policy {
        name: "baseline-security".to_string(),
        description: String::new(),
        checks: vec![
            Check {
                name: "permit-root-login".to_string(),
                severity: Severity::High,
                description: "PermitRootLogin must be no".to_string(),
                query: "SELECT path, config_value(content, 'PermitRootLogin') AS value
                        FROM tracked_files WHERE path = '/etc/ssh/sshd_config'
                        AND coalesce(config_value(content, 'PermitRootLogin'), '') <> 'no'"
                    .to_string(),
            },
            Check {
                name: "openssl-current".to_string(),
                severity: Severity::Critical,
                description: "openssl must be 3.0.13 or newer".to_string(),
                query: "SELECT name, full_version FROM packages
                        WHERE name = 'openssl' AND deb_version_cmp(full_version, '3.0.13') < 0"
                    .to_string(),
            },
        ],
    };
    BTreeMap::from([(policy.name.clone(), policy)])
}

fn bench_policy(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/roots/debian12-container");
    if !root.is_dir() {
        println!("SKIPPED: fixture root {} not found", root.display());
        return;
    }
    let facts = collect(&CollectOptions::new(root));
    let node = NodeId([1; 32]);
    let identity = Identity {
        node_id: node.to_string(),
        tenant: "acme".to_string(),
        site: "york".to_string(),
        hostname: facts.system.hostname.clone(),
        agent_version: "bench".to_string(),
    };
    let tenant = TenantId::new("acme").expect("valid tenant name");
    let mut doc = NodeDocument::new(tenant, node);
    doc.record(&identity, &facts, T0)
        .expect("record the collection");

    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("fleetmesh.db");
    let mut conn = Connection::open(&db).expect("create database");
    create_tables(&conn).expect("fact tables");
    let tx = conn.transaction().expect("begin");
    apply_node_change(&tx, &mut doc, &[], T0).expect("materialize");
    for index in 0..OTHER_NODES {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&index.to_be_bytes());
        tx.execute(
            "INSERT INTO packages SELECT ?2, key, name, version, release, epoch, arch, source,
                 manager, full_version, install_time FROM packages WHERE node_id = ?1",
            params![node.to_string(), NodeId(key).to_string()],
        )
        .expect("copy packages");
    }
    tx.commit().expect("commit");
    println!(
        "store: {} nodes, {} packages on the evaluated node",
        OTHER_NODES + 1,
        facts.packages.len()
    );

    let policies = checks();
    let node_text = node.to_string();
    let results = evaluate(&node_fact_tables(&db, &node_text).expect("copy"), &policies);
    for (key, result) in &results {
        println!(
            "{key}: {} ({} rows)",
            result.status.as_str(),
            result.failing_count
        );
    }

    let mut group = c.benchmark_group("policy");
    group.bench_function("copy_own_rows", |b| {
        b.iter(|| node_fact_tables(&db, &node_text).expect("copy"))
    });
    group.bench_function("evaluate_two_checks", |b| {
        b.iter(|| evaluate(&node_fact_tables(&db, &node_text).expect("copy"), &policies))
    });
    group.finish();
}

criterion_group!(benches, bench_policy);
criterion_main!(benches);
