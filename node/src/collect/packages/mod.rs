//! Installed packages of every package manager found under the root: dpkg, rpm (SQLite, NDB
//! and Berkeley DB databases, read natively without the `rpm` binary), apk and pacman.
//!
//! Error facts name the manager (`packages.dpkg`, `packages.rpm`, ...). A database that is
//! partly corrupt still yields the packages that could be read.

pub mod apk;
pub mod bdb;
pub mod dpkg;
pub mod ndb;
pub mod pacman;
pub mod rpm;

use std::collections::BTreeMap;

use fleetmesh_model::facts::Package;
use fleetmesh_model::Facts;

use super::context::Context;

/// Collects the packages of every manager into `facts.packages`.
pub fn collect(ctx: &Context, facts: &mut Facts) {
    let mut packages = BTreeMap::new();
    dpkg::collect(ctx, facts, &mut packages);
    rpm::collect(ctx, facts, &mut packages);
    apk::collect(ctx, facts, &mut packages);
    pacman::collect(ctx, facts, &mut packages);
    facts.packages = packages;
}

/// Adds packages under their [`Package::key`]; a later duplicate of a key replaces the earlier.
pub fn insert_all(target: &mut BTreeMap<String, Package>, packages: Vec<Package>) {
    for package in packages {
        target.insert(package.key(), package);
    }
}
