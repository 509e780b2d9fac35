//! Measures what history retention saves on disk.
//!
//! One node with 707 packages records a year of history: three package upgrades a day, one
//! change per day. The store is then measured (after `VACUUM`, so free pages do not count) as
//! it is, after deleting the `changes` rows older than 90 days, and after also compacting the
//! signed changes older than 90 days.
//!
//! Run: `cargo run -p fleetmesh-node --release --example retention_size [DAYS]`

use std::error::Error;
use std::path::Path;

use ed25519_dalek::SigningKey;
use fleetmesh_model::facts::Package;
use fleetmesh_model::{DocId, Facts, Identity, NodeId, TenantId};
use fleetmesh_node::store::Store;

const T0: i64 = 1_700_000_000;
const DAY: i64 = 86_400;
const PACKAGES: usize = 707;
const UPGRADES_PER_DAY: usize = 3;
const WINDOW_DAYS: i64 = 90;

fn facts(versions: &[u32]) -> Facts {
    let mut facts = Facts::default();
    facts.system.hostname = "pos-01".to_string();
    for (index, release) in versions.iter().enumerate() {
        facts.packages.insert(
            format!("lib{index:04}:amd64"),
            Package {
                name: format!("lib{index:04}"),
                version: format!("{}.{}.{index}-{release}", index % 7, index % 13),
                arch: Some("amd64".to_string()),
                source: Some(format!("src{:04}", index / 3)),
                manager: "dpkg".to_string(),
                ..Package::default()
            },
        );
    }
    facts
}

/// Prints one table row: the store's size after `VACUUM`, the signed changes and their data,
/// the snapshot size and the `changes` rows.
fn measure(store: &Store, label: &str) -> Result<(), Box<dyn Error>> {
    let conn = store.connection();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    let (changes, change_bytes): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(length(bytes)), 0) FROM signed_changes",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let history_rows: i64 = conn.query_row("SELECT COUNT(*) FROM changes", [], |row| row.get(0))?;
    let snapshot: i64 = conn.query_row(
        "SELECT COALESCE(SUM(length(snapshot)), 0) FROM documents",
        [],
        |row| row.get(0),
    )?;
    println!(
        "| {label} | {:.0} KiB | {changes} | {:.0} KiB | {:.0} KiB | {history_rows} |",
        (pages * page_size) as f64 / 1024.0,
        change_bytes as f64 / 1024.0,
        snapshot as f64 / 1024.0,
    );
    Ok(())
}

fn run(dir: &Path, days: i64) -> Result<(), Box<dyn Error>> {
    let key = SigningKey::from_bytes(&[3; 32]);
    let node = NodeId(key.verifying_key().to_bytes());
    let doc = DocId::node(TenantId::new("acme")?, node);
    let identity = Identity {
        node_id: node.to_string(),
        tenant: "acme".to_string(),
        site: "branch-1".to_string(),
        hostname: "pos-01".to_string(),
        agent_version: "example".to_string(),
    };
    let mut store = Store::open(dir)?;
    let mut versions = vec![1u32; PACKAGES];
    store.record_local(&doc, &identity, &facts(&versions), T0, &key)?;
    let mut next = 0usize;
    for day in 1..=days {
        for _ in 0..UPGRADES_PER_DAY {
            versions[next % PACKAGES] += 1;
            next += 7;
        }
        store.record_local(&doc, &identity, &facts(&versions), T0 + day * DAY, &key)?;
    }
    // A daemon saves a snapshot at shutdown; do the same so that every row is covered.
    store.flush_snapshots()?;

    println!(
        "{days} days, {UPGRADES_PER_DAY} upgrades a day, {PACKAGES} packages, window {WINDOW_DAYS} days\n"
    );
    println!("| store | size | signed changes | change data | snapshot | history rows |");
    println!("| --- | --- | --- | --- | --- | --- |");
    measure(&store, "no retention")?;
    let cutoff = T0 + (days - WINDOW_DAYS) * DAY;
    store.prune_history(cutoff)?;
    measure(&store, "history rows pruned")?;
    let done = store.compact_changes(cutoff, usize::MAX - 1)?;
    measure(&store, "and signed changes compacted")?;
    println!(
        "\ncompacted {} changes, {} bytes of change data",
        done.changes, done.bytes
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let days = match std::env::args().nth(1) {
        None => 365,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|days| *days > WINDOW_DAYS)
            .ok_or_else(|| {
                format!("DAYS must be a whole number above {WINDOW_DAYS}, not {text:?}")
            })?,
    };
    let dir = tempfile::tempdir()?;
    run(dir.path(), days)
}
