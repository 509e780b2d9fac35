//! fleetmesh-model: the document schema, typed facts and signed changes of fleetmesh.
//!
//! This crate is pure: no I/O, no async, no clock. Callers pass times in, and bytes come and go
//! as values. The node crate stores, syncs and queries what this crate defines.

mod change_chunk;
pub mod document;
pub mod facts;
pub mod history;
pub mod ids;
pub mod membership;
pub mod policy;
pub mod signed;
mod tree;

pub use automerge::{Change, ChangeHash, Patch, PatchAction, Prop};
pub use change_chunk::{CHANGE_INFLATED_LEN_MAX, CHANGE_OPS_MAX};
pub use document::{DocumentError, Identity, NodeDocument};
pub use facts::Facts;
pub use history::{Action, ChangeRecord, FactChange, LineEdit};
pub use ids::{DocId, DocKind, IdError, NodeId, TenantId};
pub use policy::{ComplianceResult, PolicyDocument};
pub use signed::{ChangeHeader, SignedChange, VerifyError, WireChange};
