//! The tenant membership document: an automerge document written by the tenant's operators.
//!
//! Layout of the root map:
//!
//! ```text
//! "revocation/<revocation id>": bytes of SignedRevocation::encode()
//! ```
//!
//! Records are root-level keys rather than entries of a nested map, because two operators
//! creating the same nested map concurrently would produce two maps of which automerge shows
//! only one. [`MembershipDocument::revocation_set`] reads every revocation ever written, from the
//! change history instead of the current state, so a later change that deletes or overwrites an
//! entry does not undo a revocation.

use std::collections::BTreeSet;

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ReadDoc, ScalarValue, Value};
use ed25519_dalek::SigningKey;

use super::revocation::{RevocationSet, SignedRevocation};
use super::{FleetId, MembershipError};
use crate::document::DocumentError;
use crate::ids::{DocId, DocKind, TenantId};
use crate::signed::SignedChange;

/// Prefix of the root keys that hold revocations; the key ends with the revocation id in hex.
pub const REVOCATION_KEY_PREFIX: &str = "revocation/";

/// A revocation record that [`MembershipDocument::revocation_set`] skipped, for logging.
#[derive(Debug)]
pub struct RejectedRevocation {
    /// The root key the record was written under.
    pub key: String,
    /// The change that wrote it.
    pub change: ChangeHash,
    /// The reason it was skipped.
    pub error: MembershipError,
}

/// One tenant's membership document.
pub struct MembershipDocument {
    id: DocId,
    doc: AutoCommit,
}

impl MembershipDocument {
    /// Creates an empty membership document for `tenant`.
    pub fn new(tenant: TenantId) -> MembershipDocument {
        MembershipDocument {
            id: DocId::tenant_doc(DocKind::Membership, tenant),
            doc: AutoCommit::new(),
        }
    }

    /// Rebuilds the document from its changes, in any order that respects dependencies.
    pub fn from_changes<'a>(
        tenant: TenantId,
        changes: impl IntoIterator<Item = &'a SignedChange>,
    ) -> Result<MembershipDocument, MembershipError> {
        let mut out = MembershipDocument::new(tenant);
        for change in changes {
            out.apply(change)?;
        }
        Ok(out)
    }

    /// Loads the document from a snapshot written by [`MembershipDocument::save`].
    pub fn load(tenant: TenantId, bytes: &[u8]) -> Result<MembershipDocument, MembershipError> {
        let id = DocId::tenant_doc(DocKind::Membership, tenant);
        let doc =
            AutoCommit::load(bytes).map_err(|source| DocumentError::automerge(&id, source))?;
        Ok(MembershipDocument { id, doc })
    }

    /// Returns a compact snapshot of the whole document, history included.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Returns the document id.
    pub fn id(&self) -> &DocId {
        &self.id
    }

    /// Returns the current heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Applies a change of this document. The caller verifies the signature
    /// ([`SignedChange::verify`]) and the author ([`super::authorize_change`]) first.
    pub fn apply(&mut self, change: &SignedChange) -> Result<(), MembershipError> {
        if change.doc() != &self.id {
            return Err(MembershipError::NotAuthorized {
                author: change.author(),
                target: self.id.to_string(),
                reason: "the change belongs to another document",
            });
        }
        let decoded = change.to_change()?;
        self.doc
            .apply_changes([decoded])
            .map_err(|source| self.automerge_error(source))
    }

    /// Writes `revocation` and returns the change, signed by `author`. Returns `None` when the
    /// document already contains the same record.
    ///
    /// `time` is the commit time in Unix seconds. Receivers accept the change only if `author`
    /// is an operator of this tenant.
    pub fn add_revocation(
        &mut self,
        revocation: &SignedRevocation,
        time: i64,
        author: &SigningKey,
    ) -> Result<Option<SignedChange>, MembershipError> {
        let tenant = &revocation.revocation().tenant;
        if tenant != &self.id.tenant {
            return Err(MembershipError::WrongTenant {
                expected: self.id.tenant.clone(),
                found: tenant.clone(),
            });
        }
        let key = format!("{REVOCATION_KEY_PREFIX}{}", revocation.id());
        let bytes = revocation.encode();

        let existing = self
            .doc
            .get(automerge::ROOT, key.as_str())
            .map_err(|source| self.automerge_error(source))?;
        if let Some((Value::Scalar(value), _)) = existing {
            if matches!(value.as_ref(), ScalarValue::Bytes(stored) if *stored == bytes) {
                return Ok(None);
            }
        }

        self.doc
            .set_actor(ActorId::from(author.verifying_key().to_bytes().to_vec()));
        let put = self
            .doc
            .put(automerge::ROOT, key.as_str(), ScalarValue::Bytes(bytes));
        if let Err(source) = put {
            self.doc.rollback();
            return Err(self.automerge_error(source));
        }
        self.doc
            .commit_with(CommitOptions::default().with_time(time));
        let Some(mut change) = self.doc.get_last_local_change() else {
            return Ok(None);
        };
        Ok(Some(SignedChange::sign(
            self.id.clone(),
            &mut change,
            author,
        )?))
    }

    /// Reads every revocation ever written to the document, verifies each for `fleet`, and
    /// returns the valid ones as a set together with the records that failed.
    pub fn revocation_set(&mut self, fleet: &FleetId) -> (RevocationSet, Vec<RejectedRevocation>) {
        let mut set = RevocationSet::new();
        let mut rejected = Vec::new();
        let mut seen: BTreeSet<(String, Vec<u8>)> = BTreeSet::new();

        for change in self.doc.get_changes(&[]) {
            let hash = change.hash();
            for op in change.decode().operations {
                let (ObjectId::Root, Key::Map(key)) = (&op.obj, &op.key) else {
                    continue;
                };
                if !key.starts_with(REVOCATION_KEY_PREFIX) {
                    continue;
                }
                let OpType::Put(ScalarValue::Bytes(bytes)) = op.action else {
                    if let OpType::Put(_) = op.action {
                        rejected.push(RejectedRevocation {
                            key: key.to_string(),
                            change: hash,
                            error: MembershipError::Malformed {
                                kind: "revocation",
                                reason: "the value is not a byte string".to_string(),
                            },
                        });
                    }
                    continue;
                };
                if !seen.insert((key.to_string(), bytes.clone())) {
                    continue;
                }
                if let Err(error) = read_record(fleet, &self.id.tenant, key, &bytes, &mut set) {
                    rejected.push(RejectedRevocation {
                        key: key.to_string(),
                        change: hash,
                        error,
                    });
                }
            }
        }
        (set, rejected)
    }

    fn automerge_error(&self, source: automerge::AutomergeError) -> MembershipError {
        MembershipError::from(DocumentError::automerge(&self.id, source))
    }
}

/// Decodes and verifies one record of `tenant`'s document and adds it to `set`. The key must
/// name the record's id, so a record cannot hide under another record's key.
fn read_record(
    fleet: &FleetId,
    tenant: &TenantId,
    key: &str,
    bytes: &[u8],
    set: &mut RevocationSet,
) -> Result<(), MembershipError> {
    let revocation = SignedRevocation::decode(bytes)?;
    if &revocation.revocation().tenant != tenant {
        return Err(MembershipError::WrongTenant {
            expected: tenant.clone(),
            found: revocation.revocation().tenant.clone(),
        });
    }
    let expected_key = format!("{REVOCATION_KEY_PREFIX}{}", revocation.id());
    if key != expected_key {
        return Err(MembershipError::Malformed {
            kind: "revocation",
            reason: format!("it is stored under {key:?}, but its id gives {expected_key:?}"),
        });
    }
    set.insert(fleet, &revocation)
}
