//! Fleet query benchmarks over a synthetic 10,000-node fleet.
//!
//! The fleet is built once. One realistic node document is materialized with
//! `apply_node_change`: it has the packages of the shared Debian 12 fixture root when that is
//! beside the checkout, else a generated list of the same size. Its rows are then copied inside
//! SQLite for the other nodes, with versions varied per node. The benchmarks:
//!
//! - `fleet_query/old_openssl_10k_nodes`: "nodes with openssl older than 3.0.13" through
//!   `run_query` on a read-only connection, as `fleetmesh query` runs it (budget 50 ms);
//! - `apply_change/package_upgrade`: materializing one package upgrade of one node, inside an
//!   open transaction, as the store does for each change (budget 5 ms);
//! - `apply_change/package_upgrade_with_commit`: the same plus the commit, in WAL mode with
//!   `synchronous = FULL` as the store runs it;
//! - `apply_change/package_upgrade_fact_changes`: the part of `package_upgrade` that finds
//!   what the change did to the facts, for its rows in the `changes` table.
//!
//! Run with `cargo bench -p fleetmesh-node --bench query`. Building the fleet takes a while
//! and writes a database of about 1 GB to the temporary directory.

// criterion_group! defines a public function without documentation.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fleetmesh_model::facts::Package;
use fleetmesh_model::{Facts, Identity, NodeDocument, NodeId, TenantId};
use fleetmesh_node::query::{open_read_only, run_query, QueryOptions};
use fleetmesh_node::store::materialize::{apply_node_change, create_tables};
use rusqlite::{params, Connection};

const FLEET_SIZE: u32 = 10_000;
const T0: i64 = 1_700_000_000;

/// openssl versions given to the nodes in turn. The first two are older than 3.0.13.
const OPENSSL_VERSIONS: [&str; 5] = [
    "3.0.11-1~deb12u2",
    "3.0.13-1~deb11u1~rc1",
    "3.0.13-1~deb12u1",
    "3.0.15-1~deb12u1",
    "3.0.19-1~deb12u2",
];

const OLD_OPENSSL_QUERY: &str = "
    SELECT n.hostname, n.site, p.full_version
    FROM packages p JOIN nodes n USING (node_id)
    WHERE p.name = 'openssl' AND deb_version_cmp(p.full_version, '3.0.13') < 0";

fn fixture_status() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/roots/debian12-container/var/lib/dpkg/status")
}

/// Installed packages from a dpkg status file: name, version, architecture, source.
fn read_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields = BTreeMap::new();
        for line in stanza.lines().filter(|line| !line.starts_with(' ')) {
            if let Some((name, value)) = line.split_once(": ") {
                fields.insert(name, value.trim());
            }
        }
        let installed = fields
            .get("Status")
            .is_some_and(|s| s.ends_with(" installed"));
        let (Some(name), Some(version), true) =
            (fields.get("Package"), fields.get("Version"), installed)
        else {
            continue;
        };
        let (epoch, version) = match version.split_once(':') {
            Some((epoch, rest)) if epoch.bytes().all(|b| b.is_ascii_digit()) => {
                (epoch.parse().ok(), rest)
            }
            _ => (None, *version),
        };
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            epoch,
            arch: fields.get("Architecture").map(|a| a.to_string()),
            source: fields
                .get("Source")
                .and_then(|s| s.split(' ').next())
                .map(str::to_string),
            manager: "dpkg".to_string(),
            ..Package::default()
        });
    }
    out
}

/// A generated list of the size of a Debian server's, for when the fixture is absent.
fn generated_packages() -> Vec<Package> {
    let mut out: Vec<Package> = (0..700)
        .map(|i| Package {
            name: format!("lib{i}-common"),
            version: format!("{}.{}.{}-{}", i % 7, i % 13, i % 31, 1 + i % 3),
            arch: Some(if i % 5 == 0 { "all" } else { "amd64" }.to_string()),
            manager: "dpkg".to_string(),
            ..Package::default()
        })
        .collect();
    out.push(Package {
        name: "openssl".to_string(),
        version: OPENSSL_VERSIONS[4].to_string(),
        arch: Some("amd64".to_string()),
        manager: "dpkg".to_string(),
        ..Package::default()
    });
    out
}

fn base_packages() -> (Vec<Package>, &'static str) {
    match std::fs::read_to_string(fixture_status()) {
        Ok(text) => (read_dpkg_status(&text), "debian12-container dpkg status"),
        Err(_) => (
            generated_packages(),
            "generated list (fixture root not found)",
        ),
    }
}

/// The node whose document the benchmarks change.
struct MeasuredNode {
    doc: NodeDocument,
    identity: Identity,
    facts: Facts,
}

impl MeasuredNode {
    fn new(packages: &[Package]) -> MeasuredNode {
        let node = NodeId([0; 32]);
        let identity = Identity {
            node_id: node.to_string(),
            tenant: "acme".to_string(),
            site: "site-0".to_string(),
            hostname: "host-00000".to_string(),
            agent_version: "0.1.0".to_string(),
        };
        let mut facts = Facts::default();
        facts.system.hostname = identity.hostname.clone();
        facts.os.pretty_name = Some("Debian GNU/Linux 12 (bookworm)".to_string());
        for package in packages {
            facts.packages.insert(package.key(), package.clone());
        }
        let tenant = TenantId::new("acme").expect("valid tenant name");
        MeasuredNode {
            doc: NodeDocument::new(tenant, node),
            identity,
            facts,
        }
    }

    /// Changes the version of one package in the document and returns the heads before.
    fn upgrade(&mut self, key: &str, round: u64) -> Vec<fleetmesh_model::ChangeHash> {
        let before = self.doc.heads();
        if let Some(package) = self.facts.packages.get_mut(key) {
            package.version = format!("3.0.{}-1~deb12u1", 20 + round);
        }
        let time = T0 + 1 + i64::try_from(round).unwrap_or(0);
        self.doc
            .record(&self.identity, &self.facts, time)
            .expect("record an upgrade");
        before
    }
}

/// Builds the fleet database in `dir` and returns the writer connection.
fn build_fleet(dir: &Path, node: &mut MeasuredNode) -> Connection {
    let path = dir.join("fleetmesh.db");
    let mut conn = Connection::open(&path).expect("create database");
    create_tables(&conn).expect("create fact tables");

    // Bulk load without a journal, with a large cache and the name index built at the end.
    // The store's settings apply again before anything is measured.
    conn.execute_batch(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -1048576;
         DROP INDEX packages_by_name;",
    )
    .expect("bulk load settings");

    // The template node, materialized the way the store does it.
    node.doc
        .record(&node.identity, &node.facts, T0)
        .expect("record the template node");
    let tx = conn.transaction().expect("begin");
    apply_node_change(&tx, &mut node.doc, &[], T0).expect("materialize the template node");
    tx.commit().expect("commit");

    // Copies of its rows for the rest of the fleet, with varied versions.
    let template = node.identity.node_id.clone();
    let tx = conn.transaction().expect("begin");
    {
        let mut copy_node = tx
            .prepare(
                "INSERT INTO nodes (node_id, tenant, site, hostname, os_id, os_pretty_name,
                                    package_count, last_change, last_heard, connected)
                 SELECT ?2, tenant, ?3, ?4, 'debian', os_pretty_name, package_count, ?5, ?5, 0
                 FROM nodes WHERE node_id = ?1",
            )
            .expect("prepare node copy");
        let mut copy_packages = tx
            .prepare(
                "INSERT INTO packages (node_id, key, name, version, release, epoch, arch, source,
                                       manager, full_version, install_time)
                 SELECT ?2, key, name, v, release, epoch, arch, source, manager,
                        CASE WHEN epoch IS NULL THEN v ELSE epoch || ':' || v END, install_time
                 FROM (SELECT *, CASE
                         WHEN name = 'openssl' THEN ?3
                         WHEN (length(name) + ?4) % 9 = 0 THEN version || '+b' || (?4 % 4)
                         ELSE version END AS v
                       FROM packages WHERE node_id = ?1)",
            )
            .expect("prepare package copy");
        for index in 1..FLEET_SIZE {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&index.to_be_bytes());
            let id = NodeId(key).to_string();
            let site = format!("site-{}", index % 40);
            let hostname = format!("host-{index:05}");
            let openssl = OPENSSL_VERSIONS[index as usize % OPENSSL_VERSIONS.len()];
            copy_node
                .execute(params![template, id, site, hostname, T0])
                .expect("copy node row");
            copy_packages
                .execute(params![template, id, openssl, index])
                .expect("copy package rows");
        }
    }
    tx.commit().expect("commit fleet");

    create_tables(&conn).expect("recreate the name index");
    conn.execute_batch(
        "ANALYZE; PRAGMA cache_size = -2000; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;",
    )
    .expect("store settings");
    conn
}

fn benches(c: &mut Criterion) {
    let (packages, source) = base_packages();
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut node = MeasuredNode::new(&packages);

    let started = Instant::now();
    let mut writer = build_fleet(dir.path(), &mut node);
    let rows: i64 = writer
        .query_row("SELECT count(*) FROM packages", [], |row| row.get(0))
        .expect("count");
    println!(
        "fleet: {FLEET_SIZE} nodes, {rows} package rows from {} packages per node ({source}), built in {:.1} s",
        packages.len(),
        started.elapsed().as_secs_f64()
    );

    // (a) The fleet query, as `fleetmesh query` runs it.
    let reader = open_read_only(&dir.path().join("fleetmesh.db")).expect("open read-only");
    let options = QueryOptions {
        timeout: Duration::from_secs(10),
        row_limit: 100_000,
    };
    let matched = run_query(&reader, OLD_OPENSSL_QUERY, &options)
        .expect("fleet query")
        .rows
        .len();
    println!("fleet query matches {matched} nodes");
    let mut group = c.benchmark_group("fleet_query");
    group.sample_size(30);
    group.bench_function("old_openssl_10k_nodes", |b| {
        b.iter(|| run_query(&reader, OLD_OPENSSL_QUERY, &options).expect("fleet query"))
    });
    group.finish();

    // (b) One node's package upgrade applied to the tables.
    let key = node
        .facts
        .packages
        .keys()
        .find(|key| key.starts_with("openssl"))
        .cloned()
        .unwrap_or_else(|| "openssl:amd64".to_string());
    let mut round = 0u64;
    let mut group = c.benchmark_group("apply_change");
    group.bench_function("package_upgrade", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                round += 1;
                let before = node.upgrade(&key, round);
                let tx = writer.transaction().expect("begin");
                let start = Instant::now();
                apply_node_change(&tx, &mut node.doc, &before, T0 + 1).expect("apply");
                total += start.elapsed();
                tx.commit().expect("commit");
            }
            total
        })
    });
    group.bench_function("package_upgrade_with_commit", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                round += 1;
                let before = node.upgrade(&key, round);
                let start = Instant::now();
                let tx = writer.transaction().expect("begin");
                apply_node_change(&tx, &mut node.doc, &before, T0 + 1).expect("apply");
                tx.commit().expect("commit");
                total += start.elapsed();
            }
            total
        })
    });
    // A fresh copy of the node upgrades a different package each round, as a real machine
    // does, so that no key collects the thousands of versions the benchmarks above give openssl.
    let mut fresh = MeasuredNode::new(&packages);
    fresh
        .doc
        .record(&fresh.identity, &fresh.facts, T0)
        .expect("record the fresh node");
    let keys: Vec<String> = fresh.facts.packages.keys().cloned().collect();
    group.bench_function("package_upgrade_fact_changes", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                round += 1;
                let key = &keys[usize::try_from(round).unwrap_or(0) % keys.len()];
                let before = fresh.upgrade(key, round);
                let heads = fresh.doc.heads();
                let start = Instant::now();
                let facts = fresh
                    .doc
                    .fact_changes(&before, &heads)
                    .expect("fact changes");
                total += start.elapsed();
                assert_eq!(facts.len(), 1, "one upgrade is one fact");
            }
            total
        })
    });
    group.finish();
}

criterion_group!(query_benches, benches);
criterion_main!(query_benches);
