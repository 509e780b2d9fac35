//! Policies, baselines and compliance results.
//!
//! A tenant's policy document is an automerge document written by the tenant's operators. Its
//! root map contains one record per key, each a JSON text:
//!
//! ```text
//! "policy/<name>":     Policy     (named checks, each a SQL query over one node's facts)
//! "baseline/<name>":   Baseline   (a node's configuration recorded as a standard)
//! "assignment/<name>": Assignment (which nodes a baseline applies to)
//! ```
//!
//! Records are root keys, as in the membership document, so two operators writing different
//! records never create the same nested map twice. Two operators writing the same record at once
//! leave one of the two values, the same one on every node.
//!
//! Every node evaluates the policies of its tenant against its own facts and records the results
//! in the `compliance` section of its own document ([`ComplianceResult`]), so the results are
//! signed by the node and reach every replica like any other fact.

use std::collections::BTreeMap;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ReadDoc, ScalarValue, Value};
use ed25519_dalek::SigningKey;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use crate::document::{apply_signed_changes, DocumentError};
use crate::facts::Facts;
use crate::history::{self, FactChange};
use crate::ids::{validate_name, DocId, DocKind, IdError, TenantId};
use crate::signed::{SignedChange, VerifyError};

/// Failing rows kept per check result; the count still covers every row.
pub const FAILING_ROWS_MAX: usize = 50;

/// Checks in one policy at most.
pub const CHECKS_MAX: usize = 500;

/// Maximum length of a check's query text, in bytes.
pub const QUERY_LEN_MAX: usize = 16 * 1024;

/// Errors from building or reading policy records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A policy, check or baseline name is not valid.
    #[error(transparent)]
    Name(#[from] IdError),
    /// A policy is not valid.
    #[error("policy {policy}: {reason}")]
    Invalid {
        /// The policy name.
        policy: String,
        /// The problem and how to fix it.
        reason: String,
    },
    /// Reading or writing the document failed.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// A change could not be signed or decoded.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// How much a failing check matters.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Low,
    /// Fix in the normal course of work.
    #[default]
    Medium,
    /// Fix soon.
    High,
    /// Fix now.
    Critical,
}

impl Severity {
    /// Returns the lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// One check: a query over one node's facts that returns the rows that fail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Name, unique within its policy: 1 to 64 characters from `[a-z0-9._-]`.
    pub name: String,
    /// How much a failure matters.
    #[serde(default)]
    pub severity: Severity,
    /// The requirement in plain words, for reports.
    #[serde(default)]
    pub description: String,
    /// A read-only SQL query over the fact tables. It reads only the evaluating node's rows, and every
    /// row it returns is a failure.
    pub query: String,
}

/// A named set of checks, as written to the policy document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Name, unique within the tenant: 1 to 64 characters from `[a-z0-9._-]`.
    pub name: String,
    /// Purpose of the policy.
    #[serde(default)]
    pub description: String,
    /// The checks, evaluated in this order.
    #[serde(default, rename = "check")]
    pub checks: Vec<Check>,
}

impl Policy {
    /// Checks names, sizes and uniqueness. The queries themselves are compiled by the node,
    /// which has the fact tables.
    pub fn validate(&self) -> Result<(), PolicyError> {
        validate_name("policy", &self.name)?;
        let invalid = |reason: String| PolicyError::Invalid {
            policy: self.name.clone(),
            reason,
        };
        if self.checks.is_empty() {
            return Err(invalid(
                "it has no checks; add at least one [[check]] table".into(),
            ));
        }
        if self.checks.len() > CHECKS_MAX {
            return Err(invalid(format!(
                "it has {} checks, more than the {CHECKS_MAX} allowed; split it into several policies",
                self.checks.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for check in &self.checks {
            validate_name("check", &check.name)?;
            if !seen.insert(check.name.as_str()) {
                return Err(invalid(format!(
                    "check name {:?} is used twice; give every check its own name",
                    check.name
                )));
            }
            if check.query.trim().is_empty() {
                return Err(invalid(format!(
                    "check {:?} has an empty query; write a SELECT that returns the failing rows",
                    check.name
                )));
            }
            if check.query.len() > QUERY_LEN_MAX {
                return Err(invalid(format!(
                    "the query of check {:?} is {} bytes, more than the {QUERY_LEN_MAX} allowed",
                    check.name,
                    check.query.len()
                )));
            }
        }
        Ok(())
    }
}

/// A node's configuration recorded as a standard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Name: 1 to 64 characters from `[a-z0-9._-]`.
    pub name: String,
    /// Node id of the machine the baseline was taken from.
    pub source_node: String,
    /// Host name of that machine.
    pub source_hostname: String,
    /// Time of the state that was recorded, in seconds since the Unix epoch.
    pub taken_at: i64,
    /// The recorded configuration, as [`Baseline::project`] returns it.
    pub facts: Json,
}

impl Baseline {
    /// Returns the part of `facts` that a baseline compares: OS release, packages and their
    /// versions, service states, accounts, tracked files, listening sockets and scheduled tasks.
    /// Facts that differ between machines by nature (names, addresses, hardware, free space, and
    /// the files of [`history::MACHINE_SPECIFIC_FILES`]) are left out.
    pub fn project(facts: &Facts) -> Json {
        let map = |entries: Vec<(String, Json)>| Json::Object(entries.into_iter().collect());
        json!({
            "os": {
                "id": facts.os.id,
                "version_id": facts.os.version_id,
            },
            "packages": map(facts.packages.iter()
                .map(|(key, package)| (key.clone(), json!(package.full_version())))
                .collect()),
            "services": map(facts.services.iter()
                .map(|(unit, service)| (unit.clone(), json!({
                    "enabled": service.enabled,
                    "active": service.active,
                })))
                .collect()),
            "users": map(facts.users.iter()
                .map(|(name, user)| (name.clone(), json!({
                    "uid": user.uid,
                    "shell": user.shell,
                    "admin": user.admin,
                })))
                .collect()),
            "tracked_files": map(facts.tracked_files.iter()
                .filter(|(path, _)| !history::MACHINE_SPECIFIC_FILES.contains(&path.as_str()))
                .map(|(path, file)| (path.clone(), json!({
                    "exists": file.exists,
                    "sha256": file.sha256,
                    "mode": file.mode,
                    "uid": file.uid,
                    "gid": file.gid,
                    "content": file.content,
                })))
                .collect()),
            "listening": map(facts.listening.iter()
                .map(|(key, socket)| (key.clone(), json!(socket.process.clone().unwrap_or_default())))
                .collect()),
            "scheduled_tasks": map(facts.scheduled_tasks.iter()
                .map(|(key, task)| (key.clone(), json!({
                    "schedule": task.schedule,
                    "command": task.command,
                    "user": task.user,
                })))
                .collect()),
        })
    }

    /// Lists how `facts` deviate from this baseline. `removed` means the baseline has an item
    /// the node lacks, `added` that the node has an item the baseline lacks, and `changed` a
    /// different value (old is the baseline's, new the node's).
    pub fn drift(&self, facts: &Facts) -> Vec<FactChange> {
        let current = Baseline::project(facts);
        history::diff_values(Some(&self.facts), Some(&current), &|_: &[String]| false)
    }
}

/// Selection of the nodes a baseline applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The baseline's name.
    pub baseline: String,
    /// A SQL condition over the `nodes` table, as in `SELECT node_id FROM nodes WHERE ...`.
    pub where_sql: String,
}

/// Outcome of one check on one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// The query returned no row.
    Pass,
    /// The query returned failing rows.
    Fail,
    /// The query could not run on this node.
    #[default]
    Error,
}

impl CheckStatus {
    /// Returns the lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Fail => "fail",
            CheckStatus::Error => "error",
        }
    }
}

/// The result of one check on one node, as the node records it in its own document under the
/// key `<policy>/<check>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ComplianceResult {
    /// The policy name.
    pub policy: String,
    /// The check name.
    pub check: String,
    /// The check's severity.
    pub severity: Severity,
    /// The outcome.
    pub status: CheckStatus,
    /// How many rows failed.
    pub failing_count: u64,
    /// The first [`FAILING_ROWS_MAX`] failing rows, each an object of column name to value.
    pub failing_rows: Vec<Json>,
    /// Reason the query could not run, for `error`.
    pub error: Option<String>,
}

impl ComplianceResult {
    /// Returns the key under which the result is recorded.
    pub fn key(policy: &str, check: &str) -> String {
        format!("{policy}/{check}")
    }
}

/// The kinds of record in a policy document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A [`Policy`].
    Policy,
    /// A [`Baseline`].
    Baseline,
    /// An [`Assignment`].
    Assignment,
}

impl RecordKind {
    fn prefix(self) -> &'static str {
        match self {
            RecordKind::Policy => "policy/",
            RecordKind::Baseline => "baseline/",
            RecordKind::Assignment => "assignment/",
        }
    }

    /// Returns what the record's name names, for error messages: an assignment is named after
    /// its baseline.
    fn name_kind(self) -> &'static str {
        match self {
            RecordKind::Policy => "policy",
            RecordKind::Baseline | RecordKind::Assignment => "baseline",
        }
    }
}

/// A record that did not decode, for logging and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRecord {
    /// The root key.
    pub key: String,
    /// Message from serde.
    pub reason: String,
}

/// One tenant's policy document.
pub struct PolicyDocument {
    id: DocId,
    doc: AutoCommit,
}

impl PolicyDocument {
    /// Creates an empty policy document for `tenant`.
    pub fn new(tenant: TenantId) -> PolicyDocument {
        PolicyDocument {
            id: DocId::tenant_doc(DocKind::Policy, tenant),
            doc: AutoCommit::new(),
        }
    }

    /// Rebuilds the document from its changes, in any order that respects dependencies. The
    /// caller has verified them.
    pub fn from_changes<'a>(
        tenant: TenantId,
        changes: impl IntoIterator<Item = &'a SignedChange>,
    ) -> Result<PolicyDocument, PolicyError> {
        let mut out = PolicyDocument::new(tenant);
        apply_signed_changes(&mut out.doc, &out.id, changes)?;
        Ok(out)
    }

    /// Returns the document id.
    pub fn id(&self) -> &DocId {
        &self.id
    }

    /// Returns the current heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Writes a record and returns the change signed by `author`, or `None` when the document
    /// already contains the same value. Receivers accept it only from an operator of the tenant.
    pub fn put<T: Serialize>(
        &mut self,
        kind: RecordKind,
        name: &str,
        record: &T,
        time: i64,
        author: &SigningKey,
    ) -> Result<Option<SignedChange>, PolicyError> {
        validate_name(kind.name_kind(), name)?;
        let text = serde_json::to_string(record).map_err(|err| DocumentError::Schema {
            doc: self.id.to_string(),
            section: "record",
            reason: err.to_string(),
        })?;
        let key = format!("{}{name}", kind.prefix());
        if self.read_text(&key)?.as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        self.commit(author, time, |doc| {
            doc.put(
                automerge::ROOT,
                key.as_str(),
                ScalarValue::Str(text.as_str().into()),
            )
        })
    }

    /// Deletes a record and returns the signed change, or `None` when there is no such record.
    pub fn remove(
        &mut self,
        kind: RecordKind,
        name: &str,
        time: i64,
        author: &SigningKey,
    ) -> Result<Option<SignedChange>, PolicyError> {
        let key = format!("{}{name}", kind.prefix());
        if self.read_text(&key)?.is_none() {
            return Ok(None);
        }
        self.commit(author, time, |doc| {
            doc.delete(automerge::ROOT, key.as_str())
        })
    }

    fn commit(
        &mut self,
        author: &SigningKey,
        time: i64,
        write: impl FnOnce(&mut AutoCommit) -> Result<(), automerge::AutomergeError>,
    ) -> Result<Option<SignedChange>, PolicyError> {
        self.doc
            .set_actor(ActorId::from(author.verifying_key().to_bytes().to_vec()));
        if let Err(source) = write(&mut self.doc) {
            self.doc.rollback();
            return Err(self.automerge_error(source).into());
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

    /// Returns the records of one kind by name, and the records that did not decode.
    pub fn records<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
    ) -> (BTreeMap<String, T>, Vec<BadRecord>) {
        let mut good = BTreeMap::new();
        let mut bad = Vec::new();
        for key in self.doc.keys(automerge::ROOT) {
            let Some(name) = key.strip_prefix(kind.prefix()) else {
                continue;
            };
            let text = match self.read_text(&key) {
                Ok(Some(text)) => text,
                Ok(None) => continue,
                Err(err) => {
                    bad.push(BadRecord {
                        key: key.clone(),
                        reason: err.to_string(),
                    });
                    continue;
                }
            };
            match serde_json::from_str::<T>(&text) {
                Ok(record) => {
                    good.insert(name.to_string(), record);
                }
                Err(err) => bad.push(BadRecord {
                    key: key.clone(),
                    reason: err.to_string(),
                }),
            }
        }
        (good, bad)
    }

    fn read_text(&self, key: &str) -> Result<Option<String>, DocumentError> {
        let entry = self
            .doc
            .get(automerge::ROOT, key)
            .map_err(|source| self.automerge_error(source))?;
        Ok(match entry {
            Some((Value::Scalar(value), _)) => match value.as_ref() {
                ScalarValue::Str(text) => Some(text.to_string()),
                _ => None,
            },
            _ => None,
        })
    }

    fn automerge_error(&self, source: automerge::AutomergeError) -> DocumentError {
        DocumentError::automerge(&self.id, source)
    }
}

/// Turns the failing rows of a query into result rows: at most [`FAILING_ROWS_MAX`] objects of
/// column name to value.
pub fn failing_rows(columns: &[String], rows: &[Vec<Json>]) -> Vec<Json> {
    rows.iter()
        .take(FAILING_ROWS_MAX)
        .map(|row| {
            let object: Map<String, Json> =
                columns.iter().cloned().zip(row.iter().cloned()).collect();
            Json::Object(object)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Package, TrackedFile};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn policy() -> Policy {
        Policy {
            name: "ssh".into(),
            description: String::new(),
            checks: vec![Check {
                name: "permit-root-login".into(),
                severity: Severity::High,
                description: "PermitRootLogin must be no".into(),
                query: "SELECT path FROM tracked_files".into(),
            }],
        }
    }

    #[test]
    fn put_read_and_remove_records() {
        let tenant = TenantId::new("acme").expect("valid tenant");
        let mut doc = PolicyDocument::new(tenant.clone());
        let change = doc
            .put(RecordKind::Policy, "ssh", &policy(), 10, &key(1))
            .expect("put")
            .expect("a change");
        change.verify().expect("signed by the author");
        assert!(doc
            .put(RecordKind::Policy, "ssh", &policy(), 11, &key(1))
            .expect("put again")
            .is_none());

        let mut replica = PolicyDocument::from_changes(tenant, [&change]).expect("replica");
        let (policies, bad) = replica.records::<Policy>(RecordKind::Policy);
        assert!(bad.is_empty());
        assert_eq!(policies.get("ssh"), Some(&policy()));

        let removal = replica
            .remove(RecordKind::Policy, "ssh", 12, &key(2))
            .expect("remove")
            .expect("a change");
        removal.verify().expect("signed by the second operator");
        assert!(replica.records::<Policy>(RecordKind::Policy).0.is_empty());
        assert!(replica
            .remove(RecordKind::Policy, "ssh", 13, &key(2))
            .expect("no-op")
            .is_none());
    }

    #[test]
    fn validate_rejects_duplicates_and_empty_queries() {
        let mut twice = policy();
        twice.checks.push(twice.checks[0].clone());
        assert!(twice
            .validate()
            .unwrap_err()
            .to_string()
            .contains("used twice"));

        let mut empty = policy();
        empty.checks[0].query = "  ".into();
        assert!(empty
            .validate()
            .unwrap_err()
            .to_string()
            .contains("empty query"));

        let mut bad_name = policy();
        bad_name.name = "SSH Policy".into();
        assert!(bad_name.validate().is_err());
        assert!(policy().validate().is_ok());
    }

    #[test]
    fn drift_names_missing_extra_and_changed_items() {
        let mut standard = Facts::default();
        for (name, version) in [("openssl", "3.0.13"), ("curl", "7.88")] {
            standard.packages.insert(
                format!("{name}:amd64"),
                Package {
                    name: name.into(),
                    version: version.into(),
                    arch: Some("amd64".into()),
                    ..Package::default()
                },
            );
        }
        standard.tracked_files.insert(
            "/etc/ssh/sshd_config".into(),
            TrackedFile {
                exists: true,
                content: Some("PermitRootLogin no\n".into()),
                ..TrackedFile::default()
            },
        );
        let baseline = Baseline {
            name: "web".into(),
            source_node: "n".into(),
            source_hostname: "h".into(),
            taken_at: 0,
            facts: Baseline::project(&standard),
        };
        assert!(baseline.drift(&standard).is_empty());

        let mut node = standard.clone();
        node.packages.remove("curl:amd64");
        if let Some(openssl) = node.packages.get_mut("openssl:amd64") {
            openssl.version = "3.0.11".into();
        }
        node.packages.insert(
            "telnet:amd64".into(),
            Package {
                name: "telnet".into(),
                version: "0.17".into(),
                arch: Some("amd64".into()),
                ..Package::default()
            },
        );
        if let Some(file) = node.tracked_files.get_mut("/etc/ssh/sshd_config") {
            file.content = Some("PermitRootLogin yes\n".into());
        }
        let drift = baseline.drift(&node);
        let summary: Vec<String> = drift
            .iter()
            .map(|change| format!("{} {}", change.action.as_str(), change.path()))
            .collect();
        assert_eq!(
            summary,
            [
                "removed packages/curl:amd64",
                "changed packages/openssl:amd64",
                "added packages/telnet:amd64",
                "changed tracked_files/etc/ssh/sshd_config/content",
            ]
        );
        assert_eq!(drift[1].old, Some(json!("3.0.13")));
        assert_eq!(drift[1].new, Some(json!("3.0.11")));
    }
}
