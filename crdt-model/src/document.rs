//! The node document: one automerge document per node, written only by that node.
//!
//! Layout of the root map:
//!
//! ```text
//! identity: { node_id, tenant, site, hostname, agent_version }
//! facts:    { system: {...}, os: {...}, packages: { "openssl:amd64": {...}, ... }, ... }
//! ```
//!
//! [`NodeDocument::record`] writes a new collection as a minimal diff, so an unchanged machine
//! produces no change and one package upgrade produces one small change. A replica of another
//! node's document is the same type, fed with [`NodeDocument::apply`].

use automerge::{transaction::CommitOptions, ActorId, AutoCommit, Change, ChangeHash, ReadDoc};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use std::collections::BTreeMap;

use crate::facts::Facts;
use crate::history::{self, ChangeRecord, FactChange};
use crate::ids::{DocId, NodeId, TenantId};
use crate::policy::ComplianceResult;
use crate::signed::{SignedChange, VerifyError};
use crate::tree;

/// Errors from reading or writing a document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// Automerge rejected an operation or a change.
    #[error("automerge error in {doc}: {source}")]
    Automerge {
        /// The document id.
        doc: String,
        /// The automerge error, boxed because it is large.
        #[source]
        source: Box<automerge::AutomergeError>,
    },
    /// The document content does not match the expected schema.
    #[error("document {doc} has an invalid {section} section: {reason}")]
    Schema {
        /// The document id.
        doc: String,
        /// The root key that failed to read.
        section: &'static str,
        /// What serde reported.
        reason: String,
    },
    /// The signed change was rejected.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The identity names another node than the document's owner.
    #[error("identity node id {found} does not match document owner {expected}")]
    WrongOwner {
        /// The document's owner.
        expected: String,
        /// The node id in the identity.
        found: String,
    },
}

impl DocumentError {
    /// Wraps an automerge error met in document `doc`.
    pub(crate) fn automerge(doc: &DocId, source: automerge::AutomergeError) -> DocumentError {
        DocumentError::Automerge {
            doc: doc.to_string(),
            source: Box::new(source),
        }
    }
}

/// Decodes `changes` and applies them to `doc` (the document `id`) in one batch, in any order
/// that respects their dependencies.
pub(crate) fn apply_signed_changes<'a>(
    doc: &mut AutoCommit,
    id: &DocId,
    changes: impl IntoIterator<Item = &'a SignedChange>,
) -> Result<(), DocumentError> {
    let decoded = changes
        .into_iter()
        .map(SignedChange::to_change)
        .collect::<Result<Vec<_>, _>>()?;
    doc.apply_changes(decoded)
        .map_err(|source| DocumentError::automerge(id, source))
}

/// Root key of the compliance results in a node document.
pub const COMPLIANCE_SECTION: &str = "compliance";

/// Who a node is: written into the `identity` section of its document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Identity {
    /// Node id in text form (libp2p `PeerId`).
    pub node_id: String,
    /// Tenant name.
    pub tenant: String,
    /// Site name.
    pub site: String,
    /// Host name at the last collection.
    pub hostname: String,
    /// fleetmesh version that wrote the last change.
    pub agent_version: String,
}

/// One node's document, as its owner writes it or as a replica holds it.
pub struct NodeDocument {
    id: DocId,
    doc: AutoCommit,
}

impl NodeDocument {
    /// Creates an empty document for `node` in `tenant`, with the node's key as actor id.
    pub fn new(tenant: TenantId, node: NodeId) -> Self {
        let doc = AutoCommit::new().with_actor(ActorId::from(node.0.to_vec()));
        NodeDocument {
            id: DocId::node(tenant, node),
            doc,
        }
    }

    /// Rebuilds a document from its changes, in any order that respects dependencies.
    pub fn from_changes<'a>(
        tenant: TenantId,
        node: NodeId,
        changes: impl IntoIterator<Item = &'a SignedChange>,
    ) -> Result<Self, DocumentError> {
        let mut out = NodeDocument::new(tenant, node);
        apply_signed_changes(&mut out.doc, &out.id, changes)?;
        Ok(out)
    }

    /// Loads a document from a saved snapshot (see [`NodeDocument::save`]).
    pub fn load(id: DocId, bytes: &[u8]) -> Result<Self, DocumentError> {
        let doc =
            AutoCommit::load(bytes).map_err(|source| DocumentError::automerge(&id, source))?;
        let actor = ActorId::from(id.key.to_vec());
        Ok(NodeDocument {
            id,
            doc: doc.with_actor(actor),
        })
    }

    /// Returns a compact snapshot of the whole document.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Encodes the change `hash` again from the document's history, compressed as when it was
    /// first written. Its hash is checked, so the bytes verify against the change's original
    /// signature. `None` when the document contains no such change.
    pub fn change_bytes(&mut self, hash: &ChangeHash) -> Option<Vec<u8>> {
        let mut change = self.doc.get_change_by_hash(hash)?;
        if change.hash() != *hash {
            return None;
        }
        Some(change.bytes().into_owned())
    }

    /// Returns the document id.
    pub fn id(&self) -> &DocId {
        &self.id
    }

    /// Returns the current heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Returns how many changes the owner has written (the owner's last sequence number).
    pub fn seq(&mut self) -> u64 {
        let owner = ActorId::from(self.id.key.to_vec());
        self.doc
            .get_changes(&[])
            .iter()
            .filter(|change| change.actor_id() == &owner)
            .map(Change::seq)
            .max()
            .unwrap_or(0)
    }

    /// Writes `identity` and `facts` as a minimal diff and commits. Returns the new change, or
    /// `None` when nothing differs from what the document already holds.
    ///
    /// `time` is the commit time in seconds since the Unix epoch; the caller supplies it because
    /// this crate never reads a clock.
    pub fn record(
        &mut self,
        identity: &Identity,
        facts: &Facts,
        time: i64,
    ) -> Result<Option<Change>, DocumentError> {
        let owner = NodeId(self.id.key).to_string();
        if identity.node_id != owner {
            return Err(DocumentError::WrongOwner {
                expected: owner,
                found: identity.node_id.clone(),
            });
        }

        let result = self.write_sections(identity, facts);
        if let Err(err) = result {
            self.doc.rollback();
            return Err(err);
        }

        match self
            .doc
            .commit_with(CommitOptions::default().with_time(time))
        {
            Some(_) => Ok(self.doc.get_last_local_change()),
            None => Ok(None),
        }
    }

    /// Writes and signs a new collection in one step. Returns `None` when nothing changed.
    pub fn record_signed(
        &mut self,
        identity: &Identity,
        facts: &Facts,
        time: i64,
        key: &SigningKey,
    ) -> Result<Option<SignedChange>, DocumentError> {
        match self.record(identity, facts, time)? {
            Some(mut change) => Ok(Some(SignedChange::sign(self.id.clone(), &mut change, key)?)),
            None => Ok(None),
        }
    }

    fn write_sections(&mut self, identity: &Identity, facts: &Facts) -> Result<(), DocumentError> {
        let mut root = serde_json::Map::new();
        root.insert(
            "identity".to_string(),
            to_json(&self.id, "identity", identity)?,
        );
        root.insert("facts".to_string(), to_json(&self.id, "facts", facts)?);
        // Other root sections (the compliance results) have their own writer.
        tree::write_keys(&mut self.doc, &automerge::ROOT, &root)
            .map_err(|source| self.automerge_error(source))
    }

    /// Writes the compliance results of this node as a minimal diff and commits. Results of
    /// checks that are no longer in `results` are deleted. Returns the new change, signed, or
    /// `None` when the document already contains exactly these results.
    pub fn record_compliance(
        &mut self,
        results: &BTreeMap<String, ComplianceResult>,
        time: i64,
        key: &SigningKey,
    ) -> Result<Option<SignedChange>, DocumentError> {
        let existing = self
            .doc
            .get(automerge::ROOT, COMPLIANCE_SECTION)
            .map_err(|source| self.automerge_error(source))?;
        if results.is_empty() && existing.is_none() {
            return Ok(None);
        }
        let mut root = serde_json::Map::new();
        let value = to_json(&self.id, COMPLIANCE_SECTION, results)?;
        root.insert(COMPLIANCE_SECTION.to_string(), value);
        if let Err(source) = tree::write_keys(&mut self.doc, &automerge::ROOT, &root) {
            self.doc.rollback();
            return Err(self.automerge_error(source));
        }
        if self
            .doc
            .commit_with(CommitOptions::default().with_time(time))
            .is_none()
        {
            return Ok(None);
        }
        match self.doc.get_last_local_change() {
            Some(mut change) => Ok(Some(SignedChange::sign(self.id.clone(), &mut change, key)?)),
            None => Ok(None),
        }
    }

    /// Reads the compliance results, at `heads` if given.
    pub fn compliance(
        &self,
        heads: Option<&[ChangeHash]>,
    ) -> Result<BTreeMap<String, ComplianceResult>, DocumentError> {
        self.read_section(COMPLIANCE_SECTION, heads)
    }

    /// Lists the facts that the changes between `before` and `after` changed, with old and new
    /// values. `before` empty means the empty document.
    pub fn fact_changes(
        &mut self,
        before: &[ChangeHash],
        after: &[ChangeHash],
    ) -> Result<Vec<FactChange>, DocumentError> {
        let paths = self.changed_paths(before, after);
        self.fact_changes_at(before, after, &paths)
    }

    /// Lists the facts that the changes between `before` and `after` changed, like
    /// [`NodeDocument::fact_changes`], from `paths` that [`NodeDocument::changed_paths`]
    /// returned for the same heads. Callers that need the paths anyway save the second walk.
    pub fn fact_changes_at(
        &mut self,
        before: &[ChangeHash],
        after: &[ChangeHash],
        paths: &[Vec<automerge::Prop>],
    ) -> Result<Vec<FactChange>, DocumentError> {
        // Reading the current state needs no heads, which is cheaper.
        let after_heads = (after != self.doc.get_heads().as_slice()).then_some(after);
        let mut out = Vec::new();
        for path in history::touched_items(paths) {
            let old = tree::read_path(&self.doc, &path, Some(before))
                .map_err(|source| self.automerge_error(source))?;
            let new = tree::read_path(&self.doc, &path, after_heads)
                .map_err(|source| self.automerge_error(source))?;
            out.extend(history::diff_from(
                path,
                old.as_ref(),
                new.as_ref(),
                &|_: &[String]| false,
            ));
        }
        Ok(out)
    }

    /// Lists the paths from the root that the changes between `before` and `after` write, as
    /// [`history::changed_paths`] finds them.
    pub fn changed_paths(
        &mut self,
        before: &[ChangeHash],
        after: &[ChangeHash],
    ) -> Vec<Vec<automerge::Prop>> {
        history::changed_paths(&mut self.doc, before, after)
    }

    /// Lists what each of the owner's changes did, oldest first.
    pub fn history(&mut self) -> Result<Vec<ChangeRecord>, DocumentError> {
        let owner = ActorId::from(self.id.key.to_vec());
        let changes: Vec<(u64, i64, ChangeHash, Vec<ChangeHash>)> = self
            .doc
            .get_changes(&[])
            .into_iter()
            .filter(|change| change.actor_id() == &owner)
            .map(|change| {
                (
                    change.seq(),
                    change.timestamp(),
                    change.hash(),
                    change.deps().to_vec(),
                )
            })
            .collect();
        let mut out = Vec::with_capacity(changes.len());
        for (seq, time, hash, deps) in changes {
            let facts = self.fact_changes(&deps, &[hash])?;
            out.push(ChangeRecord {
                seq,
                time,
                hash: hash.to_string(),
                facts,
            });
        }
        Ok(out)
    }

    /// Returns the commit time of the owner's last change, if any.
    pub fn last_change_time(&mut self) -> Option<i64> {
        let owner = ActorId::from(self.id.key.to_vec());
        self.doc
            .get_changes(&[])
            .into_iter()
            .filter(|change| change.actor_id() == &owner)
            .max_by_key(|change| change.seq())
            .map(|change| change.timestamp())
    }

    /// Returns the heads of the owner's state as it was at `time` (seconds since the Unix
    /// epoch): the last change committed at or before `time`. Empty when there was none yet.
    pub fn heads_at_time(&mut self, time: i64) -> Vec<ChangeHash> {
        let owner = ActorId::from(self.id.key.to_vec());
        self.doc
            .get_changes(&[])
            .into_iter()
            .filter(|change| change.actor_id() == &owner && change.timestamp() <= time)
            .max_by_key(|change| change.seq())
            .map(|change| vec![change.hash()])
            .unwrap_or_default()
    }

    /// Applies a verified change from the owner. Changes whose dependencies are missing are
    /// queued by automerge until the dependencies arrive.
    pub fn apply(&mut self, change: &SignedChange) -> Result<(), DocumentError> {
        if change.doc() != &self.id {
            return Err(DocumentError::Verify(VerifyError::NotOwner {
                doc: self.id.to_string(),
                author: change.author().to_string(),
            }));
        }
        let decoded = change.to_change()?;
        self.doc
            .apply_changes([decoded])
            .map_err(|source| self.automerge_error(source))
    }

    /// Reads the identity section, at `heads` if given.
    pub fn identity(&self, heads: Option<&[ChangeHash]>) -> Result<Identity, DocumentError> {
        self.read_section("identity", heads)
    }

    /// Reads the facts, at `heads` if given.
    pub fn facts(&self, heads: Option<&[ChangeHash]>) -> Result<Facts, DocumentError> {
        self.read_section("facts", heads)
    }

    /// Reads the whole document as JSON, at `heads` if given.
    pub fn to_json(&self, heads: Option<&[ChangeHash]>) -> Result<Json, DocumentError> {
        let map = tree::read_map(&self.doc, &automerge::ROOT, heads)
            .map_err(|source| self.automerge_error(source))?;
        Ok(Json::Object(map))
    }

    /// Returns the patches that turn the document at `before` into the document at `after`.
    /// Each patch carries the path from the root, so callers can see which facts changed.
    pub fn diff(&mut self, before: &[ChangeHash], after: &[ChangeHash]) -> Vec<automerge::Patch> {
        self.doc.diff(before, after)
    }

    /// Returns every change in the document, oldest first in causal order.
    pub fn changes(&mut self) -> Vec<Change> {
        self.doc.get_changes(&[])
    }

    fn read_section<T: for<'de> Deserialize<'de> + Default>(
        &self,
        section: &'static str,
        heads: Option<&[ChangeHash]>,
    ) -> Result<T, DocumentError> {
        let value = tree::read_root_key(&self.doc, section, heads)
            .map_err(|source| self.automerge_error(source))?;
        match value {
            None => Ok(T::default()),
            Some(json) => serde_json::from_value(json).map_err(|err| DocumentError::Schema {
                doc: self.id.to_string(),
                section,
                reason: err.to_string(),
            }),
        }
    }

    fn automerge_error(&self, source: automerge::AutomergeError) -> DocumentError {
        DocumentError::automerge(&self.id, source)
    }

    /// Returns the underlying automerge document, for history and diff queries.
    pub fn automerge(&self) -> &AutoCommit {
        &self.doc
    }

    /// Reports whether the document has no content yet (no change applied).
    pub fn is_empty(&self) -> bool {
        self.doc.length(automerge::ROOT) == 0
    }
}

fn to_json<T: Serialize>(
    id: &DocId,
    section: &'static str,
    value: &T,
) -> Result<Json, DocumentError> {
    serde_json::to_value(value).map_err(|err| DocumentError::Schema {
        doc: id.to_string(),
        section,
        reason: err.to_string(),
    })
}
