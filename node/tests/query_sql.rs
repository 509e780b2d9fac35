//! Read-only SQL over the fact tables: statement guards, error messages, limits, formats,
//! node listings, and the schema description against the real tables.

use std::path::Path;
use std::time::{Duration, Instant};

use fleetmesh_model::facts::Package;
use fleetmesh_model::{Facts, Identity, NodeDocument, NodeId, TenantId};
use fleetmesh_node::query::{
    format_result, list_nodes, open_read_only, run_query, schema, schema_markdown, show_node,
    Format, QueryError, QueryOptions,
};
use fleetmesh_node::store::materialize::{apply_node_change, create_tables, set_peer_status};
use rusqlite::Connection;

const T0: i64 = 1_700_000_000;

/// Writes one node with the given packages into the fact tables.
fn add_node(conn: &mut Connection, seed: u8, hostname: &str, packages: &[(&str, &str)]) -> String {
    let node = NodeId([seed; 32]);
    let mut doc = NodeDocument::new(TenantId::new("acme").expect("tenant"), node);
    let identity = Identity {
        node_id: node.to_string(),
        tenant: "acme".to_string(),
        site: "leeds".to_string(),
        hostname: hostname.to_string(),
        agent_version: "0.1.0".to_string(),
    };
    let mut facts = Facts::default();
    facts.system.hostname = hostname.to_string();
    facts.os.pretty_name = Some("Debian GNU/Linux 12 (bookworm)".to_string());
    for (name, version) in packages {
        let package = Package {
            name: name.to_string(),
            version: version.to_string(),
            arch: Some("amd64".to_string()),
            manager: "dpkg".to_string(),
            ..Package::default()
        };
        facts.packages.insert(package.key(), package);
    }
    doc.record(&identity, &facts, T0).expect("record");
    let tx = conn.transaction().expect("begin");
    apply_node_change(&tx, &mut doc, &[], T0).expect("materialize");
    tx.commit().expect("commit");
    node.to_string()
}

/// Creates a store file in WAL mode with three nodes, as the daemon would leave it.
fn fleet_db(dir: &Path) -> (std::path::PathBuf, Connection) {
    let path = dir.join("fleetmesh.db");
    let mut conn = Connection::open(&path).expect("create database");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL");
    create_tables(&conn).expect("create tables");
    add_node(
        &mut conn,
        1,
        "web01",
        &[("openssl", "3.0.11-1~deb12u2"), ("curl", "7.88.1-10")],
    );
    add_node(&mut conn, 2, "web02", &[("openssl", "3.0.13-1~deb12u1")]);
    add_node(
        &mut conn,
        3,
        "db01",
        &[("openssl", "1:1.1.1w-0+deb11u1"), ("postgresql", "15.6-0")],
    );
    (path, conn)
}

fn options() -> QueryOptions {
    QueryOptions::default()
}

fn counts(conn: &Connection) -> (i64, i64) {
    let nodes = conn
        .query_row("SELECT count(*) FROM nodes", [], |r| r.get(0))
        .expect("nodes");
    let packages = conn
        .query_row("SELECT count(*) FROM packages", [], |r| r.get(0))
        .expect("packages");
    (nodes, packages)
}

#[test]
fn query_finds_old_package_versions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, _writer) = fleet_db(dir.path());
    let conn = open_read_only(&path).expect("open read-only");

    let result = run_query(
        &conn,
        "SELECT n.hostname, p.full_version FROM packages p JOIN nodes n USING (node_id)
         WHERE p.name = 'openssl' AND deb_version_cmp(p.full_version, '3.0.13') < 0
         ORDER BY n.hostname",
        &options(),
    )
    .expect("query");
    assert_eq!(result.columns, ["hostname", "full_version"]);
    let hosts: Vec<&str> = result
        .rows
        .iter()
        .map(|r| r[0].as_str().unwrap_or(""))
        .collect();
    // db01 has epoch 1, so it is newer than 3.0.13 despite the lower upstream version.
    assert_eq!(hosts, ["web01"]);
    assert!(!result.truncated);
}

#[test]
fn writes_are_rejected_and_store_unchanged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, writer) = fleet_db(dir.path());
    let conn = open_read_only(&path).expect("open read-only");
    let before = counts(&writer);
    let attach_target = dir.path().join("other.db");
    let attach = format!("ATTACH DATABASE '{}' AS other", attach_target.display());

    let cases = [
        ("DELETE FROM packages", "DELETE"),
        ("INSERT INTO nodes (node_id) VALUES ('x')", "INSERT"),
        ("UPDATE nodes SET hostname = 'x'", "UPDATE"),
        (attach.as_str(), "ATTACH"),
        ("PRAGMA writable_schema = ON", "writable_schema"),
        ("PRAGMA query_only = OFF", "query_only"),
        ("PRAGMA journal_mode = DELETE", "journal_mode"),
        ("CREATE TABLE evil (x)", "CREATE"),
        ("CREATE TEMP TABLE evil (x)", "CREATE"),
        ("DROP TABLE packages", "DROP"),
        ("CREATE INDEX evil ON nodes (site)", "CREATE"),
        ("VACUUM", "VACUUM"),
        ("REINDEX", "REINDEX"),
        ("ANALYZE", "ANALYZE"),
        ("BEGIN IMMEDIATE", "transaction"),
        ("WITH x AS (SELECT 1) DELETE FROM nodes", "DELETE"),
        ("SELECT load_extension('/tmp/evil.so')", "load_extension"),
    ];
    for (sql, word) in cases {
        let err = run_query(&conn, sql, &options()).expect_err(sql);
        let message = err.to_string();
        assert!(
            matches!(err, QueryError::NotReadOnly { .. }),
            "{sql}: {err:?}"
        );
        assert!(message.contains(word), "{sql}: {message}");
        assert!(message.contains("read-only"), "{sql}: {message}");
    }
    assert_eq!(counts(&writer), before);
    assert!(!attach_target.exists(), "ATTACH created a file");

    // The same guards hold on a writable connection.
    let err = run_query(&writer, "DELETE FROM packages", &options()).expect_err("delete");
    assert!(matches!(err, QueryError::NotReadOnly { .. }), "{err:?}");
    assert_eq!(counts(&writer), before);
}

#[test]
fn multiple_statements_are_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, writer) = fleet_db(dir.path());
    let conn = open_read_only(&path).expect("open read-only");
    let before = counts(&writer);

    for sql in [
        "SELECT 1; SELECT 2",
        "SELECT 1; DELETE FROM packages",
        "SELECT 1; garbage",
    ] {
        let err = run_query(&conn, sql, &options()).expect_err(sql);
        assert!(
            matches!(err, QueryError::MultipleStatements),
            "{sql}: {err:?}"
        );
        assert!(err.to_string().contains("one statement"), "{err}");
    }
    assert_eq!(counts(&writer), before);

    // A trailing semicolon or comment is still one statement.
    let result = run_query(&conn, "SELECT 1; -- done\n", &options()).expect("one statement");
    assert_eq!(result.rows.len(), 1);
}

#[test]
fn empty_query_is_rejected() {
    let conn = Connection::open_in_memory().expect("db");
    for sql in ["", "   ", "-- nothing"] {
        let err = run_query(&conn, sql, &options()).expect_err(sql);
        assert!(matches!(err, QueryError::Empty), "{sql:?}: {err:?}");
    }
}

#[test]
fn read_only_pragmas_are_allowed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, _writer) = fleet_db(dir.path());
    let conn = open_read_only(&path).expect("open read-only");
    let result = run_query(&conn, "PRAGMA table_info(packages)", &options()).expect("table_info");
    assert!(result.rows.len() > 5);
    let result = run_query(
        &conn,
        "SELECT name FROM pragma_table_info('nodes') WHERE name = 'hostname'",
        &options(),
    )
    .expect("pragma function");
    assert_eq!(result.rows.len(), 1);
}

#[test]
fn syntax_error_names_position() {
    let conn = Connection::open_in_memory().expect("db");
    create_tables(&conn).expect("tables");
    let err = run_query(
        &conn,
        "SELECT hostname\nFROM nodes WHER hostname = 'x'",
        &options(),
    )
    .expect_err("syntax error");
    let message = err.to_string();
    assert!(matches!(err, QueryError::Syntax { .. }), "{err:?}");
    assert!(message.contains("line 2"), "{message}");
    assert!(message.contains("column"), "{message}");
    assert!(message.contains("near \"hostname\""), "{message}");

    let err = run_query(&conn, "SELEC 1", &options()).expect_err("typo");
    let message = err.to_string();
    assert!(message.contains("near \"SELEC\""), "{message}");
    assert!(message.contains("line 1, column 1"), "{message}");
}

#[test]
fn missing_table_lists_tables() {
    let conn = Connection::open_in_memory().expect("db");
    create_tables(&conn).expect("tables");
    let err = run_query(&conn, "SELECT * FROM package", &options()).expect_err("no table");
    let message = err.to_string();
    assert!(matches!(err, QueryError::NoSuchTable { .. }), "{err:?}");
    assert!(message.contains("no such table: package"), "{message}");
    for table in ["nodes", "packages", "listening_ports", "collector_errors"] {
        assert!(message.contains(table), "{table} missing from: {message}");
    }
}

#[test]
fn missing_column_points_to_schema() {
    let conn = Connection::open_in_memory().expect("db");
    create_tables(&conn).expect("tables");
    let err = run_query(&conn, "SELECT versionn FROM packages", &options()).expect_err("no column");
    let message = err.to_string();
    assert!(matches!(err, QueryError::NoSuchColumn { .. }), "{err:?}");
    assert!(message.contains("no such column: versionn"), "{message}");
    assert!(message.contains("fleetmesh schema"), "{message}");
}

#[test]
fn slow_query_times_out() {
    let conn = Connection::open_in_memory().expect("db");
    let options = QueryOptions {
        timeout: Duration::from_millis(200),
        row_limit: 10,
    };
    let started = Instant::now();
    let err = run_query(
        &conn,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)
         SELECT count(*) FROM n",
        &options,
    )
    .expect_err("endless query");
    let elapsed = started.elapsed();
    assert!(matches!(err, QueryError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("200 ms"), "{err}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

    // The connection is usable afterwards, with no handler left behind.
    let result = run_query(&conn, "SELECT 1", &QueryOptions::default()).expect("next query");
    assert_eq!(result.rows.len(), 1);
}

#[test]
fn row_limit_truncates() {
    let conn = Connection::open_in_memory().expect("db");
    let options = QueryOptions {
        timeout: Duration::from_secs(10),
        row_limit: 5,
    };
    let sql =
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100) SELECT i FROM n";
    let result = run_query(&conn, sql, &options).expect("query");
    assert_eq!(result.rows.len(), 5);
    assert!(result.truncated);
    let table = format_result(&result, Format::Table);
    assert!(
        table.contains("note: output stopped at the row limit of 5 rows"),
        "{table}"
    );

    let exact =
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 5) SELECT i FROM n";
    let result = run_query(&conn, exact, &options).expect("query");
    assert_eq!(result.rows.len(), 5);
    assert!(!result.truncated, "exactly the limit is not truncated");
}

#[test]
fn values_convert_to_json() {
    let conn = Connection::open_in_memory().expect("db");
    let result = run_query(
        &conn,
        "SELECT NULL, 42, 1.5, 'text', x'00ff', 1e999",
        &options(),
    )
    .expect("query");
    assert_eq!(
        result.rows[0],
        vec![
            serde_json::Value::Null,
            serde_json::json!(42),
            serde_json::json!(1.5),
            serde_json::json!("text"),
            serde_json::json!("00ff"),
            serde_json::json!("inf"),
        ]
    );
}

#[test]
fn read_only_connection_sees_daemon_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, mut writer) = fleet_db(dir.path());
    let reader = open_read_only(&path).expect("open read-only while a writer holds the file");
    let count = |conn: &Connection| {
        run_query(conn, "SELECT count(*) FROM nodes", &options())
            .expect("count")
            .rows[0][0]
            .clone()
    };
    assert_eq!(count(&reader), serde_json::json!(3));

    add_node(&mut writer, 4, "web03", &[("openssl", "3.0.13-1~deb12u1")]);
    assert_eq!(count(&reader), serde_json::json!(4));

    // Still readable after the writer closes (the daemon stopped).
    drop(writer);
    drop(reader);
    let reader = open_read_only(&path).expect("open read-only after the writer stopped");
    assert_eq!(count(&reader), serde_json::json!(4));
}

#[test]
fn open_read_only_reports_missing_and_invalid_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("none.db");
    let err = open_read_only(&missing).expect_err("missing file");
    assert!(matches!(err, QueryError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("none.db"), "{err}");

    let garbage = dir.path().join("garbage.db");
    std::fs::write(
        &garbage,
        b"this is not a database, just some text that is long enough",
    )
    .expect("write");
    let err = open_read_only(&garbage).expect_err("not a database");
    assert!(matches!(err, QueryError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.db"), "{err}");
}

#[test]
fn list_nodes_flags_stale_nodes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, writer) = fleet_db(dir.path());
    let web01: NodeId = NodeId([1; 32]);
    set_peer_status(&writer, &web01, T0 + 3_000, true).expect("peer status");
    let conn = open_read_only(&path).expect("open read-only");

    let nodes = list_nodes(&conn, Some(Duration::from_secs(600)), T0 + 3_100).expect("list");
    let names: Vec<&str> = nodes
        .iter()
        .map(|n| n.hostname.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(names, ["db01", "web01", "web02"]);
    let stale: Vec<Option<bool>> = nodes.iter().map(|n| n.stale).collect();
    assert_eq!(stale, [Some(true), Some(false), Some(true)]);
    assert!(nodes[1].connected);
    assert_eq!(nodes[0].package_count, 2);
    assert_eq!(nodes[0].last_change, Some(T0));

    let unjudged = list_nodes(&conn, None, T0).expect("list");
    assert!(unjudged.iter().all(|n| n.stale.is_none()));
}

#[test]
fn show_node_resolves_selectors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, _writer) = fleet_db(dir.path());
    let conn = open_read_only(&path).expect("open read-only");
    let id = NodeId([2; 32]).to_string();

    assert_eq!(
        show_node(&conn, &id).expect("full id").hostname.as_deref(),
        Some("web02")
    );
    assert_eq!(show_node(&conn, "WEB02").expect("hostname").node_id, id);
    let prefix_len = (1..id.len())
        .find(|&len| {
            [1u8, 3]
                .iter()
                .all(|&seed| !NodeId([seed; 32]).to_string().starts_with(&id[..len]))
        })
        .expect("a unique prefix");
    assert_eq!(
        show_node(&conn, &id[..prefix_len]).expect("prefix").node_id,
        id
    );

    let err = show_node(&conn, "12D3KooW").expect_err("shared prefix");
    let message = err.to_string();
    assert!(
        matches!(err, QueryError::AmbiguousNode { count: 3, .. }),
        "{err:?}"
    );
    assert!(
        message.contains("(web01)") && message.contains("(db01)"),
        "{message}"
    );

    let err = show_node(&conn, "nosuchhost").expect_err("unknown");
    assert!(matches!(err, QueryError::NodeNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("fleetmesh nodes"), "{err}");
}

#[test]
fn schema_describes_every_table_and_column() {
    let conn = Connection::open_in_memory().expect("db");
    create_tables(&conn).expect("tables");

    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .expect("prepare");
    let mut in_db: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    in_db.sort();
    let described = schema();
    let mut in_doc: Vec<String> = described.iter().map(|t| t.name.to_string()).collect();
    in_doc.sort();
    assert_eq!(in_db, in_doc, "tables in the database versus schema()");

    for table in &described {
        let mut stmt = conn
            .prepare("SELECT name, type FROM pragma_table_info(?1) ORDER BY cid")
            .expect("prepare");
        let columns: Vec<(String, String)> = stmt
            .query_map([table.name], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let documented: Vec<(String, String)> = table
            .columns
            .iter()
            .map(|c| (c.name.to_string(), c.sql_type.to_string()))
            .collect();
        assert_eq!(columns, documented, "columns of {}", table.name);
        for column in &table.columns {
            assert!(
                !column.description.is_empty(),
                "{}.{} has no description",
                table.name,
                column.name
            );
        }
    }
}

#[test]
fn schema_page_matches_schema() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema.md");
    let expected = schema_markdown();
    if std::env::var_os("UPDATE_SCHEMA_DOC").is_some() {
        std::fs::write(&page, &expected).expect("write docs/schema.md");
    }
    let actual = std::fs::read_to_string(&page).unwrap_or_default();
    assert!(
        actual == expected,
        "docs/schema.md differs from query::schema(); regenerate it with \
         `UPDATE_SCHEMA_DOC=1 cargo test -p fleetmesh-node --test query_sql schema_page`"
    );
}

#[test]
fn formats_render_query_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, _writer) = fleet_db(dir.path());
    let conn = open_read_only(&path).expect("open read-only");
    let result = run_query(
        &conn,
        "SELECT hostname, package_count FROM nodes ORDER BY hostname",
        &options(),
    )
    .expect("query");

    let table = format_result(&result, Format::Table);
    assert_eq!(
        table,
        "hostname  package_count\n--------  -------------\ndb01                  2\nweb01                 2\nweb02                 1\n(3 rows)\n"
    );
    let csv = format_result(&result, Format::Csv);
    assert_eq!(
        csv,
        "hostname,package_count\r\ndb01,2\r\nweb01,2\r\nweb02,1\r\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&format_result(&result, Format::Json)).expect("JSON");
    assert_eq!(
        json[2],
        serde_json::json!({"hostname": "web02", "package_count": 1})
    );
    let ndjson = format_result(&result, Format::Ndjson);
    assert_eq!(ndjson.lines().count(), 3);
}
