//! Full collection of the captured Debian 12 tree (707 dpkg packages) in the shared fixtures.
//! The budget for a Debian host of about 700 packages is 150 ms of wall time.
//!
//! Run with `cargo bench -p fleetmesh-node --bench collect`.

// `criterion_group!` generates a public function without documentation.
#![allow(missing_docs)]

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use fleetmesh_node::collect::{collect, CollectOptions};

fn bench_collect(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/roots/debian12-container");
    if !root.is_dir() {
        println!("SKIPPED: fixture root {} not found", root.display());
        return;
    }
    let options = CollectOptions::new(root);
    c.bench_function("collect debian12-container", |b| {
        b.iter(|| collect(&options))
    });
}

criterion_group!(benches, bench_collect);
criterion_main!(benches);
