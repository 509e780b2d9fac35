//! Materialized fact tables: one SQLite row per fact of every node, for fleet-wide queries.
//!
//! The store calls [`apply_node_change`] inside the transaction that stores a change, so the
//! tables never disagree with the acknowledged changes. The update is incremental. The paths
//! that the new changes write name the facts that changed (for example
//! `facts.packages["openssl:amd64"].version`), and only the rows of those items are rewritten,
//! whole, keyed by node id and item key. A write at the root of a section (the section was
//! created or replaced) rewrites that section of that node. No change ever touches the rows of
//! another node.
//!
//! The paths come from [`fleetmesh_model::history::changed_paths`]: the operations of the new
//! changes, each resolved to its path from the document root. That costs time in proportion to
//! the change, where automerge's `diff(before, after)` scans every operation of the document.
//! As an estimate, one such diff of a 700-package document took about 5 ms in a release build
//! with automerge 0.12 on a 2-core machine. The diff patches remain the fallback when the
//! operations cannot be resolved.
//!
//! The `changes` table is the exception to "one row per current fact": it gets one row per fact
//! that each change of the node changed, appended in the same transaction, so it records the
//! node's history rather than its state. [`delete_changes_before`] trims it.
//!
//! Tables and columns are documented in `crate::query::schema`, and a test keeps that
//! description and the DDL below equal. When [`SCHEMA_VERSION`] differs from the version a store
//! recorded, the store has to call [`drop_tables`], [`create_tables`] and then [`rebuild_node`]
//! for every node document.
//!
//! `last_heard` and `connected` come from the sync layer through [`set_peer_status`] and
//! [`clear_connected`]. Rewriting a node's facts keeps them.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ActorId, AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, Value};
use fleetmesh_model::document::COMPLIANCE_SECTION;
use fleetmesh_model::facts::{
    Address, BlockDevice, CollectorError, Dns, Group, Hardware, Interface, ListeningSocket, Mount,
    Os, Package, Route, ScheduledTask, Service, System, TrackedFile, User,
};
use fleetmesh_model::history::line_diff;
use fleetmesh_model::{
    ChangeHash, ComplianceResult, FactChange, Identity, NodeDocument, NodeId, Prop,
};
use rusqlite::{params, Connection, Transaction};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

/// Version of the fact tables' layout. A store that recorded another version must drop and
/// rebuild them.
pub const SCHEMA_VERSION: u32 = 3;

/// Errors from updating the fact tables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaterializeError {
    /// SQLite failed while writing fact rows.
    #[error("writing fact tables failed: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Automerge failed while reading the document.
    #[error("reading {doc} for the fact tables failed: {source}")]
    Automerge {
        /// The document id.
        doc: String,
        /// The automerge error, boxed because it is large.
        #[source]
        source: Box<automerge::AutomergeError>,
    },
    /// Reading what a change did to the facts failed.
    #[error("reading the history of {doc} for the changes table failed: {source}")]
    History {
        /// The document id.
        doc: String,
        /// The model's error, boxed because it is large.
        #[source]
        source: Box<fleetmesh_model::DocumentError>,
    },
    /// Only node documents have fact rows.
    #[error("document {doc} is not a node document; only node documents have fact tables")]
    NotNodeDocument {
        /// The document id.
        doc: String,
    },
}

/// Names of the fact tables. [`drop_tables`] drops exactly these.
pub const FACT_TABLES: [&str; 20] = [
    "nodes",
    "packages",
    "services",
    "interfaces",
    "addresses",
    "routes",
    "listening_ports",
    "users",
    "authorized_keys",
    "groups",
    "group_members",
    "mounts",
    "block_devices",
    "dns_servers",
    "dns_search_domains",
    "scheduled_tasks",
    "tracked_files",
    "collector_errors",
    "compliance",
    "changes",
];

const CREATE_TABLES: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY NOT NULL,
    tenant TEXT,
    site TEXT,
    hostname TEXT,
    fqdn TEXT,
    machine_id TEXT,
    boot_time INTEGER,
    timezone TEXT,
    architecture TEXT,
    virtualization TEXT,
    container TEXT,
    os_id TEXT,
    os_id_like TEXT,
    os_name TEXT,
    os_version TEXT,
    os_version_id TEXT,
    os_version_codename TEXT,
    os_pretty_name TEXT,
    os_release_source TEXT,
    os_release_fields TEXT,
    kernel_release TEXT,
    kernel_version TEXT,
    cpu_model TEXT,
    cpu_vendor TEXT,
    cpu_sockets INTEGER,
    cpu_cores INTEGER,
    cpu_threads INTEGER,
    memory_total_kib INTEGER,
    swap_total_kib INTEGER,
    hardware_vendor TEXT,
    hardware_product TEXT,
    hardware_serial TEXT,
    firmware_version TEXT,
    dmi_status TEXT,
    service_manager TEXT,
    package_count INTEGER NOT NULL DEFAULT 0,
    agent_version TEXT,
    last_change INTEGER,
    last_heard INTEGER,
    connected INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nodes_by_hostname ON nodes (hostname);

CREATE TABLE IF NOT EXISTS packages (
    node_id TEXT NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    release TEXT,
    epoch INTEGER,
    arch TEXT,
    source TEXT,
    manager TEXT NOT NULL,
    full_version TEXT NOT NULL,
    install_time INTEGER,
    PRIMARY KEY (node_id, key)
) WITHOUT ROWID;
-- With full_version in the index, version queries over one package read no table rows.
CREATE INDEX IF NOT EXISTS packages_by_name ON packages (name, full_version);

CREATE TABLE IF NOT EXISTS services (
    node_id TEXT NOT NULL,
    name TEXT NOT NULL,
    enabled TEXT,
    active TEXT,
    unit_file TEXT,
    description TEXT,
    PRIMARY KEY (node_id, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS services_by_name ON services (name);

CREATE TABLE IF NOT EXISTS interfaces (
    node_id TEXT NOT NULL,
    name TEXT NOT NULL,
    mac TEXT,
    mtu INTEGER,
    state TEXT,
    PRIMARY KEY (node_id, name)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS addresses (
    node_id TEXT NOT NULL,
    interface TEXT NOT NULL,
    key TEXT NOT NULL,
    family TEXT NOT NULL,
    address TEXT NOT NULL,
    prefix_len INTEGER NOT NULL,
    scope TEXT,
    PRIMARY KEY (node_id, interface, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS addresses_by_address ON addresses (address);

CREATE TABLE IF NOT EXISTS routes (
    node_id TEXT NOT NULL,
    key TEXT NOT NULL,
    destination TEXT NOT NULL,
    gateway TEXT,
    interface TEXT,
    metric INTEGER,
    PRIMARY KEY (node_id, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS listening_ports (
    node_id TEXT NOT NULL,
    key TEXT NOT NULL,
    protocol TEXT NOT NULL,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,
    process TEXT,
    uid INTEGER,
    PRIMARY KEY (node_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS listening_ports_by_port ON listening_ports (port);

CREATE TABLE IF NOT EXISTS users (
    node_id TEXT NOT NULL,
    name TEXT NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    gecos TEXT,
    home TEXT NOT NULL,
    shell TEXT NOT NULL,
    admin INTEGER NOT NULL,
    PRIMARY KEY (node_id, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS users_by_name ON users (name);

CREATE TABLE IF NOT EXISTS authorized_keys (
    node_id TEXT NOT NULL,
    user TEXT NOT NULL,
    position INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (node_id, user, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS authorized_keys_by_fingerprint ON authorized_keys (fingerprint);

CREATE TABLE IF NOT EXISTS groups (
    node_id TEXT NOT NULL,
    name TEXT NOT NULL,
    gid INTEGER NOT NULL,
    PRIMARY KEY (node_id, name)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS group_members (
    node_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    position INTEGER NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (node_id, group_name, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_by_member ON group_members (member);

CREATE TABLE IF NOT EXISTS mounts (
    node_id TEXT NOT NULL,
    mount_point TEXT NOT NULL,
    device TEXT NOT NULL,
    fs_type TEXT NOT NULL,
    options TEXT NOT NULL,
    total_bytes INTEGER,
    free_bytes INTEGER,
    PRIMARY KEY (node_id, mount_point)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS block_devices (
    node_id TEXT NOT NULL,
    name TEXT NOT NULL,
    size_bytes INTEGER,
    model TEXT,
    rotational INTEGER,
    removable INTEGER,
    PRIMARY KEY (node_id, name)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS dns_servers (
    node_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (node_id, position)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS dns_search_domains (
    node_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    domain TEXT NOT NULL,
    PRIMARY KEY (node_id, position)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS scheduled_tasks (
    node_id TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    schedule TEXT NOT NULL,
    command TEXT NOT NULL,
    user TEXT,
    source TEXT NOT NULL,
    PRIMARY KEY (node_id, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS tracked_files (
    node_id TEXT NOT NULL,
    path TEXT NOT NULL,
    file_exists INTEGER NOT NULL,
    sha256 TEXT,
    size INTEGER,
    mode TEXT,
    uid INTEGER,
    gid INTEGER,
    mtime INTEGER,
    content TEXT,
    PRIMARY KEY (node_id, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tracked_files_by_path ON tracked_files (path);

CREATE TABLE IF NOT EXISTS collector_errors (
    node_id TEXT NOT NULL,
    key TEXT NOT NULL,
    collector TEXT NOT NULL,
    path TEXT,
    message TEXT NOT NULL,
    PRIMARY KEY (node_id, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS compliance (
    node_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    check_name TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    failing_count INTEGER NOT NULL,
    failing_rows TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (node_id, policy, check_name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS compliance_by_check ON compliance (policy, check_name, status);

-- A rowid table: rowid order within one change is the order of its facts.
CREATE TABLE IF NOT EXISTS changes (
    node_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time INTEGER NOT NULL,
    change_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    item TEXT,
    field TEXT,
    action TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    lines TEXT
);
CREATE INDEX IF NOT EXISTS changes_by_node_time ON changes (node_id, time);
CREATE INDEX IF NOT EXISTS changes_by_time ON changes (time);
";

/// Creates the fact tables and their indexes where they do not exist yet.
pub fn create_tables(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(CREATE_TABLES)
}

/// Drops every fact table, so that [`create_tables`] can recreate them in a new layout. The
/// store's own tables are left alone.
pub fn drop_tables(conn: &Connection) -> rusqlite::Result<()> {
    for table in FACT_TABLES {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {table}"))?;
    }
    Ok(())
}

/// Updates the fact tables of one node after changes were applied to its document.
///
/// `before` is the list of heads before the changes, empty for the first change of the document.
/// Only the items that the changes after `before` write are rewritten, plus the whole section
/// wherever a change replaced a section. Each of those changes also appends its facts to the
/// `changes` table. `change_time` (seconds since the Unix epoch) becomes `last_change` unless
/// the node already has a later one.
pub fn apply_node_change(
    tx: &Transaction<'_>,
    doc: &mut NodeDocument,
    before: &[ChangeHash],
    change_time: i64,
) -> Result<(), MaterializeError> {
    let node = node_id_text(doc)?;
    let heads = doc.heads();
    // A node document holds only its owner's changes, so the paths of the owner's changes
    // between `before` and `heads` are every path written, and each change's paths serve both
    // the fact rows and its history rows.
    let changes = owner_changes_between(doc, before, &heads);
    let paths: Vec<Vec<Vec<Prop>>> = changes
        .iter()
        .map(|change| doc.changed_paths(&change.deps, &[change.hash]))
        .collect();
    let touched = if before.is_empty() {
        Touched::everything()
    } else {
        Touched::from_paths(&paths.concat())
    };
    write_touched(tx, doc, &node, &touched)?;

    for (change, paths) in changes.iter().zip(&paths) {
        let facts = doc
            .fact_changes_at(&change.deps, &[change.hash], paths)
            .map_err(|source| history_error(doc, source))?;
        let hash = change.hash.to_string();
        insert_change_rows(tx, &node, change.seq, change.time, &hash, &facts)?;
    }

    tx.prepare_cached(
        "UPDATE nodes SET last_change = max(coalesce(last_change, ?2), ?2) WHERE node_id = ?1",
    )?
    .execute(params![node, change_time])?;
    Ok(())
}

/// Rewrites every fact row of one node from its document, and sets `last_change` to
/// `change_time`. The node's `changes` rows are rebuilt from the whole history of the
/// document. Rows of other nodes are not touched.
pub fn rebuild_node(
    tx: &Transaction<'_>,
    doc: &mut NodeDocument,
    change_time: i64,
) -> Result<(), MaterializeError> {
    let node = node_id_text(doc)?;
    write_touched(tx, doc, &node, &Touched::everything())?;

    tx.prepare_cached("DELETE FROM changes WHERE node_id = ?1")?
        .execute([&node])?;
    let history = doc.history().map_err(|source| history_error(doc, source))?;
    for record in history {
        insert_change_rows(
            tx,
            &node,
            record.seq,
            record.time,
            &record.hash,
            &record.facts,
        )?;
    }

    tx.prepare_cached("UPDATE nodes SET last_change = ?2 WHERE node_id = ?1")?
        .execute(params![node, change_time])?;
    Ok(())
}

/// Deletes the `changes` rows of every node committed before `time` (seconds since the Unix
/// epoch, by each author's clock) and returns how many were deleted. The signed changes and
/// the current facts are not touched.
pub fn delete_changes_before(conn: &Connection, time: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM changes WHERE time < ?1")?
        .execute([time])
}

/// Records when `node` was last heard from (seconds since the Unix epoch) and whether it is
/// connected now. Creates a bare `nodes` row when no fact of the node has arrived yet.
pub fn set_peer_status(
    conn: &Connection,
    node: &NodeId,
    last_heard: i64,
    connected: bool,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO nodes (node_id, last_heard, connected) VALUES (?1, ?2, ?3)
         ON CONFLICT (node_id) DO UPDATE SET last_heard = excluded.last_heard,
                                             connected = excluded.connected",
    )?
    .execute(params![node.to_string(), last_heard, connected])?;
    Ok(())
}

/// Marks every node as not connected, for a daemon that starts with no connections.
pub fn clear_connected(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("UPDATE nodes SET connected = 0 WHERE connected <> 0", [])?;
    Ok(())
}

fn history_error(doc: &NodeDocument, source: fleetmesh_model::DocumentError) -> MaterializeError {
    MaterializeError::History {
        doc: doc.id().to_string(),
        source: Box::new(source),
    }
}

fn node_id_text(doc: &NodeDocument) -> Result<String, MaterializeError> {
    match doc.id().owner() {
        Some(node) => Ok(node.to_string()),
        None => Err(MaterializeError::NotNodeDocument {
            doc: doc.id().to_string(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Which rows a change touches.

/// Map sections of the facts whose items become rows of their own tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Collection {
    Packages,
    Services,
    Interfaces,
    Routes,
    Listening,
    Users,
    Groups,
    Mounts,
    BlockDevices,
    ScheduledTasks,
    TrackedFiles,
    CollectorErrors,
}

impl Collection {
    const ALL: [Collection; 12] = [
        Collection::Packages,
        Collection::Services,
        Collection::Interfaces,
        Collection::Routes,
        Collection::Listening,
        Collection::Users,
        Collection::Groups,
        Collection::Mounts,
        Collection::BlockDevices,
        Collection::ScheduledTasks,
        Collection::TrackedFiles,
        Collection::CollectorErrors,
    ];

    /// Returns the collection stored directly under `facts.<section>`, if any.
    fn from_facts_section(section: &str) -> Option<Collection> {
        Some(match section {
            "packages" => Collection::Packages,
            "services" => Collection::Services,
            "interfaces" => Collection::Interfaces,
            "routes" => Collection::Routes,
            "listening" => Collection::Listening,
            "users" => Collection::Users,
            "groups" => Collection::Groups,
            "mounts" => Collection::Mounts,
            "scheduled_tasks" => Collection::ScheduledTasks,
            "tracked_files" => Collection::TrackedFiles,
            "collector_errors" => Collection::CollectorErrors,
            _ => return None,
        })
    }

    /// Path of the collection's map from the document root.
    fn doc_path(self) -> &'static [&'static str] {
        match self {
            Collection::Packages => &["facts", "packages"],
            Collection::Services => &["facts", "services"],
            Collection::Interfaces => &["facts", "interfaces"],
            Collection::Routes => &["facts", "routes"],
            Collection::Listening => &["facts", "listening"],
            Collection::Users => &["facts", "users"],
            Collection::Groups => &["facts", "groups"],
            Collection::Mounts => &["facts", "mounts"],
            Collection::BlockDevices => &["facts", "hardware", "block_devices"],
            Collection::ScheduledTasks => &["facts", "scheduled_tasks"],
            Collection::TrackedFiles => &["facts", "tracked_files"],
            Collection::CollectorErrors => &["facts", "collector_errors"],
        }
    }

    /// Returns the tables with rows of one item, each with the column that contains the item key.
    fn tables(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Collection::Packages => &[("packages", "key")],
            Collection::Services => &[("services", "name")],
            Collection::Interfaces => &[("interfaces", "name"), ("addresses", "interface")],
            Collection::Routes => &[("routes", "key")],
            Collection::Listening => &[("listening_ports", "key")],
            Collection::Users => &[("users", "name"), ("authorized_keys", "user")],
            Collection::Groups => &[("groups", "name"), ("group_members", "group_name")],
            Collection::Mounts => &[("mounts", "mount_point")],
            Collection::BlockDevices => &[("block_devices", "name")],
            Collection::ScheduledTasks => &[("scheduled_tasks", "key")],
            Collection::TrackedFiles => &[("tracked_files", "path")],
            Collection::CollectorErrors => &[("collector_errors", "key")],
        }
    }
}

/// Items of one collection to rewrite.
#[derive(Debug, PartialEq, Eq)]
enum Keys {
    /// The whole collection of the node.
    All,
    /// Only these item keys.
    Some(BTreeSet<String>),
}

/// The rows of one node that a set of patches touches.
#[derive(Debug, Default, PartialEq, Eq)]
struct Touched {
    /// The `nodes` row: identity, system, OS, hardware summary or service manager.
    node_row: bool,
    /// The `dns_servers` and `dns_search_domains` rows.
    dns: bool,
    /// The `compliance` rows.
    compliance: bool,
    collections: BTreeMap<Collection, Keys>,
}

/// One step of a patch path: a map key, or an index into a list.
enum Step<'a> {
    Key(&'a str),
    Index,
}

impl Touched {
    fn everything() -> Touched {
        Touched {
            node_row: true,
            dns: true,
            compliance: true,
            collections: Collection::ALL.iter().map(|&c| (c, Keys::All)).collect(),
        }
    }

    /// Collects what changes at `paths` (each from the document root) touch.
    fn from_paths(paths: &[Vec<Prop>]) -> Touched {
        let mut touched = Touched::default();
        let mut steps = Vec::new();
        for path in paths {
            steps.clear();
            steps.extend(path.iter().map(step));
            touched.add_path(&steps);
        }
        touched
    }

    /// Marks what a change at `path` (from the document root) touches. Paths under root keys or
    /// fact sections this version does not know are ignored: they have no tables.
    fn add_path(&mut self, path: &[Step<'_>]) {
        let facts_section = match path {
            [] | [Step::Index, ..] | [Step::Key("facts")] => {
                *self = Touched::everything();
                return;
            }
            [Step::Key("identity"), ..] => {
                self.node_row = true;
                return;
            }
            [Step::Key(COMPLIANCE_SECTION), ..] => {
                self.compliance = true;
                return;
            }
            [Step::Key("facts"), Step::Key(section), rest @ ..] => (*section, rest),
            _ => return,
        };

        match facts_section {
            ("system" | "os" | "service_manager", _) => self.node_row = true,
            ("dns", _) => self.dns = true,
            ("hardware", []) => {
                self.node_row = true;
                self.mark(Collection::BlockDevices, None);
            }
            ("hardware", [Step::Key("block_devices"), rest @ ..]) => {
                self.mark(Collection::BlockDevices, item_key(rest));
            }
            ("hardware", _) => self.node_row = true,
            (section, rest) => {
                if let Some(collection) = Collection::from_facts_section(section) {
                    self.mark(collection, item_key(rest));
                }
            }
        }
    }

    /// Marks one item of `collection`, or all of it when `key` is `None`.
    fn mark(&mut self, collection: Collection, key: Option<&str>) {
        let entry = self
            .collections
            .entry(collection)
            .or_insert_with(|| Keys::Some(BTreeSet::new()));
        match (entry, key) {
            (Keys::Some(keys), Some(key)) => {
                keys.insert(key.to_string());
            }
            (entry, None) => *entry = Keys::All,
            (Keys::All, Some(_)) => {}
        }
    }
}

fn step(prop: &Prop) -> Step<'_> {
    match prop {
        Prop::Map(key) => Step::Key(key),
        Prop::Seq(_) => Step::Index,
    }
}

/// Returns the item key at the head of a path inside a collection map. `None` means that the
/// collection map itself changed.
fn item_key<'a>(rest: &[Step<'a>]) -> Option<&'a str> {
    match rest.first() {
        Some(Step::Key(key)) => Some(key),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The changes table.

/// One of the owner's changes that a store update applied.
struct NewChange {
    seq: u64,
    time: i64,
    hash: ChangeHash,
    deps: Vec<ChangeHash>,
}

/// Lists the owner's changes that lie between `before` and `heads`, oldest first. The store
/// applies one change at a time, so this is normally one change.
fn owner_changes_between(
    doc: &NodeDocument,
    before: &[ChangeHash],
    heads: &[ChangeHash],
) -> Vec<NewChange> {
    let owner = ActorId::from(doc.id().key.to_vec());
    let automerge = doc.automerge();
    let mut seen: BTreeSet<ChangeHash> = before.iter().copied().collect();
    let mut pending: Vec<ChangeHash> = heads.to_vec();
    let mut out = Vec::new();
    while let Some(hash) = pending.pop() {
        if !seen.insert(hash) {
            continue;
        }
        // Every change between the heads and `before` is in the document. A missing one would
        // only lose its rows, not fail the store.
        let Some(change) = ReadDoc::get_change_by_hash(automerge, &hash) else {
            continue;
        };
        pending.extend_from_slice(change.deps());
        if change.actor_id() == &owner {
            out.push(NewChange {
                seq: change.seq(),
                time: change.timestamp(),
                hash,
                deps: change.deps().to_vec(),
            });
        }
    }
    out.sort_by_key(|change| change.seq);
    out
}

/// Appends one row per fact of one change.
///
/// Tracked file contents are stored as line edits only. A `content` field that changed keeps
/// `old_value` and `new_value` NULL. A tracked file that appeared or disappeared is stored
/// without its `content` key, and its content becomes added or removed lines.
fn insert_change_rows(
    tx: &Transaction<'_>,
    node: &str,
    seq: u64,
    time: i64,
    hash: &str,
    facts: &[FactChange],
) -> Result<(), MaterializeError> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO changes (node_id, seq, time, change_hash, kind, item, field, action,
                              old_value, new_value, lines)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    for fact in facts {
        let (old, new, lines) = stored_values(fact);
        let lines = if lines.is_empty() {
            None
        } else {
            serde_json::to_string(&lines).ok()
        };
        insert.execute(params![
            node,
            seq,
            time,
            hash,
            fact.kind,
            fact.item,
            fact.field,
            fact.action.as_str(),
            old.map(|value| value.to_string()),
            new.map(|value| value.to_string()),
            lines,
        ])?;
    }
    Ok(())
}

/// Returns the old value, new value and line edits of a fact as the `changes` table stores
/// them (see [`insert_change_rows`]).
fn stored_values(
    fact: &FactChange,
) -> (Option<Json>, Option<Json>, Vec<fleetmesh_model::LineEdit>) {
    if fact.kind != "tracked_files" {
        return (fact.old.clone(), fact.new.clone(), fact.lines.clone());
    }
    let text = |value: Option<&Json>| match value {
        Some(Json::String(text)) => text.clone(),
        _ => String::new(),
    };
    match fact.field.as_deref() {
        Some("content") => {
            let lines = line_diff(&text(fact.old.as_ref()), &text(fact.new.as_ref()));
            (None, None, lines)
        }
        Some(_) => (fact.old.clone(), fact.new.clone(), fact.lines.clone()),
        None => {
            let split = |value: &Option<Json>| match value {
                Some(Json::Object(map)) => {
                    let mut map = map.clone();
                    let content = map.remove("content");
                    (Some(Json::Object(map)), content)
                }
                other => (other.clone(), None),
            };
            let (old, old_content) = split(&fact.old);
            let (new, new_content) = split(&fact.new);
            let lines = line_diff(&text(old_content.as_ref()), &text(new_content.as_ref()));
            (old, new, lines)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing rows.

/// The node whose rows are being written, and the document they come from.
struct Writer<'a> {
    tx: &'a Transaction<'a>,
    doc: &'a AutoCommit,
    doc_name: String,
    node: &'a str,
}

fn write_touched(
    tx: &Transaction<'_>,
    doc: &NodeDocument,
    node: &str,
    touched: &Touched,
) -> Result<(), MaterializeError> {
    let writer = Writer {
        tx,
        doc: doc.automerge(),
        doc_name: doc.id().to_string(),
        node,
    };

    // The nodes row first, so that the count and time updates below find it.
    if touched.node_row {
        writer.write_node_row(doc.id().tenant.as_str())?;
    } else {
        tx.prepare_cached(
            "INSERT INTO nodes (node_id, tenant) VALUES (?1, ?2) ON CONFLICT (node_id) DO NOTHING",
        )?
        .execute(params![node, doc.id().tenant.as_str()])?;
    }

    if touched.dns {
        writer.write_dns()?;
    }
    if touched.compliance {
        writer.write_compliance()?;
    }

    for (&collection, keys) in &touched.collections {
        writer.write_collection(collection, keys)?;
    }

    if touched.collections.contains_key(&Collection::Packages) {
        tx.prepare_cached(
            "UPDATE nodes SET package_count = (SELECT count(*) FROM packages WHERE node_id = ?1)
             WHERE node_id = ?1",
        )?
        .execute([node])?;
    }
    Ok(())
}

impl Writer<'_> {
    fn automerge_error(&self, source: automerge::AutomergeError) -> MaterializeError {
        MaterializeError::Automerge {
            doc: self.doc_name.clone(),
            source: Box::new(source),
        }
    }

    /// Reads the value at `path` from the root as JSON; `None` when some step is missing.
    fn read_path(&self, path: &[&str]) -> Result<Option<Json>, MaterializeError> {
        let Some((last, parents)) = path.split_last() else {
            return Ok(None);
        };
        let Some(parent) = self.find_map(parents)? else {
            return Ok(None);
        };
        self.read_entry(&parent, last)
    }

    /// Finds the map at `path` from the root.
    fn find_map(&self, path: &[&str]) -> Result<Option<ObjId>, MaterializeError> {
        let mut obj = automerge::ROOT;
        for key in path {
            match self
                .doc
                .get(&obj, *key)
                .map_err(|e| self.automerge_error(e))?
            {
                Some((Value::Object(ObjType::Map | ObjType::Table), id)) => obj = id,
                _ => return Ok(None),
            }
        }
        Ok(Some(obj))
    }

    fn read_entry(&self, map: &ObjId, key: &str) -> Result<Option<Json>, MaterializeError> {
        match self
            .doc
            .get(map, key)
            .map_err(|e| self.automerge_error(e))?
        {
            Some((value, id)) => Ok(Some(self.to_json(value, &id)?)),
            None => Ok(None),
        }
    }

    fn to_json(&self, value: Value<'_>, id: &ObjId) -> Result<Json, MaterializeError> {
        let json = match value {
            Value::Scalar(scalar) => scalar_to_json(&scalar),
            Value::Object(ObjType::Map | ObjType::Table) => {
                let mut out = Map::new();
                for item in self.doc.map_range(id, ..) {
                    let child = item.id();
                    let json = self.to_json(item.value.into(), &child)?;
                    out.insert(item.key.into_owned(), json);
                }
                Json::Object(out)
            }
            Value::Object(ObjType::List) => {
                let mut out = Vec::new();
                for item in self.doc.list_range(id, ..) {
                    let child = item.id();
                    out.push(self.to_json(item.value.into(), &child)?);
                }
                Json::Array(out)
            }
            Value::Object(ObjType::Text) => {
                Json::String(self.doc.text(id).map_err(|e| self.automerge_error(e))?)
            }
        };
        Ok(json)
    }

    /// Decodes a fact value. A value that does not fit the schema is logged and skipped, so
    /// that one odd item (written by a newer agent, say) does not block the change that carries
    /// it. Its rows stay absent until a later change fixes the item.
    fn decode<T: DeserializeOwned>(&self, fact_path: &str, json: Json) -> Option<T> {
        match serde_json::from_value(json) {
            Ok(value) => Some(value),
            Err(err) => {
                tracing::warn!(doc = %self.doc_name, item = fact_path, error = %err,
                    "skipping a fact that does not match the schema");
                None
            }
        }
    }

    fn read_decoded<T: DeserializeOwned + Default>(
        &self,
        path: &[&str],
    ) -> Result<T, MaterializeError> {
        Ok(match self.read_path(path)? {
            Some(json) => self.decode(&path.join("."), json).unwrap_or_default(),
            None => T::default(),
        })
    }

    fn write_node_row(&self, tenant: &str) -> Result<(), MaterializeError> {
        let identity: Identity = self.read_decoded(&["identity"])?;
        let system: System = self.read_decoded(&["facts", "system"])?;
        let os: Os = self.read_decoded(&["facts", "os"])?;
        let hardware: Hardware = self.read_decoded(&["facts", "hardware"])?;
        let service_manager: Option<String> = self.read_decoded(&["facts", "service_manager"])?;

        let hostname = if system.hostname.is_empty() {
            identity.hostname.clone()
        } else {
            system.hostname.clone()
        };
        let id_like = (!os.id_like.is_empty()).then(|| os.id_like.join(" "));
        let release_fields = (!os.release_fields.is_empty())
            .then(|| serde_json::to_string(&os.release_fields).unwrap_or_default());

        self.tx
            .prepare_cached(
                "INSERT INTO nodes (
                    node_id, tenant, site, hostname, fqdn, machine_id, boot_time, timezone,
                    architecture, virtualization, container,
                    os_id, os_id_like, os_name, os_version, os_version_id, os_version_codename,
                    os_pretty_name, os_release_source, os_release_fields,
                    kernel_release, kernel_version,
                    cpu_model, cpu_vendor, cpu_sockets, cpu_cores, cpu_threads,
                    memory_total_kib, swap_total_kib, hardware_vendor, hardware_product,
                    hardware_serial, firmware_version, dmi_status, service_manager, agent_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                         ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30,
                         ?31, ?32, ?33, ?34, ?35, ?36)
                 ON CONFLICT (node_id) DO UPDATE SET
                    tenant = excluded.tenant, site = excluded.site,
                    hostname = excluded.hostname, fqdn = excluded.fqdn,
                    machine_id = excluded.machine_id, boot_time = excluded.boot_time,
                    timezone = excluded.timezone, architecture = excluded.architecture,
                    virtualization = excluded.virtualization, container = excluded.container,
                    os_id = excluded.os_id, os_id_like = excluded.os_id_like,
                    os_name = excluded.os_name, os_version = excluded.os_version,
                    os_version_id = excluded.os_version_id,
                    os_version_codename = excluded.os_version_codename,
                    os_pretty_name = excluded.os_pretty_name,
                    os_release_source = excluded.os_release_source,
                    os_release_fields = excluded.os_release_fields,
                    kernel_release = excluded.kernel_release,
                    kernel_version = excluded.kernel_version,
                    cpu_model = excluded.cpu_model, cpu_vendor = excluded.cpu_vendor,
                    cpu_sockets = excluded.cpu_sockets, cpu_cores = excluded.cpu_cores,
                    cpu_threads = excluded.cpu_threads,
                    memory_total_kib = excluded.memory_total_kib,
                    swap_total_kib = excluded.swap_total_kib,
                    hardware_vendor = excluded.hardware_vendor,
                    hardware_product = excluded.hardware_product,
                    hardware_serial = excluded.hardware_serial,
                    firmware_version = excluded.firmware_version,
                    dmi_status = excluded.dmi_status,
                    service_manager = excluded.service_manager,
                    agent_version = excluded.agent_version",
            )?
            .execute(params![
                self.node,
                tenant,
                non_empty(&identity.site),
                non_empty(&hostname),
                system.fqdn,
                system.machine_id,
                system.boot_time,
                system.timezone,
                system.architecture,
                system.virtualization,
                system.container,
                os.id,
                id_like,
                os.name,
                os.version,
                os.version_id,
                os.version_codename,
                os.pretty_name,
                os.release_source,
                release_fields,
                os.kernel_release,
                os.kernel_version,
                hardware.cpu_model,
                hardware.cpu_vendor,
                hardware.cpu_sockets,
                hardware.cpu_cores,
                hardware.cpu_threads,
                to_i64(hardware.memory_total_kib),
                to_i64(hardware.swap_total_kib),
                hardware.vendor,
                hardware.product,
                hardware.serial,
                hardware.firmware_version,
                hardware.dmi_status,
                service_manager,
                non_empty(&identity.agent_version),
            ])?;
        Ok(())
    }

    fn write_dns(&self) -> Result<(), MaterializeError> {
        let dns: Dns = self.read_decoded(&["facts", "dns"])?;
        self.tx
            .prepare_cached("DELETE FROM dns_servers WHERE node_id = ?1")?
            .execute([self.node])?;
        self.tx
            .prepare_cached("DELETE FROM dns_search_domains WHERE node_id = ?1")?
            .execute([self.node])?;

        let mut insert = self.tx.prepare_cached(
            "INSERT INTO dns_servers (node_id, position, address) VALUES (?1, ?2, ?3)",
        )?;
        for (position, address) in (1i64..).zip(&dns.servers) {
            insert.execute(params![self.node, position, address])?;
        }
        let mut insert = self.tx.prepare_cached(
            "INSERT INTO dns_search_domains (node_id, position, domain) VALUES (?1, ?2, ?3)",
        )?;
        for (position, domain) in (1i64..).zip(&dns.search) {
            insert.execute(params![self.node, position, domain])?;
        }
        Ok(())
    }

    fn write_compliance(&self) -> Result<(), MaterializeError> {
        let results: BTreeMap<String, ComplianceResult> =
            self.read_decoded(&[COMPLIANCE_SECTION])?;
        self.tx
            .prepare_cached("DELETE FROM compliance WHERE node_id = ?1")?
            .execute([self.node])?;
        let mut insert = self.tx.prepare_cached(
            "INSERT OR REPLACE INTO compliance (node_id, policy, check_name, severity, status,
                 failing_count, failing_rows, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for result in results.values() {
            let rows = Json::Array(result.failing_rows.clone()).to_string();
            insert.execute(params![
                self.node,
                result.policy,
                result.check,
                result.severity.as_str(),
                result.status.as_str(),
                i64::try_from(result.failing_count).unwrap_or(i64::MAX),
                rows,
                result.error,
            ])?;
        }
        Ok(())
    }

    fn write_collection(
        &self,
        collection: Collection,
        keys: &Keys,
    ) -> Result<(), MaterializeError> {
        let section = self.find_map(collection.doc_path())?;
        match keys {
            Keys::All => {
                for (table, _) in collection.tables() {
                    self.tx
                        .prepare_cached(&format!("DELETE FROM {table} WHERE node_id = ?1"))?
                        .execute([self.node])?;
                }
                let Some(section) = section else {
                    return Ok(());
                };
                let keys: Vec<String> = self.doc.keys(&section).collect();
                for key in keys {
                    if let Some(json) = self.read_entry(&section, &key)? {
                        self.insert_item(collection, &key, json)?;
                    }
                }
            }
            Keys::Some(keys) => {
                for key in keys {
                    for (table, key_column) in collection.tables() {
                        self.tx
                            .prepare_cached(&format!(
                                "DELETE FROM {table} WHERE node_id = ?1 AND {key_column} = ?2"
                            ))?
                            .execute(params![self.node, key])?;
                    }
                    let Some(section) = &section else {
                        continue;
                    };
                    if let Some(json) = self.read_entry(section, key)? {
                        self.insert_item(collection, key, json)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Inserts the rows of one item. The caller has deleted its old rows.
    fn insert_item(
        &self,
        collection: Collection,
        key: &str,
        json: Json,
    ) -> Result<(), MaterializeError> {
        let fact_path = format!("{}[{key:?}]", collection.doc_path().join("."));
        let tx = self.tx;
        let node = self.node;
        match collection {
            Collection::Packages => {
                let Some(p) = self.decode::<Package>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT INTO packages (node_id, key, name, version, release, epoch, arch,
                                           source, manager, full_version, install_time)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    node,
                    key,
                    p.name,
                    p.version,
                    p.release,
                    to_i64(p.epoch),
                    p.arch,
                    p.source,
                    p.manager,
                    p.full_version(),
                    p.install_time,
                ])?;
            }
            Collection::Services => {
                let Some(s) = self.decode::<Service>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT INTO services (node_id, name, enabled, active, unit_file, description)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    node,
                    key,
                    s.enabled,
                    s.active,
                    s.unit_file,
                    s.description
                ])?;
            }
            Collection::Interfaces => {
                let Some(i) = self.decode::<Interface>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT INTO interfaces (node_id, name, mac, mtu, state)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![node, key, i.mac, i.mtu, i.state])?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO addresses (node_id, interface, key, family, address, prefix_len,
                                            scope)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for (address_key, a) in &i.addresses {
                    let Address {
                        family,
                        address,
                        prefix_len,
                        scope,
                    } = a;
                    insert.execute(params![
                        node,
                        key,
                        address_key,
                        family,
                        address,
                        prefix_len,
                        scope
                    ])?;
                }
            }
            Collection::Routes => {
                let Some(r) = self.decode::<Route>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT INTO routes (node_id, key, destination, gateway, interface, metric)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    node,
                    key,
                    r.destination,
                    r.gateway,
                    r.interface,
                    r.metric
                ])?;
            }
            Collection::Listening => {
                let Some(l) = self.decode::<ListeningSocket>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT INTO listening_ports (node_id, key, protocol, address, port, process,
                                                  uid)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    node, key, l.protocol, l.address, l.port, l.process, l.uid
                ])?;
            }
            Collection::Users => {
                let Some(u) = self.decode::<User>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT INTO users (node_id, name, uid, gid, gecos, home, shell, admin)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    node, key, u.uid, u.gid, u.gecos, u.home, u.shell, u.admin
                ])?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO authorized_keys (node_id, user, position, fingerprint)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (position, fingerprint) in (1i64..).zip(&u.authorized_keys) {
                    insert.execute(params![node, key, position, fingerprint])?;
                }
            }
            Collection::Groups => {
                let Some(g) = self.decode::<Group>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached("INSERT INTO groups (node_id, name, gid) VALUES (?1, ?2, ?3)")?
                    .execute(params![node, key, g.gid])?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO group_members (node_id, group_name, position, member)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (position, member) in (1i64..).zip(&g.members) {
                    insert.execute(params![node, key, position, member])?;
                }
            }
            Collection::Mounts => {
                let Some(m) = self.decode::<Mount>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT INTO mounts (node_id, mount_point, device, fs_type, options,
                                         total_bytes, free_bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    node,
                    key,
                    m.device,
                    m.fs_type,
                    m.options,
                    to_i64(m.total_bytes),
                    to_i64(m.free_bytes),
                ])?;
            }
            Collection::BlockDevices => {
                let Some(b) = self.decode::<BlockDevice>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT INTO block_devices (node_id, name, size_bytes, model, rotational,
                                                removable)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    node,
                    key,
                    to_i64(b.size_bytes),
                    b.model,
                    b.rotational,
                    b.removable,
                ])?;
            }
            Collection::ScheduledTasks => {
                let Some(t) = self.decode::<ScheduledTask>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT INTO scheduled_tasks (node_id, key, kind, schedule, command, user,
                                                  source)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    node, key, t.kind, t.schedule, t.command, t.user, t.source
                ])?;
            }
            Collection::TrackedFiles => {
                let Some(f) = self.decode::<TrackedFile>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT INTO tracked_files (node_id, path, file_exists, sha256, size, mode,
                                                uid, gid, mtime, content)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    node,
                    key,
                    f.exists,
                    f.sha256,
                    to_i64(f.size),
                    f.mode,
                    f.uid,
                    f.gid,
                    f.mtime,
                    f.content,
                ])?;
            }
            Collection::CollectorErrors => {
                let Some(e) = self.decode::<CollectorError>(&fact_path, json) else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT INTO collector_errors (node_id, key, collector, path, message)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![node, key, e.collector, e.path, e.message])?;
            }
        }
        Ok(())
    }
}

fn scalar_to_json(value: &ScalarValue) -> Json {
    match value {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Bytes(b) => Json::String(hex::encode(b)),
        ScalarValue::Unknown { .. } | ScalarValue::Null => Json::Null,
    }
}

/// Converts a count or size to SQLite's signed integer; values beyond `i64::MAX` become NULL.
fn to_i64(value: Option<u64>) -> Option<i64> {
    value.and_then(|v| i64::try_from(v).ok())
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(keys: &[&'static str]) -> Vec<Step<'static>> {
        keys.iter().map(|key| Step::Key(key)).collect()
    }

    #[test]
    fn touched_package_field_names_one_item() {
        let mut touched = Touched::default();
        touched.add_path(&path(&["facts", "packages", "openssl:amd64", "version"]));
        touched.add_path(&path(&["facts", "packages", "curl:amd64"]));
        let expected: BTreeSet<String> = ["curl:amd64", "openssl:amd64"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            touched.collections.get(&Collection::Packages),
            Some(&Keys::Some(expected))
        );
        assert!(!touched.node_row);
        assert!(!touched.dns);
        assert_eq!(touched.collections.len(), 1);
    }

    #[test]
    fn touched_section_root_means_whole_section() {
        let mut touched = Touched::default();
        touched.add_path(&path(&["facts", "services", "ssh.service"]));
        touched.add_path(&path(&["facts", "services"]));
        touched.add_path(&path(&["facts", "services", "cron.service"]));
        assert_eq!(
            touched.collections.get(&Collection::Services),
            Some(&Keys::All)
        );
    }

    #[test]
    fn touched_scalar_sections_mark_node_row_or_dns() {
        let mut touched = Touched::default();
        touched.add_path(&path(&["facts", "os", "pretty_name"]));
        assert!(touched.node_row);
        assert!(touched.collections.is_empty());

        let mut touched = Touched::default();
        touched.add_path(&[
            Step::Key("facts"),
            Step::Key("dns"),
            Step::Key("servers"),
            Step::Index,
        ]);
        assert!(touched.dns);
        assert!(!touched.node_row);
    }

    #[test]
    fn touched_block_devices_live_under_hardware() {
        let mut touched = Touched::default();
        touched.add_path(&path(&[
            "facts",
            "hardware",
            "block_devices",
            "sda",
            "size_bytes",
        ]));
        assert!(!touched.node_row);
        let expected: BTreeSet<String> = ["sda".to_string()].into();
        assert_eq!(
            touched.collections.get(&Collection::BlockDevices),
            Some(&Keys::Some(expected))
        );

        let mut touched = Touched::default();
        touched.add_path(&path(&["facts", "hardware"]));
        assert!(touched.node_row);
        assert_eq!(
            touched.collections.get(&Collection::BlockDevices),
            Some(&Keys::All)
        );
    }

    #[test]
    fn touched_root_or_facts_means_everything() {
        for keys in [&[][..], &["facts"][..]] {
            let mut touched = Touched::default();
            touched.add_path(&path(keys));
            assert_eq!(touched, Touched::everything(), "path {keys:?}");
        }
    }

    #[test]
    fn touched_ignores_unknown_sections() {
        let mut touched = Touched::default();
        touched.add_path(&path(&["facts", "firmware_blobs", "x"]));
        touched.add_path(&path(&["policy", "x"]));
        assert_eq!(touched, Touched::default());
    }

    /// Records `edit` applied to `facts` and returns what the operations and the diff of that
    /// change touch.
    fn touched_both_ways(
        doc: &mut NodeDocument,
        identity: &Identity,
        facts: &mut fleetmesh_model::Facts,
        edit: impl FnOnce(&mut fleetmesh_model::Facts),
    ) -> (Touched, Touched) {
        let before = doc.heads();
        edit(facts);
        doc.record(identity, facts, 1).expect("record");
        let heads = doc.heads();
        let from_ops = Touched::from_paths(&doc.changed_paths(&before, &heads));
        let from_diff = Touched::from_paths(&patch_paths(&doc.diff(&before, &heads)));
        (from_ops, from_diff)
    }

    /// Returns the path from the root that each patch writes.
    fn patch_paths(patches: &[fleetmesh_model::Patch]) -> Vec<Vec<Prop>> {
        use fleetmesh_model::PatchAction;
        let mut out = Vec::new();
        for patch in patches {
            let mut path: Vec<Prop> = patch.path.iter().map(|(_, prop)| prop.clone()).collect();
            match &patch.action {
                PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => {
                    path.push(Prop::Map(key.clone()));
                }
                PatchAction::Conflict { prop } | PatchAction::Increment { prop, .. } => {
                    path.push(prop.clone());
                }
                _ => {}
            }
            out.push(path);
        }
        out
    }

    #[test]
    fn touched_from_operations_matches_diff() {
        let node = NodeId([4; 32]);
        let tenant = fleetmesh_model::TenantId::new("acme").expect("tenant");
        let mut doc = NodeDocument::new(tenant, node);
        let identity = Identity {
            node_id: node.to_string(),
            tenant: "acme".into(),
            site: "leeds".into(),
            hostname: "h1".into(),
            agent_version: "0.1.0".into(),
        };
        let mut facts = fleetmesh_model::Facts::default();
        for name in ["curl", "openssl", "zlib1g"] {
            let package = Package {
                name: name.into(),
                version: "1.0-1".into(),
                arch: Some("amd64".into()),
                manager: "dpkg".into(),
                ..Package::default()
            };
            facts.packages.insert(package.key(), package);
        }
        facts.groups.insert(
            "sudo".into(),
            Group {
                gid: 27,
                members: vec!["alice".into()],
            },
        );
        doc.record(&identity, &facts, 0).expect("first record");

        type Edit = Box<dyn FnOnce(&mut fleetmesh_model::Facts)>;
        let edits: Vec<Edit> = vec![
            Box::new(|f| {
                if let Some(p) = f.packages.get_mut("openssl:amd64") {
                    p.version = "3.0.13-1".into();
                }
            }),
            Box::new(|f| {
                f.packages.remove("curl:amd64");
            }),
            Box::new(|f| {
                if let Some(g) = f.groups.get_mut("sudo") {
                    g.members.push("bob".into());
                }
            }),
            Box::new(|f| f.os.pretty_name = Some("Debian 12".into())),
            Box::new(|f| f.dns.servers = vec!["10.0.0.53".into()]),
            Box::new(|f| {
                f.hardware
                    .block_devices
                    .insert("sda".into(), BlockDevice::default());
            }),
            Box::new(|f| f.packages.clear()),
        ];
        for (index, edit) in edits.into_iter().enumerate() {
            let (from_ops, from_diff) = touched_both_ways(&mut doc, &identity, &mut facts, edit);
            assert_eq!(from_ops, from_diff, "edit {index}");
            assert_ne!(from_ops, Touched::default(), "edit {index} touched nothing");
        }
    }

    #[test]
    fn fact_tables_match_create_statements() {
        let conn = Connection::open_in_memory().expect("in-memory database");
        create_tables(&conn).expect("create tables");
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .expect("prepare");
        let mut created: Vec<String> = stmt
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        created.sort();
        let mut listed: Vec<String> = FACT_TABLES.iter().map(|t| t.to_string()).collect();
        listed.sort();
        assert_eq!(created, listed);
    }
}
