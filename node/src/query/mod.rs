//! Fleet-wide, read-only SQL over the materialized fact tables.
//!
//! [`open_read_only`] opens the store as the read commands do: read-only at the SQLite level,
//! `PRAGMA query_only` on, and the version functions registered. It works while the daemon
//! writes the same database (WAL mode) and while the daemon is stopped.
//!
//! [`run_query`] runs exactly one statement under three guards:
//! - an authorizer, active while the statement compiles and runs, rejects every write, ATTACH,
//!   and any PRAGMA outside a short read-only list;
//! - SQLite must consider the compiled statement read-only;
//! - a progress handler stops the statement at the time limit.
//!
//! Results are capped at a row limit, and [`QueryResult::truncated`] is set when the cap cut them.
//!
//! ```
//! use fleetmesh_node::query::{format_result, run_query, Format, QueryOptions};
//!
//! let conn = rusqlite::Connection::open_in_memory()?;
//! fleetmesh_node::query::register_functions(&conn)?;
//! let result = run_query(
//!     &conn,
//!     "SELECT deb_version_cmp('3.0.11-1~deb12u2', '3.0.13') AS older",
//!     &QueryOptions::default(),
//! )?;
//! assert_eq!(format_result(&result, Format::Csv), "older\r\n-1\r\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod format;
mod functions;
mod history;
mod nodes;
mod schema;
pub mod version;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use rusqlite::{Batch, Connection, ErrorCode, OpenFlags};
use serde::Serialize;
use serde_json::Value as Json;

pub use format::{format_result, Format, UnknownFormat, TABLE_CELL_WIDTH_MAX};
pub use functions::register_functions;
pub use history::node_history;
pub use nodes::{list_nodes, show_node, NodeSummary};
pub use schema::{schema, schema_markdown, ColumnDoc, TableDoc};

/// Default time limit of one query.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Default maximum number of rows one query returns.
pub const ROW_LIMIT_DEFAULT: usize = 10_000;

/// How long a read-only connection waits for a lock (WAL recovery by another process) before
/// failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite virtual machine steps between two checks of the time limit.
const PROGRESS_STEPS: i32 = 1_000;

/// PRAGMAs a query may run. They read the schema or settings and change nothing; every other
/// PRAGMA, and every PRAGMA that assigns a value, is rejected.
const PRAGMAS_ALLOWED: [&str; 14] = [
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "database_list",
    "function_list",
    "pragma_list",
    "collation_list",
    "compile_options",
    "user_version",
    "application_id",
];

/// PRAGMAs from [`PRAGMAS_ALLOWED`] whose argument names a table or index, not a new value.
const PRAGMAS_WITH_NAME_ARGUMENT: [&str; 7] = [
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
];

/// Errors from opening the store for queries and from running them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// No database file at the path.
    #[error("no fleetmesh store at {path}; run `fleetmesh up` first or pass the right --data-dir")]
    Missing {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The file exists but SQLite could not open or read it.
    #[error("cannot open store {path} for reading: {source}; check the file's permissions and --data-dir")]
    Open {
        /// The database path.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The query text contains no statement.
    #[error(
        "the query is empty; pass one SQL statement, for example \"SELECT hostname FROM nodes\""
    )]
    Empty,
    /// The query text contains more than one statement.
    #[error(
        "the query contains more than one statement; run one statement at a time \
         (remove the text after the first ';')"
    )]
    MultipleStatements,
    /// The statement would change something.
    #[error("{action} is not allowed: queries are read-only; use SELECT (or WITH ... SELECT)")]
    NotReadOnly {
        /// Description of the rejected action, for example `DELETE FROM packages`.
        action: String,
    },
    /// The statement does not parse.
    #[error("SQL syntax error{}: {message}", position_text(*.line, *.column))]
    Syntax {
        /// SQLite's message, for example `near "SELEC": syntax error`.
        message: String,
        /// Line of the offending token, from 1, when SQLite reports a position.
        line: Option<usize>,
        /// Column of the offending token in characters, from 1, when SQLite reports a position.
        column: Option<usize>,
    },
    /// The statement names a table that does not exist.
    #[error("no such table: {table}; the tables are {}; run `fleetmesh schema` for their columns", .tables.join(", "))]
    NoSuchTable {
        /// The missing table as written.
        table: String,
        /// The tables and views in the database.
        tables: Vec<String>,
    },
    /// The statement names a column that does not exist.
    #[error("no such column: {column}; run `fleetmesh schema` to list the columns of each table")]
    NoSuchColumn {
        /// The missing column as written.
        column: String,
    },
    /// The statement ran longer than the time limit.
    #[error("the query timed out after {}; narrow it with WHERE or LIMIT, or raise --timeout", humanize(*.timeout))]
    Timeout {
        /// The time limit.
        timeout: Duration,
    },
    /// No node matches a `show` selector.
    #[error(
        "no node matches {selector:?} by node id, node id prefix or host name; run `fleetmesh nodes` to list nodes"
    )]
    NodeNotFound {
        /// The selector as given.
        selector: String,
    },
    /// Several nodes match a `show` selector.
    #[error(
        "{selector:?} matches {count} nodes: {}{}; pass a longer node id prefix or a full node id",
        .candidates.join(", "),
        if *.count > .candidates.len() { ", ..." } else { "" }
    )]
    AmbiguousNode {
        /// The selector as given.
        selector: String,
        /// How many nodes match.
        count: usize,
        /// Some of the matching nodes, as `node_id (hostname)`.
        candidates: Vec<String>,
    },
    /// Any other SQLite failure.
    #[error("query failed: {0}")]
    Sql(#[from] rusqlite::Error),
}

fn position_text(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" at line {line}, column {column}"),
        _ => String::new(),
    }
}

fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

/// Limits of one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryOptions {
    /// Time limit, measured from the start of [`run_query`].
    pub timeout: Duration,
    /// Maximum number of rows returned. Any further row sets [`QueryResult::truncated`].
    pub row_limit: usize,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            timeout: TIMEOUT_DEFAULT,
            row_limit: ROW_LIMIT_DEFAULT,
        }
    }
}

/// Columns and rows of a query.
///
/// Values map to JSON as: NULL to `null`, integers and finite reals to numbers, text to
/// strings, blobs to strings of lower-case hex, and infinite or NaN reals to the strings
/// `"inf"`, `"-inf"` and `"NaN"`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryResult {
    /// Column names as SQLite reports them.
    pub columns: Vec<String>,
    /// Rows, each with one value per column.
    pub rows: Vec<Vec<Json>>,
    /// Whether the row limit cut the result.
    pub truncated: bool,
}

/// Opens the store at `path` (the database file) for queries: read-only, `query_only` on, and
/// the version functions registered.
///
/// NOTE: a read-only SQLite connection to a WAL database needs the `-wal` and `-shm` files to
/// exist or the directory to be writable by the caller. A user who cannot write the daemon's
/// data directory can read it only while the daemon runs.
pub fn open_read_only(path: &Path) -> Result<Connection, QueryError> {
    if !path.exists() {
        return Err(QueryError::Missing {
            path: path.to_path_buf(),
        });
    }
    let open_error = |source| QueryError::Open {
        path: path.to_path_buf(),
        source,
    };

    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
    conn.pragma_update(None, "query_only", "ON")
        .map_err(open_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    register_functions(&conn).map_err(open_error)?;

    // Opening is lazy; reading the schema finds a file that is not a database now.
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| {
        row.get::<_, i64>(0)
    })
    .map_err(open_error)?;
    Ok(conn)
}

/// Runs one read-only SQL statement on `conn` within the limits of `options`.
///
/// The authorizer and progress handler are installed on `conn` for the duration of the call
/// and removed afterwards, so `conn` may be any connection with the version functions
/// registered.
pub fn run_query(
    conn: &Connection,
    sql: &str,
    options: &QueryOptions,
) -> Result<QueryResult, QueryError> {
    let rejected: Arc<Mutex<Option<Rejection>>> = Arc::new(Mutex::new(None));
    let outcome = {
        let _guards = Guards::install(conn, options.timeout, Arc::clone(&rejected));
        execute(conn, sql, options.row_limit)
    };

    let rejected = rejected
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    outcome.map_err(|failure| match (failure, rejected) {
        (Failure::Empty, _) => QueryError::Empty,
        (Failure::MultipleStatements, _) => QueryError::MultipleStatements,
        (Failure::NotReadOnly(action), _) => QueryError::NotReadOnly { action },
        (Failure::Sqlite(_), Some(Rejection::Action(action))) => QueryError::NotReadOnly { action },
        (Failure::Sqlite(_), Some(Rejection::SchemaChange)) => QueryError::NotReadOnly {
            action: format!("{} (a schema change)", leading_keywords(sql)),
        },
        (Failure::Sqlite(err), None) => classify(conn, sql, err, options.timeout),
    })
}

/// Reason [`execute`] failed, before it is turned into a [`QueryError`].
enum Failure {
    Empty,
    MultipleStatements,
    NotReadOnly(String),
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(err: rusqlite::Error) -> Self {
        Failure::Sqlite(err)
    }
}

fn execute(conn: &Connection, sql: &str, row_limit: usize) -> Result<QueryResult, Failure> {
    // Compile the first statement; anything after it must be whitespace or comments.
    let mut batch = Batch::new(conn, sql);
    let mut stmt = match batch.next()? {
        Some(stmt) => stmt,
        None => return Err(Failure::Empty),
    };
    if !matches!(batch.next(), Ok(None)) {
        return Err(Failure::MultipleStatements);
    }
    if !stmt.readonly() {
        return Err(Failure::NotReadOnly(leading_keywords(sql)));
    }

    // Run it, keeping at most `row_limit` rows and noting whether more exist.
    let columns: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    let mut truncated = false;
    while let Some(row) = rows.next()? {
        if out.len() == row_limit {
            truncated = true;
            break;
        }
        let mut values = Vec::with_capacity(columns.len());
        for index in 0..columns.len() {
            values.push(value_to_json(row.get_ref(index)?));
        }
        out.push(values);
    }
    Ok(QueryResult {
        columns,
        rows: out,
        truncated,
    })
}

/// The authorizer and progress handler of one [`run_query`] call. Dropping it removes both.
struct Guards<'c> {
    conn: &'c Connection,
}

impl<'c> Guards<'c> {
    fn install(
        conn: &'c Connection,
        timeout: Duration,
        rejected: Arc<Mutex<Option<Rejection>>>,
    ) -> Self {
        conn.authorizer(Some(move |context: AuthContext<'_>| {
            match rejection(&context.action) {
                None => Authorization::Allow,
                Some(action) => {
                    let mut slot = rejected.lock().unwrap_or_else(PoisonError::into_inner);
                    slot.get_or_insert(action);
                    Authorization::Deny
                }
            }
        }));
        let deadline = Instant::now() + timeout;
        conn.progress_handler(PROGRESS_STEPS, Some(move || Instant::now() >= deadline));
        Guards { conn }
    }
}

impl Drop for Guards<'_> {
    fn drop(&mut self) {
        self.conn
            .authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
        self.conn.progress_handler(0, None::<fn() -> bool>);
    }
}

/// An action the authorizer rejected.
enum Rejection {
    /// A write to the schema table, the first step of CREATE, DROP and ALTER. The statement's
    /// leading keywords name it better than the write does.
    SchemaChange,
    /// Any other action, described for the error message.
    Action(String),
}

/// Tables that hold the schema; SQLite writes them for CREATE, DROP and ALTER.
const SCHEMA_TABLES: [&str; 4] = [
    "sqlite_master",
    "sqlite_schema",
    "sqlite_temp_master",
    "sqlite_temp_schema",
];

/// Returns why a query may not perform `action`, or `None` if it may.
fn rejection(action: &AuthAction<'_>) -> Option<Rejection> {
    let table = match action {
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name } => Some(*table_name),
        _ => None,
    };
    if table.is_some_and(|t| SCHEMA_TABLES.contains(&t)) {
        return Some(Rejection::SchemaChange);
    }
    describe_rejection(action).map(Rejection::Action)
}

/// Describes `action` if a query may not perform it.
fn describe_rejection(action: &AuthAction<'_>) -> Option<String> {
    match action {
        // SQLite leaves load_extension() off unless a program enables it; this keeps it off
        // even on a connection that did.
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            Some("load_extension()".to_string())
        }
        AuthAction::Select
        | AuthAction::Read { .. }
        | AuthAction::Function { .. }
        | AuthAction::Recursive => None,
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let allowed = PRAGMAS_ALLOWED.contains(&name.as_str())
                && (pragma_value.is_none() || PRAGMAS_WITH_NAME_ARGUMENT.contains(&name.as_str()));
            match (allowed, pragma_value) {
                (true, _) => None,
                (false, Some(value)) => Some(format!("PRAGMA {pragma_name} = {value}")),
                (false, None) => Some(format!("PRAGMA {pragma_name}")),
            }
        }
        AuthAction::Attach { filename } => Some(format!("ATTACH of {filename:?}")),
        AuthAction::Detach { database_name } => Some(format!("DETACH of {database_name:?}")),
        AuthAction::Insert { table_name } => Some(format!("INSERT INTO {table_name}")),
        AuthAction::Update { table_name, .. } => Some(format!("UPDATE {table_name}")),
        AuthAction::Delete { table_name } => Some(format!("DELETE FROM {table_name}")),
        AuthAction::CreateTable { table_name } | AuthAction::CreateTempTable { table_name } => {
            Some(format!("CREATE TABLE {table_name}"))
        }
        AuthAction::DropTable { table_name } | AuthAction::DropTempTable { table_name } => {
            Some(format!("DROP TABLE {table_name}"))
        }
        AuthAction::CreateIndex { index_name, .. }
        | AuthAction::CreateTempIndex { index_name, .. } => {
            Some(format!("CREATE INDEX {index_name}"))
        }
        AuthAction::DropIndex { index_name, .. } | AuthAction::DropTempIndex { index_name, .. } => {
            Some(format!("DROP INDEX {index_name}"))
        }
        AuthAction::CreateView { view_name } | AuthAction::CreateTempView { view_name } => {
            Some(format!("CREATE VIEW {view_name}"))
        }
        AuthAction::DropView { view_name } | AuthAction::DropTempView { view_name } => {
            Some(format!("DROP VIEW {view_name}"))
        }
        AuthAction::CreateTrigger { trigger_name, .. }
        | AuthAction::CreateTempTrigger { trigger_name, .. } => {
            Some(format!("CREATE TRIGGER {trigger_name}"))
        }
        AuthAction::DropTrigger { trigger_name, .. }
        | AuthAction::DropTempTrigger { trigger_name, .. } => {
            Some(format!("DROP TRIGGER {trigger_name}"))
        }
        AuthAction::CreateVtable { table_name, .. } => {
            Some(format!("CREATE VIRTUAL TABLE {table_name}"))
        }
        AuthAction::DropVtable { table_name, .. } => Some(format!("DROP TABLE {table_name}")),
        AuthAction::AlterTable { table_name, .. } => Some(format!("ALTER TABLE {table_name}")),
        AuthAction::Reindex { .. } => Some("REINDEX".to_string()),
        AuthAction::Analyze { .. } => Some("ANALYZE".to_string()),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Some("transaction control".to_string())
        }
        other => Some(format!("{other:?}")),
    }
}

/// Returns the statement's leading keywords in upper case (`DELETE`, `CREATE TEMP TABLE`), to
/// name a rejected statement.
fn leading_keywords(sql: &str) -> String {
    const MODIFIERS: [&str; 8] = [
        "TEMP",
        "TEMPORARY",
        "TABLE",
        "INDEX",
        "UNIQUE",
        "VIEW",
        "TRIGGER",
        "VIRTUAL",
    ];
    let mut words = sql.split_whitespace().map(str::to_ascii_uppercase);
    let Some(first) = words
        .next()
        .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
    else {
        return "this statement".to_string();
    };
    let mut out = first;
    for word in words.take_while(|w| MODIFIERS.contains(&w.as_str())) {
        out.push(' ');
        out.push_str(&word);
    }
    out
}

/// Turns an SQLite error into the matching [`QueryError`].
fn classify(conn: &Connection, sql: &str, err: rusqlite::Error, timeout: Duration) -> QueryError {
    let (message, offset) = match &err {
        rusqlite::Error::SqlInputError { msg, offset, .. } => (msg.clone(), Some(*offset)),
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.code == ErrorCode::OperationInterrupted =>
        {
            return QueryError::Timeout { timeout };
        }
        rusqlite::Error::SqliteFailure(_, Some(msg)) => (msg.clone(), None),
        _ => return QueryError::Sql(err),
    };

    if let Some(table) = message.strip_prefix("no such table: ") {
        return match table_names(conn) {
            Ok(tables) => QueryError::NoSuchTable {
                table: table.to_string(),
                tables,
            },
            Err(_) => QueryError::Sql(err),
        };
    }
    if let Some(column) = message.strip_prefix("no such column: ") {
        return QueryError::NoSuchColumn {
            column: column.to_string(),
        };
    }
    let is_syntax = message.contains("syntax error")
        || message.contains("incomplete input")
        || message.contains("unrecognized token");
    if is_syntax {
        let (line, column) = match offset.and_then(|o| usize::try_from(o).ok()) {
            Some(offset) => {
                let (line, column) = line_and_column(sql, offset);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        return QueryError::Syntax {
            message,
            line,
            column,
        };
    }
    QueryError::Sql(err)
}

/// Converts a byte offset into `sql` to a line and a character column, both from 1.
fn line_and_column(sql: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(sql.len());
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    let before = &sql[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Lists the tables and views of the database, for the "no such table" error.
fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_schema
         WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
         ORDER BY name",
    )?;
    let names = stmt.query_map([], |row| row.get(0))?.collect();
    names
}

fn value_to_json(value: ValueRef<'_>) -> Json {
    match value {
        ValueRef::Null => Json::Null,
        ValueRef::Integer(n) => Json::from(n),
        ValueRef::Real(f) => match serde_json::Number::from_f64(f) {
            Some(number) => Json::Number(number),
            None if f.is_nan() => Json::String("NaN".into()),
            None if f > 0.0 => Json::String("inf".into()),
            None => Json::String("-inf".into()),
        },
        ValueRef::Text(bytes) => Json::String(String::from_utf8_lossy(bytes).into_owned()),
        ValueRef::Blob(bytes) => Json::String(hex::encode(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let sql = "SELECT 1,\n  é FROM x";
        assert_eq!(line_and_column(sql, 0), (1, 1));
        assert_eq!(line_and_column(sql, 12), (2, 3));
        // Offset inside a multi-byte character points at that character.
        assert_eq!(line_and_column(sql, 13), (2, 3));
        assert_eq!(line_and_column(sql, 1_000), (2, 11));
    }

    #[test]
    fn leading_keywords_name_statement() {
        assert_eq!(leading_keywords("  delete from nodes"), "DELETE");
        assert_eq!(
            leading_keywords("create temp table x (a)"),
            "CREATE TEMP TABLE"
        );
        assert_eq!(leading_keywords("(select 1)"), "this statement");
    }
}
