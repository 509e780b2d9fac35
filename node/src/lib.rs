//! fleetmesh-node: everything a fleetmesh node runs.
//!
//! - [`sync`]: the sans-IO sync engine that replicates signed changes;
//! - [`store`]: the SQLite store of changes, documents and materialized fact tables;
//! - [`collect`]: collectors that read a machine's configuration under a root directory;
//! - [`net`]: the libp2p transport and the tokio task that drives the engine;
//! - [`policy`]: policy files and their evaluation against one node's facts;
//! - [`daemon`]: the running node (`fleetmesh up`).

pub mod collect;
pub mod daemon;
pub mod fleetkey;
pub mod keyfile;
pub mod membership;
pub mod net;
pub mod policy;
pub mod query;
pub mod store;
pub mod sync;
