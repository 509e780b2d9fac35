//! The node's SQLite store: signed changes, document snapshots, and materialized fact tables.
//!
//! Signed changes are the source of truth: rows of the `signed_changes` table are never deleted,
//! and every document can be rebuilt from its snapshot and them. History retention compacts
//! old node-document rows to their hash and signature, because the snapshot contains the same
//! bytes. Readers encode those bytes again from the snapshot (see [`Store::compact_changes`]). Each accepted change is written in one transaction together
//! with the fact-table rows it changes, so a change is either acknowledged and durable or not
//! there at all, even after `kill -9` (SQLite in WAL mode with `synchronous = FULL`).
//!
//! Documents are held in a bounded cache and rebuilt on a miss from the last snapshot plus the
//! changes stored after it. Queries never touch documents: they read the fact tables.

pub mod materialize;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use fleetmesh_model::{
    ChangeHash, ComplianceResult, DocId, DocKind, DocumentError, Facts, Identity, NodeDocument,
    NodeId, SignedChange, VerifyError, WireChange,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::sync::{ChainHead, ChainIndex, ChangeStore, Fingerprint, Prefix, ReconIndex};

/// SQLite `application_id` of a fleetmesh store ("FLMS"), so a foreign database is recognised.
pub const APPLICATION_ID: i32 = 0x464c_4d53;

/// Version of the store's own tables; bumped when their layout changes.
pub const STORE_FORMAT: i64 = 1;

/// Meta key holding the materializer version the fact tables were built with.
const META_FACT_TABLES: &str = "fact_tables_version";

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "fleetmesh.db";

/// Documents kept in memory at most; others are rebuilt from disk on demand.
pub const DOC_CACHE_MAX: usize = 128;

/// A document gets a fresh snapshot after this many changes since the last one.
const SNAPSHOT_EVERY: i64 = 64;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file is not a SQLite database or is damaged.
    #[error(
        "store {path} is corrupt ({reason}); move the data directory aside and start again to \
         resync from peers"
    )]
    Corrupt {
        /// Path of the database file.
        path: PathBuf,
        /// What SQLite reported.
        reason: String,
    },
    /// The database belongs to another program.
    #[error(
        "{path} is not a fleetmesh store (application id {found:#x}); choose another --data-dir"
    )]
    Foreign {
        /// Path of the database file.
        path: PathBuf,
        /// The application id found.
        found: i32,
    },
    /// The store was written by a newer fleetmesh.
    #[error("store {path} has format {found}, newer than this fleetmesh supports ({STORE_FORMAT}); upgrade fleetmesh")]
    TooNew {
        /// Path of the database file.
        path: PathBuf,
        /// The format found.
        found: i64,
    },
    /// The database has no store yet (read-only open of an empty data directory).
    #[error("no fleetmesh store at {path}; run `fleetmesh up` first or pass the right --data-dir")]
    Missing {
        /// Path of the database file.
        path: PathBuf,
    },
    /// SQLite failed.
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Updating the fact tables failed.
    #[error("updating fact tables failed: {0}")]
    Materialize(#[from] materialize::MaterializeError),
    /// A stored or received change failed to decode or apply.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// A stored change failed to decode.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The change is not the next one of its chain.
    #[error("change {seq} of {doc} by {author} is out of order: the store holds up to {held}")]
    OutOfOrder {
        /// The document id.
        doc: String,
        /// The author.
        author: String,
        /// The change's sequence number.
        seq: u64,
        /// The last sequence number stored.
        held: u64,
    },
    /// The operation reads node documents only.
    #[error("{0} documents cannot be read as node documents")]
    UnsupportedKind(&'static str),
}

/// Counts of one run of [`Store::compact_changes`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Signed changes whose bytes were dropped.
    pub changes: u64,
    /// Bytes of change data dropped.
    pub bytes: u64,
    /// Documents compacted.
    pub documents: usize,
    /// Whether documents beyond the limit still have changes to compact.
    pub more: bool,
}

/// The SQLite store of one node.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    index: ReconIndex,
    docs: DocCache,
    /// Highest `signed_changes` rowid already checked for changes written by other processes.
    external_seen: i64,
}

impl Store {
    /// Opens or creates the store in `data_dir`, checking that it is a fleetmesh store.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|err| corrupt(&path, err))?;
        check_header(&conn, &path, true)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|err| corrupt(&path, err))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        create_store_tables(&conn)?;
        materialize::create_tables(&conn)?;

        let mut store = Store {
            conn,
            path,
            index: ReconIndex::new(),
            docs: DocCache::new(DOC_CACHE_MAX),
            external_seen: 0,
        };
        store.load_index()?;
        store.external_seen = store.max_rowid()?;
        store.migrate_fact_tables()?;
        Ok(store)
    }

    /// Opens an existing store for reading only, as the read commands do.
    pub fn open_read_only(data_dir: &Path) -> Result<Connection, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::Missing { path });
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|err| corrupt(&path, err))?;
        check_header(&conn, &path, false)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    /// Returns the database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the connection, for fact-table updates and status writes.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Reads a value from the store's `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    /// Writes a value to the store's `meta` table.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Rebuilds the fact tables from the documents when they were written by another version
    /// of the materializer. The signed changes are untouched; only derived rows are replaced.
    fn migrate_fact_tables(&mut self) -> Result<(), StoreError> {
        let wanted = materialize::SCHEMA_VERSION.to_string();
        if self.meta(META_FACT_TABLES)?.as_deref() == Some(wanted.as_str()) {
            return Ok(());
        }
        let documents = self.documents()?;
        if !documents.is_empty() {
            tracing::info!(documents = documents.len(), version = %wanted, "rebuilding the fact tables");
        }
        materialize::drop_tables(&self.conn)?;
        materialize::create_tables(&self.conn)?;
        for id in documents.iter().filter(|id| id.kind == DocKind::Node) {
            let mut doc = read_document(&self.conn, id)?;
            let last_change: i64 = self.conn.query_row(
                "SELECT COALESCE(MAX(time), 0) FROM signed_changes WHERE doc = ?1",
                [id.to_bytes()],
                |row| row.get(0),
            )?;
            let tx = self.conn.transaction()?;
            materialize::rebuild_node(&tx, &mut doc, last_change)?;
            tx.commit()?;
        }
        self.set_meta(META_FACT_TABLES, &wanted)?;
        Ok(())
    }

    fn load_index(&mut self) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT doc, author, MAX(seq) FROM signed_changes GROUP BY doc, author")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (doc, author, seq) = row?;
            let doc = DocId::from_bytes(&doc).map_err(|err| corrupt_text(&self.path, err))?;
            let author = node_from_blob(&author)
                .ok_or_else(|| corrupt_text(&self.path, "an author column is not a 32-byte key"))?;
            self.index.set(ChainHead {
                doc,
                author,
                seq: u64::try_from(seq).unwrap_or(0),
            });
        }
        Ok(())
    }

    /// Records a new collection in this node's own document, signs the change and stores it.
    /// Returns the stored change, or `None` when nothing differs from the last collection.
    pub fn record_local(
        &mut self,
        doc_id: &DocId,
        identity: &Identity,
        facts: &Facts,
        time: i64,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<Option<SignedChange>, StoreError> {
        let loaded = self.load_doc(doc_id)?;
        let mut doc = loaded;
        let before = doc.heads();
        let change = match doc.record_signed(identity, facts, time, key) {
            Ok(Some(change)) => change,
            Ok(None) => {
                self.docs.put(doc_id.clone(), doc);
                return Ok(None);
            }
            // The cached copy may hold a half-written transaction: drop it and rebuild later.
            Err(err) => return Err(err.into()),
        };
        match self.commit_change(&mut doc, &change, &before) {
            Ok(()) => {
                self.docs.put(doc_id.clone(), doc);
                Ok(Some(change))
            }
            Err(err) => Err(err),
        }
    }

    /// Records this node's compliance results in its own document, signs the change and stores
    /// it. Returns the stored change, or `None` when the document already contains these results.
    pub fn record_local_compliance(
        &mut self,
        doc_id: &DocId,
        results: &BTreeMap<String, ComplianceResult>,
        time: i64,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<Option<SignedChange>, StoreError> {
        let mut doc = self.load_doc(doc_id)?;
        let before = doc.heads();
        // On an error the document copy may hold a half-written transaction; it is dropped.
        let Some(change) = doc.record_compliance(results, time, key)? else {
            self.docs.put(doc_id.clone(), doc);
            return Ok(None);
        };
        self.commit_change(&mut doc, &change, &before)?;
        self.docs.put(doc_id.clone(), doc);
        Ok(Some(change))
    }

    /// Returns a document, from the cache or rebuilt from disk. The caller puts it back with
    /// [`Store::return_doc`] or lets it drop to discard changes that were not stored.
    fn load_doc(&mut self, id: &DocId) -> Result<NodeDocument, StoreError> {
        if let Some(doc) = self.docs.take(id) {
            return Ok(doc);
        }
        read_document(&self.conn, id)
    }

    /// Returns a document to the cache after use.
    fn return_doc(&mut self, id: DocId, doc: NodeDocument) {
        self.docs.put(id, doc);
    }

    /// Reads one node's current identity and facts from its document.
    pub fn node_facts(&mut self, id: &DocId) -> Result<(Identity, Facts), StoreError> {
        let doc = self.load_doc(id)?;
        let result = doc
            .identity(None)
            .and_then(|identity| Ok((identity, doc.facts(None)?)));
        self.return_doc(id.clone(), doc);
        Ok(result?)
    }

    /// Writes the change row, snapshot if due, and fact-table rows in one transaction.
    fn commit_change(
        &mut self,
        doc: &mut NodeDocument,
        change: &SignedChange,
        before: &[ChangeHash],
    ) -> Result<(), StoreError> {
        let doc_bytes = change.doc().to_bytes();
        let tx = self.conn.transaction()?;
        let rowid = insert_change_row(&tx, change)?;
        tx.execute(
            "INSERT INTO documents (doc, kind, tenant, changes_since_snapshot)
             VALUES (?1, ?2, ?3, 1)
             ON CONFLICT (doc) DO UPDATE SET changes_since_snapshot = changes_since_snapshot + 1",
            params![
                doc_bytes,
                change.doc().kind.as_str(),
                change.doc().tenant.as_str()
            ],
        )?;
        let due: i64 = tx.query_row(
            "SELECT changes_since_snapshot FROM documents WHERE doc = ?1",
            [&doc_bytes],
            |row| row.get(0),
        )?;
        if due >= SNAPSHOT_EVERY {
            tx.execute(
                "UPDATE documents SET snapshot = ?2, snapshot_rowid = ?3, changes_since_snapshot = 0
                 WHERE doc = ?1",
                params![doc_bytes, doc.save(), rowid],
            )?;
        }
        materialize::apply_node_change(&tx, doc, before, change.header().time)?;
        tx.commit()?;

        self.index.set(ChainHead {
            doc: change.doc().clone(),
            author: change.author(),
            seq: change.seq(),
        });
        Ok(())
    }

    /// Returns the number of stored changes.
    pub fn change_count(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM signed_changes", [], |row| row.get(0))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Lists the ids of all stored documents.
    pub fn documents(&self) -> Result<Vec<DocId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT doc FROM documents ORDER BY doc")?;
        let rows = stmt.query_map([], |row| row.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(DocId::from_bytes(&row?).map_err(|err| corrupt_text(&self.path, err))?);
        }
        Ok(out)
    }

    /// Returns every stored change of `doc` in the order they were stored, which respects their
    /// dependencies.
    pub fn document_changes(&self, doc: &DocId) -> Result<Vec<SignedChange>, StoreError> {
        changes_after(&self.conn, doc, 0, true)
    }

    /// Stores a change of a tenant document (membership, policy) that this node signed, for
    /// commands that run beside the daemon. The daemon finds it with
    /// [`Store::take_external_changes`] and passes it on.
    pub fn insert_local_tenant_change(&mut self, change: &SignedChange) -> Result<(), StoreError> {
        if change.doc().kind == DocKind::Node {
            return Err(StoreError::UnsupportedKind(change.doc().kind.as_str()));
        }
        let held: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM signed_changes WHERE doc = ?1 AND author = ?2",
            params![change.doc().to_bytes(), change.author().0.to_vec()],
            |row| row.get(0),
        )?;
        let held = u64::try_from(held).unwrap_or(0);
        if change.seq() != held + 1 {
            return Err(StoreError::OutOfOrder {
                doc: change.doc().to_string(),
                author: change.author().to_string(),
                seq: change.seq(),
                held,
            });
        }
        self.commit_tenant_change(change)
    }

    /// Returns the changes other processes (the fleet commands) stored since the last call, and
    /// adds them to the chain index. The daemon calls this on a timer.
    pub fn take_external_changes(&mut self) -> Result<Vec<SignedChange>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT rowid, doc, author, seq, bytes, signature FROM signed_changes
             WHERE rowid > ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([self.external_seen], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Vec<u8>>(4)?,
                row.get::<_, Option<Vec<u8>>>(5)?,
            ))
        })?;
        let mut found = Vec::new();
        let mut last = self.external_seen;
        for row in rows {
            let (rowid, doc, author, seq, bytes, signature) = row?;
            last = last.max(rowid);
            let doc_id = DocId::from_bytes(&doc).map_err(|err| corrupt_text(&self.path, err))?;
            let author = node_from_blob(&author)
                .ok_or_else(|| corrupt_text(&self.path, "an author column is not a 32-byte key"))?;
            let seq = u64::try_from(seq).unwrap_or(0);
            if seq <= self.index.seq(&doc_id, &author) {
                continue;
            }
            found.push(decode_row(doc, bytes, signature)?);
        }
        drop(stmt);
        self.external_seen = last;
        for change in &found {
            self.index.set(ChainHead {
                doc: change.doc().clone(),
                author: change.author(),
                seq: change.seq(),
            });
        }
        Ok(found)
    }

    /// Remembers the certificate chain of a member, so that changes it wrote can be verified
    /// and passed on after a restart.
    pub fn save_member(&self, node: &NodeId, chain: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO members (node, chain) VALUES (?1, ?2)
             ON CONFLICT (node) DO UPDATE SET chain = excluded.chain",
            params![node.0.to_vec(), chain],
        )?;
        Ok(())
    }

    /// Returns every remembered certificate chain, encoded.
    pub fn members(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT chain FROM members")?;
        let rows = stmt.query_map([], |row| row.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?);
        }
        Ok(out)
    }

    fn max_rowid(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(rowid), 0) FROM signed_changes",
            [],
            |row| row.get(0),
        )?)
    }

    /// Writes a tenant document's change row. Tenant documents are small and are rebuilt from
    /// their changes when read, so they get no snapshot and no fact rows.
    fn commit_tenant_change(&mut self, change: &SignedChange) -> Result<(), StoreError> {
        let doc_bytes = change.doc().to_bytes();
        let tx = self.conn.transaction()?;
        insert_change_row(&tx, change)?;
        tx.execute(
            "INSERT INTO documents (doc, kind, tenant) VALUES (?1, ?2, ?3)
             ON CONFLICT (doc) DO NOTHING",
            params![
                doc_bytes,
                change.doc().kind.as_str(),
                change.doc().tenant.as_str()
            ],
        )?;
        tx.commit()?;
        self.index.set(ChainHead {
            doc: change.doc().clone(),
            author: change.author(),
            seq: change.seq(),
        });
        Ok(())
    }

    /// Records that `node` was heard from now, and whether it is connected.
    pub fn set_peer_status(
        &self,
        node: &NodeId,
        now: i64,
        connected: bool,
    ) -> Result<(), StoreError> {
        materialize::set_peer_status(&self.conn, node, now, connected)?;
        Ok(())
    }

    /// Marks every node as disconnected; called when the daemon starts.
    pub fn clear_connected(&self) -> Result<(), StoreError> {
        materialize::clear_connected(&self.conn)?;
        Ok(())
    }

    /// Deletes the rows of the `changes` table committed before `time` (Unix seconds) and
    /// returns how many were deleted. Signed changes, snapshots and the current facts stay, so
    /// documents can still be rebuilt and read at any earlier time.
    pub fn prune_history(&self, time: i64) -> rusqlite::Result<usize> {
        materialize::delete_changes_before(&self.conn, time)
    }

    /// Compacts the signed changes of node documents committed before `time` (Unix seconds).
    ///
    /// A compacted row keeps its author, sequence number, hash and signature, and drops its
    /// bytes, which are a second copy of what the document's snapshot already encodes. When a
    /// peer requests such a change, or a command reads it, the bytes are encoded again from the
    /// snapshot. Their hash is checked, so the original signature still verifies them. A
    /// document whose snapshot does not yet cover its old changes gets a fresh snapshot first.
    /// Tenant documents (membership, policies) have no snapshots and are left whole.
    ///
    /// At most `documents_max` documents are compacted per call, so that a caller on an event
    /// loop can spread a large first run over many short steps.
    pub fn compact_changes(
        &mut self,
        time: i64,
        documents_max: usize,
    ) -> Result<Compacted, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT s.doc, MAX(s.rowid), d.snapshot_rowid
             FROM signed_changes s JOIN documents d ON d.doc = s.doc
             WHERE d.kind = ?1 AND s.time < ?2 AND length(s.bytes) > 0
             GROUP BY s.doc LIMIT ?3",
        )?;
        let limit = i64::try_from(documents_max.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![DocKind::Node.as_str(), time, limit], |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut due = Vec::new();
        for row in rows {
            let (doc, newest_old, snapshot_rowid) = row?;
            let id = DocId::from_bytes(&doc).map_err(|err| corrupt_text(&self.path, err))?;
            due.push((id, newest_old, snapshot_rowid));
        }
        drop(stmt);

        let mut total = Compacted::default();
        if due.len() > documents_max {
            due.truncate(documents_max);
            total.more = true;
        }
        for (id, newest_old, snapshot_rowid) in due {
            let doc_bytes = id.to_bytes();
            if snapshot_rowid < newest_old {
                self.snapshot_now(&id)?;
            }
            let tx = self.conn.transaction()?;
            let (changes, bytes): (i64, i64) = tx.query_row(
                "SELECT COUNT(*), COALESCE(SUM(length(s.bytes)), 0)
                 FROM signed_changes s JOIN documents d ON d.doc = s.doc
                 WHERE s.doc = ?1 AND s.rowid <= d.snapshot_rowid AND s.time < ?2
                   AND length(s.bytes) > 0",
                params![doc_bytes, time],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            tx.execute(
                "UPDATE signed_changes SET bytes = x''
                 WHERE doc = ?1 AND time < ?2 AND length(bytes) > 0
                   AND rowid <= (SELECT snapshot_rowid FROM documents WHERE doc = ?1)",
                params![doc_bytes, time],
            )?;
            tx.commit()?;
            total.changes += u64::try_from(changes).unwrap_or(0);
            total.bytes += u64::try_from(bytes).unwrap_or(0);
            total.documents += 1;
        }
        Ok(total)
    }

    /// Saves a snapshot of a node document that covers every change stored for it.
    fn snapshot_now(&mut self, id: &DocId) -> Result<(), StoreError> {
        let mut doc = self.load_doc(id)?;
        let saved = write_snapshot(&self.conn, id, &mut doc);
        self.return_doc(id.clone(), doc);
        saved
    }

    /// Saves snapshots of cached documents with unsnapshotted changes; called on shutdown.
    pub fn flush_snapshots(&mut self) -> Result<(), StoreError> {
        let ids: Vec<DocId> = self.docs.ids();
        for id in ids {
            let pending: i64 = self
                .conn
                .query_row(
                    "SELECT changes_since_snapshot FROM documents WHERE doc = ?1",
                    [id.to_bytes()],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if pending == 0 {
                continue;
            }
            if let Some(mut doc) = self.docs.take(&id) {
                let saved = write_snapshot(&self.conn, &id, &mut doc);
                self.docs.put(id, doc);
                saved?;
            }
        }
        Ok(())
    }
}

/// Writes `doc` as the snapshot of `id`, covering every change stored for it.
fn write_snapshot(conn: &Connection, id: &DocId, doc: &mut NodeDocument) -> Result<(), StoreError> {
    let doc_bytes = id.to_bytes();
    let rowid: Option<i64> = conn.query_row(
        "SELECT MAX(rowid) FROM signed_changes WHERE doc = ?1",
        [&doc_bytes],
        |row| row.get(0),
    )?;
    if let Some(rowid) = rowid {
        conn.execute(
            "UPDATE documents SET snapshot = ?2, snapshot_rowid = ?3, changes_since_snapshot = 0
             WHERE doc = ?1",
            params![doc_bytes, doc.save(), rowid],
        )?;
    }
    Ok(())
}

impl ChainIndex for Store {
    fn seq(&self, doc: &DocId, author: &NodeId) -> u64 {
        self.index.seq(doc, author)
    }

    fn summary(&self, tenant: &fleetmesh_model::TenantId, prefix: Prefix) -> (Fingerprint, u64) {
        self.index.summary(tenant, prefix)
    }

    fn heads_in(&self, tenant: &fleetmesh_model::TenantId, prefix: Prefix) -> Vec<ChainHead> {
        self.index.heads_in(tenant, prefix)
    }

    fn tenants(&self) -> Vec<fleetmesh_model::TenantId> {
        self.index.tenants()
    }
}

impl ChangeStore for Store {
    type Error = StoreError;

    fn changes(
        &self,
        doc: &DocId,
        author: &NodeId,
        from: u64,
        to: u64,
    ) -> Result<Vec<SignedChange>, StoreError> {
        let doc_bytes = doc.to_bytes();
        let mut stmt = self.conn.prepare_cached(
            "SELECT bytes, signature, hash FROM signed_changes
             WHERE doc = ?1 AND author = ?2 AND seq BETWEEN ?3 AND ?4 ORDER BY seq",
        )?;
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let to = i64::try_from(to).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![doc_bytes, author.0.to_vec(), from, to], read_row)?;
        let mut refill = Refill::new(&self.conn, doc);
        let mut out = Vec::new();
        for row in rows {
            let (bytes, signature, hash) = row?;
            let bytes = refill.bytes(bytes, &hash)?;
            out.push(decode_row(doc_bytes.clone(), bytes, signature)?);
        }
        Ok(out)
    }

    fn contains(&self, hash: &ChangeHash) -> bool {
        let found = self
            .conn
            .prepare_cached("SELECT 1 FROM signed_changes WHERE hash = ?1")
            .and_then(|mut stmt| stmt.exists([hash.0.to_vec()]));
        match found {
            Ok(found) => found,
            Err(err) => {
                tracing::error!(error = %err, "store lookup of a change hash failed");
                false
            }
        }
    }

    fn insert(&mut self, change: &SignedChange) -> Result<(), StoreError> {
        let held = self.index.seq(change.doc(), &change.author());
        if change.seq() != held + 1 {
            return Err(StoreError::OutOfOrder {
                doc: change.doc().to_string(),
                author: change.author().to_string(),
                seq: change.seq(),
                held,
            });
        }
        if change.doc().kind != DocKind::Node {
            return self.commit_tenant_change(change);
        }
        let id = change.doc().clone();
        let mut doc = self.load_doc(&id)?;
        let before = doc.heads();
        doc.apply(change)?;
        // On failure the document copy with the unstored change is dropped, not cached.
        self.commit_change(&mut doc, change, &before)?;
        self.return_doc(id, doc);
        Ok(())
    }
}

/// Rebuilds a document from its last snapshot and the changes stored after it. Read commands
/// call this on a read-only connection.
pub fn read_document(conn: &Connection, id: &DocId) -> Result<NodeDocument, StoreError> {
    if id.kind != DocKind::Node {
        return Err(StoreError::UnsupportedKind(id.kind.as_str()));
    }
    // The snapshot and the changes after it are read in one read transaction. Otherwise the
    // daemon could write a newer snapshot and compact the rows after the older one in between.
    conn.execute_batch("SAVEPOINT read_document")?;
    let doc = read_snapshot_and_changes(conn, id);
    let released = conn.execute_batch("RELEASE read_document");
    let doc = doc?;
    released?;
    Ok(doc)
}

/// Loads the snapshot of the node document `id` and applies the changes stored after it.
fn read_snapshot_and_changes(conn: &Connection, id: &DocId) -> Result<NodeDocument, StoreError> {
    let doc_bytes = id.to_bytes();
    let snapshot: Option<(Option<Vec<u8>>, i64)> = conn
        .query_row(
            "SELECT snapshot, snapshot_rowid FROM documents WHERE doc = ?1",
            [&doc_bytes],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let (mut doc, after_rowid) = match snapshot {
        Some((Some(bytes), rowid)) if !bytes.is_empty() => {
            (NodeDocument::load(id.clone(), &bytes)?, rowid)
        }
        _ => (NodeDocument::new(id.tenant.clone(), NodeId(id.key)), 0),
    };

    // Compacted rows are never newer than the snapshot, so none is read here.
    for change in changes_after(conn, id, after_rowid, false)? {
        doc.apply(&change)?;
    }
    Ok(doc)
}

/// Reads every stored change of `id` in storage order, which respects their dependencies. Read
/// commands call this on a read-only connection.
pub fn read_changes(conn: &Connection, id: &DocId) -> Result<Vec<SignedChange>, StoreError> {
    changes_after(conn, id, 0, true)
}

/// Lists the stored documents of one kind.
pub fn list_documents(conn: &Connection, kind: DocKind) -> Result<Vec<DocId>, StoreError> {
    let mut stmt = conn.prepare("SELECT doc FROM documents WHERE kind = ?1 ORDER BY doc")?;
    let rows = stmt.query_map([kind.as_str()], |row| row.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for row in rows {
        let bytes = row?;
        match DocId::from_bytes(&bytes) {
            Ok(id) => out.push(id),
            Err(err) => {
                tracing::warn!(error = %err, "skipping a stored document with an invalid id")
            }
        }
    }
    Ok(out)
}

/// Reads the changes of `id` stored after `after_rowid`, in storage order. With `refill`,
/// compacted rows get their bytes from the document's snapshot. Without it, a compacted row is
/// an error, because the caller is itself rebuilding the document from that snapshot.
fn changes_after(
    conn: &Connection,
    id: &DocId,
    after_rowid: i64,
    refill: bool,
) -> Result<Vec<SignedChange>, StoreError> {
    let doc_bytes = id.to_bytes();
    let mut stmt = conn.prepare_cached(
        "SELECT bytes, signature, hash FROM signed_changes WHERE doc = ?1 AND rowid > ?2
         ORDER BY rowid",
    )?;
    let rows = stmt.query_map(params![doc_bytes, after_rowid], read_row)?;
    let mut source = Refill::new(conn, id);
    let mut out = Vec::new();
    for row in rows {
        let (bytes, signature, hash) = row?;
        let bytes = if refill || !bytes.is_empty() {
            source.bytes(bytes, &hash)?
        } else {
            return Err(StoreError::Corrupt {
                path: conn_path(conn),
                reason: format!(
                    "change {} of {id} was compacted but is newer than the document's snapshot",
                    hex_of(&hash)
                ),
            });
        };
        out.push(decode_row(doc_bytes.clone(), bytes, signature)?);
    }
    Ok(out)
}

/// One `signed_changes` row as read for decoding: bytes, signature and hash.
type ChangeRow = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ChangeRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

/// Supplies the bytes of compacted rows, encoded again from the document's snapshot, which is
/// loaded on the first compacted row only.
struct Refill<'a> {
    conn: &'a Connection,
    id: &'a DocId,
    doc: Option<NodeDocument>,
}

impl<'a> Refill<'a> {
    fn new(conn: &'a Connection, id: &'a DocId) -> Self {
        Refill {
            conn,
            id,
            doc: None,
        }
    }

    /// Returns `stored` when the row kept its bytes, or the change re-encoded from the document.
    fn bytes(&mut self, stored: Vec<u8>, hash: &[u8]) -> Result<Vec<u8>, StoreError> {
        if !stored.is_empty() {
            return Ok(stored);
        }
        let missing = |reason: &str| StoreError::Corrupt {
            path: conn_path(self.conn),
            reason: format!("compacted change {} of {}: {reason}", hex_of(hash), self.id),
        };
        let hash = ChangeHash::try_from(hash).map_err(|_| missing("its hash is not 32 bytes"))?;
        let doc = match &mut self.doc {
            Some(doc) => doc,
            None => self.doc.insert(read_document(self.conn, self.id)?),
        };
        doc.change_bytes(&hash)
            .ok_or_else(|| missing("the document's snapshot does not contain it"))
    }
}

/// Returns the database file of `conn`, for error messages.
fn conn_path(conn: &Connection) -> PathBuf {
    PathBuf::from(conn.path().unwrap_or(DB_FILE))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Turns a `signed_changes` row back into a change.
fn decode_row(
    doc: Vec<u8>,
    bytes: Vec<u8>,
    signature: Option<Vec<u8>>,
) -> Result<SignedChange, StoreError> {
    Ok(WireChange {
        doc,
        bytes,
        signature,
    }
    .into_signed()?)
}

/// Inserts one change row and returns its rowid.
fn insert_change_row(
    tx: &rusqlite::Transaction<'_>,
    change: &SignedChange,
) -> Result<i64, StoreError> {
    let seq = i64::try_from(change.seq()).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO signed_changes (doc, author, seq, hash, bytes, signature, time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            change.doc().to_bytes(),
            change.author().0.to_vec(),
            seq,
            change.hash().0.to_vec(),
            change.bytes(),
            change.signature().map(|s| s.to_vec()),
            change.header().time,
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

fn create_store_tables(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (
             key TEXT PRIMARY KEY,
             value TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS signed_changes (
             doc BLOB NOT NULL,
             author BLOB NOT NULL,
             seq INTEGER NOT NULL,
             hash BLOB NOT NULL UNIQUE,
             bytes BLOB NOT NULL,
             signature BLOB,
             time INTEGER NOT NULL,
             PRIMARY KEY (doc, author, seq)
         );
         CREATE TABLE IF NOT EXISTS documents (
             doc BLOB PRIMARY KEY,
             kind TEXT NOT NULL,
             tenant TEXT NOT NULL,
             snapshot BLOB,
             snapshot_rowid INTEGER NOT NULL DEFAULT 0,
             changes_since_snapshot INTEGER NOT NULL DEFAULT 0
         );
         CREATE TABLE IF NOT EXISTS members (
             node BLOB PRIMARY KEY,
             chain BLOB NOT NULL
         );
         CREATE TABLE IF NOT EXISTS peers (
             node_id TEXT PRIMARY KEY,
             addresses TEXT NOT NULL,
             last_seen INTEGER NOT NULL
         );",
    )?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_format', ?1)",
        [STORE_FORMAT.to_string()],
    )?;
    Ok(())
}

/// Checks `application_id` and format. A new, empty database gets the fleetmesh id when
/// `writable`; a read-only open of an empty database reports the store as missing.
fn check_header(conn: &Connection, path: &Path, writable: bool) -> Result<(), StoreError> {
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(|err| corrupt(path, err))?;
    let table_count: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(|err| corrupt(path, err))?;

    if app_id == 0 && table_count == 0 {
        if !writable {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(|err| corrupt(path, err))?;
        return Ok(());
    }
    if app_id != APPLICATION_ID {
        return Err(StoreError::Foreign {
            path: path.to_path_buf(),
            found: app_id,
        });
    }

    let format: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'store_format'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(|err| corrupt(path, err))?;
    let format: i64 = format.and_then(|f| f.parse().ok()).unwrap_or(0);
    if format > STORE_FORMAT {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: format,
        });
    }
    Ok(())
}

fn corrupt(path: &Path, err: rusqlite::Error) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: err.to_string(),
    }
}

fn corrupt_text(path: &Path, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn node_from_blob(bytes: &[u8]) -> Option<NodeId> {
    let key: [u8; 32] = bytes.try_into().ok()?;
    Some(NodeId(key))
}

/// A small least-recently-used cache of documents.
struct DocCache {
    max: usize,
    docs: BTreeMap<DocId, NodeDocument>,
    order: VecDeque<DocId>,
}

impl DocCache {
    fn new(max: usize) -> Self {
        DocCache {
            max,
            docs: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    fn take(&mut self, id: &DocId) -> Option<NodeDocument> {
        let doc = self.docs.remove(id)?;
        self.order.retain(|other| other != id);
        Some(doc)
    }

    fn put(&mut self, id: DocId, doc: NodeDocument) {
        self.order.retain(|other| other != &id);
        self.order.push_back(id.clone());
        self.docs.insert(id, doc);
        while self.docs.len() > self.max {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.docs.remove(&oldest);
                }
                None => break,
            }
        }
    }

    fn ids(&self) -> Vec<DocId> {
        self.order.iter().cloned().collect()
    }
}
