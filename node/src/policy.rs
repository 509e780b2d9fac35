//! Policy files and their evaluation against one node's facts.
//!
//! A policy file is TOML:
//!
//! ```toml
//! name = "ssh-hardening"            # optional; the file name without extension otherwise
//! description = "SSH daemon settings every server must have"
//!
//! [[check]]
//! name = "permit-root-login"
//! severity = "high"                 # low, medium (default), high or critical
//! description = "PermitRootLogin must be no"
//! query = """
//! SELECT path, config_value(content, 'PermitRootLogin') AS value
//! FROM tracked_files
//! WHERE path = '/etc/ssh/sshd_config'
//!   AND coalesce(config_value(content, 'PermitRootLogin'), '') <> 'no'
//! """
//! ```
//!
//! Each query is read-only SQL over the fact tables (see `fleetmesh schema`) and returns the rows
//! that fail. It runs on a private in-memory copy of the evaluating node's own rows, so it cannot
//! see other nodes and needs no `WHERE node_id = ...`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetmesh_model::policy::{
    failing_rows, CheckStatus, Policy, PolicyDocument, PolicyError, RecordKind,
};
use fleetmesh_model::{ComplianceResult, SignedChange, TenantId};
use rusqlite::Connection;
use serde::Deserialize;

use crate::query::{register_functions, run_query, QueryOptions};
use crate::store::materialize::{self, FACT_TABLES};

/// Time one check may run on a node.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Rows one check counts at most; a check failing on more rows reports this many.
pub const CHECK_ROWS_MAX: usize = 10_000;

/// Largest policy file read, in bytes.
pub const POLICY_FILE_LEN_MAX: u64 = 1024 * 1024;

/// Tables that checks do not see: derived from other nodes' data or from the checks themselves.
const TABLES_HIDDEN_FROM_CHECKS: [&str; 2] = ["compliance", "changes"];

/// Errors from reading a policy file or evaluating checks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyFileError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Error from the operating system.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`POLICY_FILE_LEN_MAX`].
    #[error("policy file {path} is {len} bytes, more than the {POLICY_FILE_LEN_MAX} allowed")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file is not a valid policy in TOML.
    #[error("policy file {path} is not valid: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Message from the TOML parser, with line and column.
        reason: String,
    },
    /// A name, count or size is not valid.
    #[error("policy file {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The problem.
        #[source]
        source: PolicyError,
    },
    /// A check's query does not compile or is not read-only.
    #[error(
        "check {check:?} of policy {policy}: {reason}; fix the query (run `fleetmesh schema` for the tables)"
    )]
    Query {
        /// The policy.
        policy: String,
        /// The check.
        check: String,
        /// Message from SQLite or from the read-only guard.
        reason: String,
    },
    /// The store could not be read.
    #[error("reading the facts for policy checks failed: {0}")]
    Store(#[from] rusqlite::Error),
}

/// The layout of a policy file; the name is optional there.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    check: Vec<fleetmesh_model::policy::Check>,
}

/// Reads and checks a policy file: TOML layout, names, sizes, and that every query compiles
/// against the fact tables and is read-only.
pub fn load_policy_file(path: &Path) -> Result<Policy, PolicyFileError> {
    let read_error = |source| PolicyFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_error)?.len();
    if len > POLICY_FILE_LEN_MAX {
        return Err(PolicyFileError::TooLarge {
            path: path.to_path_buf(),
            len,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let file: PolicyFile = toml::from_str(&text).map_err(|err| PolicyFileError::Parse {
        path: path.to_path_buf(),
        reason: err.to_string().trim().replace('\n', " "),
    })?;
    let name = match file.name {
        Some(name) => name,
        None => path
            .file_stem()
            .map(|stem| stem.to_string_lossy().to_string())
            .unwrap_or_default(),
    };
    let policy = Policy {
        name,
        description: file.description,
        checks: file.check,
    };
    policy
        .validate()
        .map_err(|source| PolicyFileError::Invalid {
            path: path.to_path_buf(),
            source,
        })?;
    check_queries(&policy)?;
    Ok(policy)
}

/// Compiles and runs every query of `policy` on empty fact tables, so a typo, an unknown table
/// or a write fails when the policy is applied rather than on every node.
pub fn check_queries(policy: &Policy) -> Result<(), PolicyFileError> {
    let conn = empty_fact_tables()?;
    for check in &policy.checks {
        run_query(&conn, &check.query, &check_options()).map_err(|err| PolicyFileError::Query {
            policy: policy.name.clone(),
            check: check.name.clone(),
            reason: err.to_string(),
        })?;
    }
    Ok(())
}

/// Reads the policies of `tenant` from the changes of its policy document, by name. Records that
/// do not decode are logged and skipped.
pub fn tenant_policies(
    tenant: &TenantId,
    changes: &[SignedChange],
) -> Result<BTreeMap<String, Policy>, PolicyError> {
    let doc = PolicyDocument::from_changes(tenant.clone(), changes.iter())?;
    let (policies, bad) = doc.records::<Policy>(RecordKind::Policy);
    for record in bad {
        tracing::warn!(key = %record.key, reason = %record.reason,
            "skipping a policy record that does not decode");
    }
    Ok(policies)
}

/// Returns an in-memory database holding the fact tables with only `node`'s rows, copied from
/// the store at `db_path`, with the SQL functions registered. Checks run on it.
pub fn node_fact_tables(db_path: &Path, node: &str) -> Result<Connection, PolicyFileError> {
    let conn = empty_fact_tables()?;
    let path = db_path.to_string_lossy();
    conn.execute("ATTACH DATABASE ?1 AS source", [path.as_ref()])?;
    let copied = (|| {
        for table in checked_tables() {
            conn.execute(
                &format!(
                    "INSERT INTO main.{table} SELECT * FROM source.{table} WHERE node_id = ?1"
                ),
                [node],
            )?;
        }
        Ok::<(), rusqlite::Error>(())
    })();
    conn.execute("DETACH DATABASE source", [])?;
    copied?;
    Ok(conn)
}

/// Runs every check of `policies` on `conn` (from [`node_fact_tables`]) and returns the results
/// by key (`policy/check`).
pub fn evaluate(
    conn: &Connection,
    policies: &BTreeMap<String, Policy>,
) -> BTreeMap<String, ComplianceResult> {
    let mut out = BTreeMap::new();
    for policy in policies.values() {
        for check in &policy.checks {
            let mut result = ComplianceResult {
                policy: policy.name.clone(),
                check: check.name.clone(),
                severity: check.severity,
                ..ComplianceResult::default()
            };
            match run_query(conn, &check.query, &check_options()) {
                Ok(rows) => {
                    result.failing_count = rows.rows.len() as u64;
                    result.status = if rows.rows.is_empty() {
                        CheckStatus::Pass
                    } else {
                        CheckStatus::Fail
                    };
                    result.failing_rows = failing_rows(&rows.columns, &rows.rows);
                }
                Err(err) => {
                    result.status = CheckStatus::Error;
                    result.error = Some(err.to_string());
                }
            }
            out.insert(ComplianceResult::key(&policy.name, &check.name), result);
        }
    }
    out
}

fn check_options() -> QueryOptions {
    QueryOptions {
        timeout: CHECK_TIMEOUT,
        row_limit: CHECK_ROWS_MAX,
    }
}

fn checked_tables() -> impl Iterator<Item = &'static str> {
    FACT_TABLES
        .into_iter()
        .filter(|table| !TABLES_HIDDEN_FROM_CHECKS.contains(table))
}

fn empty_fact_tables() -> Result<Connection, PolicyFileError> {
    let conn = Connection::open_in_memory()?;
    materialize::create_tables(&conn)?;
    for table in TABLES_HIDDEN_FROM_CHECKS {
        conn.execute(&format!("DROP TABLE IF EXISTS {table}"), [])?;
    }
    register_functions(&conn)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write policy file");
        path
    }

    /// The example policy of docs/policies.md, shared with the integration tests.
    const SSH_POLICY: &str = include_str!("../../tests/fixtures/policies/ssh.toml");

    #[test]
    fn policy_file_name_defaults_to_file_stem() {
        let dir = tempfile::tempdir().expect("temp dir");
        let policy = load_policy_file(&write(dir.path(), "ssh.toml", SSH_POLICY)).expect("valid");
        assert_eq!(policy.name, "ssh");
        assert_eq!(policy.checks.len(), 1);
        assert_eq!(policy.checks[0].severity.as_str(), "high");
    }

    #[test]
    fn bad_policy_files_name_the_problem() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases = [
            (
                "typo.toml",
                "[[check]]\nname = \"a\"\nqeury = \"SELECT 1\"\n",
                "unknown field",
            ),
            (
                "table.toml",
                "[[check]]\nname = \"a\"\nquery = \"SELECT * FROM pakages\"\n",
                "pakages",
            ),
            (
                "write.toml",
                "[[check]]\nname = \"a\"\nquery = \"DELETE FROM packages\"\n",
                "check \"a\"",
            ),
            ("empty.toml", "description = \"x\"\n", "no checks"),
            (
                "sev.toml",
                "[[check]]\nname = \"a\"\nseverity = \"urgent\"\nquery = \"SELECT 1\"\n",
                "urgent",
            ),
        ];
        for (name, text, wanted) in cases {
            let err = load_policy_file(&write(dir.path(), name, text)).expect_err(name);
            let message = err.to_string();
            assert!(message.contains(wanted), "{name}: {message}");
        }
        let missing = load_policy_file(&dir.path().join("absent.toml")).expect_err("missing");
        assert!(missing.to_string().contains("absent.toml"));
    }

    #[test]
    fn checks_see_only_one_node_and_report_rows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("store.db");
        {
            let conn = Connection::open(&db).expect("store");
            materialize::create_tables(&conn).expect("tables");
            for (node, value) in [("node-a", "yes"), ("node-b", "no")] {
                conn.execute(
                    "INSERT INTO tracked_files (node_id, path, file_exists, content)
                     VALUES (?1, '/etc/ssh/sshd_config', 1, ?2)",
                    [node, &format!("PermitRootLogin {value}\n")],
                )
                .expect("row");
            }
        }
        let policy = load_policy_file(&write(dir.path(), "ssh.toml", SSH_POLICY)).expect("valid");
        let policies = BTreeMap::from([(policy.name.clone(), policy)]);

        let a = evaluate(&node_fact_tables(&db, "node-a").expect("copy"), &policies);
        let result = &a["ssh/permit-root-login"];
        assert_eq!(result.status, CheckStatus::Fail);
        assert_eq!(result.failing_count, 1);
        assert_eq!(result.failing_rows[0]["value"], "yes");

        let b = evaluate(&node_fact_tables(&db, "node-b").expect("copy"), &policies);
        assert_eq!(b["ssh/permit-root-login"].status, CheckStatus::Pass);

        // A check that fails at run time is an error result, not a crash.
        let mut broken = policies.clone();
        if let Some(policy) = broken.get_mut("ssh") {
            policy.checks[0].query = "SELECT regexp('(', content) FROM tracked_files".into();
        }
        let c = evaluate(&node_fact_tables(&db, "node-a").expect("copy"), &broken);
        assert_eq!(c["ssh/permit-root-login"].status, CheckStatus::Error);
        assert!(c["ssh/permit-root-login"]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("regexp"));
    }
}
