//! Fact tables kept in step with node documents: first load, single-item updates, deletes,
//! section rewrites, rebuilds and peer status.
//!
//! The tests open their own SQLite connection and call the materializer as the store does,
//! inside one transaction per change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleetmesh_model::facts::{Address, Group, Interface, Package, Service, TrackedFile, User};
use fleetmesh_model::{ChangeHash, Facts, Identity, NodeDocument, NodeId, TenantId};
use fleetmesh_node::store::materialize::{
    apply_node_change, clear_connected, create_tables, delete_changes_before, rebuild_node,
    set_peer_status, FACT_TABLES,
};
use rusqlite::Connection;

const T0: i64 = 1_700_000_000;

fn package(name: &str, version: &str, arch: &str) -> Package {
    Package {
        name: name.to_string(),
        version: version.to_string(),
        arch: Some(arch.to_string()),
        manager: "dpkg".to_string(),
        ..Package::default()
    }
}

fn base_facts(hostname: &str, packages: &[Package]) -> Facts {
    let mut facts = Facts::default();
    facts.system.hostname = hostname.to_string();
    facts.system.architecture = Some("x86_64".to_string());
    facts.os.id = Some("debian".to_string());
    facts.os.pretty_name = Some("Debian GNU/Linux 12 (bookworm)".to_string());
    facts.os.id_like = vec!["linux".to_string()];
    facts.hardware.cpu_threads = Some(2);
    facts.hardware.memory_total_kib = Some(4_000_000);
    facts.dns.servers = vec!["10.0.0.53".to_string(), "10.0.0.54".to_string()];

    facts.services.insert(
        "ssh.service".to_string(),
        Service {
            enabled: Some("enabled".to_string()),
            active: Some("active".to_string()),
            ..Service::default()
        },
    );
    let mut eth0 = Interface {
        mac: Some("52:54:00:12:34:56".to_string()),
        mtu: Some(1500),
        state: Some("up".to_string()),
        ..Interface::default()
    };
    eth0.addresses.insert(
        "10.0.0.5/24".to_string(),
        Address {
            family: "inet".to_string(),
            address: "10.0.0.5".to_string(),
            prefix_len: 24,
            scope: Some("global".to_string()),
        },
    );
    facts.interfaces.insert("eth0".to_string(), eth0);

    facts.users.insert(
        "alice".to_string(),
        User {
            uid: 1000,
            gid: 1000,
            home: "/home/alice".to_string(),
            shell: "/bin/bash".to_string(),
            admin: true,
            authorized_keys: vec!["SHA256:abc".to_string()],
            ..User::default()
        },
    );
    facts.groups.insert(
        "sudo".to_string(),
        Group {
            gid: 27,
            members: vec!["alice".to_string()],
        },
    );

    for p in packages {
        facts.packages.insert(p.key(), p.clone());
    }
    facts
}

/// One node's document plus what the test needs to record into it.
struct TestNode {
    doc: NodeDocument,
    identity: Identity,
}

impl TestNode {
    fn new(seed: u8, hostname: &str) -> TestNode {
        let node = NodeId([seed; 32]);
        let tenant = TenantId::new("acme").expect("valid tenant");
        TestNode {
            doc: NodeDocument::new(tenant, node),
            identity: Identity {
                node_id: node.to_string(),
                tenant: "acme".to_string(),
                site: "leeds".to_string(),
                hostname: hostname.to_string(),
                agent_version: "0.1.0".to_string(),
            },
        }
    }

    fn id(&self) -> String {
        self.identity.node_id.clone()
    }

    /// Records `facts` and materializes the change as the store does: one transaction.
    /// Returns how many rows SQLite inserted, updated or deleted.
    fn record(&mut self, conn: &mut Connection, facts: &Facts, time: i64) -> u64 {
        let before: Vec<ChangeHash> = self.doc.heads();
        let change = self
            .doc
            .record(&self.identity, facts, time)
            .expect("record facts");
        assert!(
            change.is_some(),
            "facts must differ from the last recording"
        );
        let changes_before = conn.total_changes();
        let tx = conn.transaction().expect("begin");
        apply_node_change(&tx, &mut self.doc, &before, time).expect("materialize");
        tx.commit().expect("commit");
        conn.total_changes() - changes_before
    }
}

fn open() -> Connection {
    let conn = Connection::open_in_memory().expect("in-memory database");
    create_tables(&conn).expect("create tables");
    conn
}

/// Returns every row of every fact table as text, keyed by table, to compare states.
fn snapshot(conn: &Connection) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for table in FACT_TABLES {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2, 3"))
            .expect("prepare snapshot");
        let columns = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                let mut cells = Vec::new();
                for index in 0..columns {
                    let value: rusqlite::types::Value = row.get(index)?;
                    cells.push(format!("{value:?}"));
                }
                Ok(cells.join("|"))
            })
            .expect("query snapshot")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        out.insert(table.to_string(), rows);
    }
    out
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |row| row.get(0)).expect(sql)
}

#[test]
fn first_change_fills_every_table() {
    let mut conn = open();
    let mut node = TestNode::new(1, "web01");
    let facts = base_facts(
        "web01",
        &[
            package("openssl", "3.0.11-1~deb12u2", "amd64"),
            package("curl", "7.88.1-10+deb12u5", "amd64"),
        ],
    );
    node.record(&mut conn, &facts, T0);

    let id = node.id();
    let (hostname, tenant, site, pretty, count_col, last_change, id_like): (
        String,
        String,
        String,
        String,
        i64,
        i64,
        String,
    ) = conn
        .query_row(
            "SELECT hostname, tenant, site, os_pretty_name, package_count, last_change, os_id_like
             FROM nodes WHERE node_id = ?1",
            [&id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .expect("nodes row");
    assert_eq!(hostname, "web01");
    assert_eq!(tenant, "acme");
    assert_eq!(site, "leeds");
    assert_eq!(pretty, "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(count_col, 2);
    assert_eq!(last_change, T0);
    assert_eq!(id_like, "linux");

    let version: String = conn
        .query_row(
            "SELECT full_version FROM packages WHERE node_id = ?1 AND name = 'openssl'",
            [&id],
            |r| r.get(0),
        )
        .expect("openssl row");
    assert_eq!(version, "3.0.11-1~deb12u2");
    assert_eq!(count(&conn, "SELECT count(*) FROM services"), 1);
    assert_eq!(count(&conn, "SELECT count(*) FROM interfaces"), 1);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM addresses WHERE address = '10.0.0.5'"
        ),
        1
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM users WHERE admin = 1"),
        1
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM authorized_keys"), 1);
    assert_eq!(count(&conn, "SELECT count(*) FROM groups"), 1);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM group_members WHERE member = 'alice'"
        ),
        1
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM dns_servers"), 2);
    assert_eq!(
        count(
            &conn,
            "SELECT position FROM dns_servers WHERE address = '10.0.0.54'"
        ),
        2
    );
}

#[test]
fn package_upgrade_rewrites_only_its_row() {
    let mut conn = open();
    let mut node = TestNode::new(2, "web02");
    let mut packages: Vec<Package> = (0..300)
        .map(|i| package(&format!("lib{i}"), &format!("1.{i}-1"), "amd64"))
        .collect();
    packages.push(package("openssl", "3.0.11-1~deb12u2", "amd64"));
    let mut facts = base_facts("web02", &packages);
    node.record(&mut conn, &facts, T0);
    let before = snapshot(&conn);

    facts
        .packages
        .get_mut("openssl:amd64")
        .expect("openssl present")
        .version = "3.0.13-1~deb12u1".to_string();
    let rows_written = node.record(&mut conn, &facts, T0 + 60);
    let after = snapshot(&conn);

    // Only the openssl row and the node's last_change differ, and the history gains a row.
    for table in FACT_TABLES {
        if table == "packages" || table == "nodes" || table == "changes" {
            continue;
        }
        assert_eq!(before[table], after[table], "table {table} changed");
    }
    let changed: Vec<_> = after["packages"]
        .iter()
        .filter(|row| !before["packages"].contains(row))
        .collect();
    assert_eq!(changed.len(), 1, "changed package rows: {changed:?}");
    assert!(changed[0].contains("3.0.13-1~deb12u1"), "{}", changed[0]);
    assert_eq!(before["packages"].len(), after["packages"].len());
    let last_change = count(&conn, "SELECT last_change FROM nodes");
    assert_eq!(last_change, T0 + 60);

    let new_history: Vec<_> = after["changes"]
        .iter()
        .filter(|row| !before["changes"].contains(row))
        .collect();
    assert_eq!(new_history.len(), 1, "new changes rows: {new_history:?}");
    assert!(
        new_history[0].contains("3.0.13-1~deb12u1"),
        "{}",
        new_history[0]
    );

    // Incremental: a handful of row writes, not the 301 package rows.
    assert!(
        rows_written <= 7,
        "{rows_written} rows written for one upgrade"
    );
}

#[test]
fn package_removal_deletes_row_and_count() {
    let mut conn = open();
    let mut node = TestNode::new(3, "web03");
    let mut facts = base_facts(
        "web03",
        &[
            package("telnet", "0.17+2.4-2", "amd64"),
            package("curl", "7.88.1-10", "amd64"),
        ],
    );
    node.record(&mut conn, &facts, T0);

    facts.packages.remove("telnet:amd64");
    node.record(&mut conn, &facts, T0 + 1);

    assert_eq!(
        count(&conn, "SELECT count(*) FROM packages WHERE name = 'telnet'"),
        0
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM packages WHERE name = 'curl'"),
        1
    );
    assert_eq!(count(&conn, "SELECT package_count FROM nodes"), 1);
}

#[test]
fn package_install_adds_row() {
    let mut conn = open();
    let mut node = TestNode::new(4, "web04");
    let mut facts = base_facts("web04", &[package("curl", "7.88.1-10", "amd64")]);
    node.record(&mut conn, &facts, T0);

    let mut nginx = package("nginx", "1.22.1-9", "amd64");
    nginx.source = Some("nginx".to_string());
    nginx.epoch = Some(1);
    facts.packages.insert(nginx.key(), nginx);
    node.record(&mut conn, &facts, T0 + 1);

    let full: String = conn
        .query_row(
            "SELECT full_version FROM packages WHERE name = 'nginx'",
            [],
            |r| r.get(0),
        )
        .expect("nginx row");
    assert_eq!(full, "1:1.22.1-9");
    assert_eq!(count(&conn, "SELECT package_count FROM nodes"), 2);
}

#[test]
fn nested_items_follow_their_parent() {
    let mut conn = open();
    let mut node = TestNode::new(5, "gw01");
    let mut facts = base_facts("gw01", &[]);
    node.record(&mut conn, &facts, T0);

    // A new address on eth0 and a new group member: nested maps and lists.
    let eth0 = facts.interfaces.get_mut("eth0").expect("eth0");
    eth0.addresses.insert(
        "fe80::1/64".to_string(),
        Address {
            family: "inet6".to_string(),
            address: "fe80::1".to_string(),
            prefix_len: 64,
            scope: Some("link".to_string()),
        },
    );
    facts
        .groups
        .get_mut("sudo")
        .expect("sudo")
        .members
        .push("bob".to_string());
    node.record(&mut conn, &facts, T0 + 1);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM addresses WHERE interface = 'eth0'"
        ),
        2
    );
    assert_eq!(
        count(
            &conn,
            "SELECT position FROM group_members WHERE member = 'bob'"
        ),
        2
    );

    // Removing the interface removes its addresses too.
    facts.interfaces.clear();
    node.record(&mut conn, &facts, T0 + 2);
    assert_eq!(count(&conn, "SELECT count(*) FROM interfaces"), 0);
    assert_eq!(count(&conn, "SELECT count(*) FROM addresses"), 0);
}

#[test]
fn node_row_changes_keep_peer_status() {
    let mut conn = open();
    let mut node = TestNode::new(6, "db01");
    let mut facts = base_facts("db01", &[]);
    node.record(&mut conn, &facts, T0);
    let node_id: NodeId = node.id().parse().expect("node id");
    set_peer_status(&conn, &node_id, T0 + 5, true).expect("peer status");

    facts.os.pretty_name = Some("Debian GNU/Linux 12.5 (bookworm)".to_string());
    facts.dns.servers = vec!["1.1.1.1".to_string()];
    node.record(&mut conn, &facts, T0 + 10);

    let (pretty, heard, connected): (String, i64, i64) = conn
        .query_row(
            "SELECT os_pretty_name, last_heard, connected FROM nodes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("nodes row");
    assert_eq!(pretty, "Debian GNU/Linux 12.5 (bookworm)");
    assert_eq!(heard, T0 + 5);
    assert_eq!(connected, 1);
    assert_eq!(count(&conn, "SELECT count(*) FROM dns_servers"), 1);

    clear_connected(&conn).expect("clear connected");
    assert_eq!(count(&conn, "SELECT connected FROM nodes"), 0);
}

#[test]
fn peer_status_before_facts_creates_bare_row() {
    let mut conn = open();
    let node_id = NodeId([7; 32]);
    set_peer_status(&conn, &node_id, T0, true).expect("peer status");
    assert_eq!(
        count(&conn, "SELECT count(*) FROM nodes WHERE hostname IS NULL"),
        1
    );

    let mut node = TestNode::new(7, "late01");
    node.record(&mut conn, &base_facts("late01", &[]), T0 + 3);
    let (hostname, heard): (String, i64) = conn
        .query_row("SELECT hostname, last_heard FROM nodes", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("nodes row");
    assert_eq!(hostname, "late01");
    assert_eq!(heard, T0);
}

#[test]
fn change_leaves_other_nodes_alone() {
    let mut conn = open();
    let mut first = TestNode::new(8, "a");
    let mut second = TestNode::new(9, "b");
    let mut facts_a = base_facts("a", &[package("openssl", "3.0.11-1", "amd64")]);
    let facts_b = base_facts("b", &[package("openssl", "3.0.11-1", "amd64")]);
    first.record(&mut conn, &facts_a, T0);
    second.record(&mut conn, &facts_b, T0);

    let b_rows = |conn: &Connection| {
        let snap = snapshot(conn);
        let id = second.id();
        snap.into_iter()
            .map(|(table, rows)| {
                (
                    table,
                    rows.into_iter()
                        .filter(|r| r.contains(&id))
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    let before = b_rows(&conn);

    // A whole-section replacement on node a (every service gone) rewrites only a's rows.
    facts_a.services.clear();
    facts_a.packages.clear();
    first.record(&mut conn, &facts_a, T0 + 1);
    assert_eq!(before, b_rows(&conn));
    assert_eq!(count(&conn, "SELECT count(*) FROM services"), 1);
}

#[test]
fn rebuild_node_matches_incremental() {
    let mut conn = open();
    let mut node = TestNode::new(10, "r1");
    let mut facts = base_facts(
        "r1",
        &[package("a", "1", "amd64"), package("b", "2", "amd64")],
    );
    node.record(&mut conn, &facts, T0);
    facts.packages.remove("a:amd64");
    facts.users.clear();
    facts.hardware.cpu_threads = Some(8);
    node.record(&mut conn, &facts, T0 + 1);
    let incremental = snapshot(&conn);

    // Corrupt the node's rows, then rebuild them from the document.
    conn.execute_batch("DELETE FROM packages; UPDATE nodes SET cpu_threads = 1;")
        .expect("damage rows");
    conn.execute(
        "INSERT INTO services (node_id, name) VALUES (?1, 'bogus.service')",
        [node.id()],
    )
    .expect("add a stray row");
    let tx = conn.transaction().expect("begin");
    rebuild_node(&tx, &mut node.doc, T0 + 1).expect("rebuild");
    tx.commit().expect("commit");

    assert_eq!(incremental, snapshot(&conn));
}

/// Root of the Debian 12 fixture machine, if the shared fixtures are beside the checkout.
fn debian_fixture_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/roots/debian12-container");
    root.join("var/lib/dpkg/status").exists().then_some(root)
}

/// Reads installed packages from a dpkg status file: just the fields the tables hold.
fn read_dpkg_status(path: &Path) -> Vec<Package> {
    let text = std::fs::read_to_string(path).expect("read dpkg status");
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields = BTreeMap::new();
        for line in stanza.lines() {
            if let Some((name, value)) = line.split_once(": ") {
                if !line.starts_with(' ') {
                    fields.insert(name, value.trim());
                }
            }
        }
        let installed = fields
            .get("Status")
            .is_some_and(|s| s.ends_with(" installed"));
        let (Some(name), Some(version), true) =
            (fields.get("Package"), fields.get("Version"), installed)
        else {
            continue;
        };
        let (epoch, version) = match version.split_once(':') {
            Some((epoch, rest)) if epoch.bytes().all(|b| b.is_ascii_digit()) => {
                (epoch.parse().ok(), rest)
            }
            _ => (None, *version),
        };
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            epoch,
            arch: fields.get("Architecture").map(|a| a.to_string()),
            source: fields
                .get("Source")
                .map(|s| s.split(' ').next().unwrap_or(s).to_string()),
            manager: "dpkg".to_string(),
            ..Package::default()
        });
    }
    out
}

#[test]
fn fixture_dpkg_packages_materialize() {
    let Some(root) = debian_fixture_root() else {
        println!("SKIPPED: the shared debian12-container fixture root is not beside the checkout");
        return;
    };
    let packages = read_dpkg_status(&root.join("var/lib/dpkg/status"));
    assert!(
        packages.len() > 100,
        "only {} packages parsed",
        packages.len()
    );

    let mut conn = open();
    let mut node = TestNode::new(11, "fixture");
    let mut facts = base_facts("fixture", &packages);
    node.record(&mut conn, &facts, T0);
    let stored = count(&conn, "SELECT count(*) FROM packages");
    assert_eq!(stored, facts.packages.len() as i64);
    assert_eq!(count(&conn, "SELECT package_count FROM nodes"), stored);

    // Every package's row carries the version that dpkg recorded.
    let stored_versions: BTreeMap<String, String> = conn
        .prepare("SELECT key, full_version FROM packages")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let expected: BTreeMap<String, String> = facts
        .packages
        .iter()
        .map(|(key, package)| (key.clone(), package.full_version()))
        .collect();
    assert_eq!(stored_versions, expected);

    // Upgrade one package: one row changes.
    let key = facts.packages.keys().next().cloned().expect("a package");
    facts
        .packages
        .get_mut(&key)
        .expect("package")
        .version
        .push_str("+fleet1");
    let before = snapshot(&conn);
    let written = node.record(&mut conn, &facts, T0 + 1);
    let after = snapshot(&conn);
    let changed = after["packages"]
        .iter()
        .filter(|r| !before["packages"].contains(r))
        .count();
    assert_eq!(changed, 1);
    // The package row, the count and time in the node row, and one history row.
    assert!(written <= 7, "{written} rows written for one upgrade");
}

/// One row of the `changes` table, as text columns.
#[derive(Debug)]
struct HistoryRow {
    seq: i64,
    time: i64,
    kind: String,
    item: Option<String>,
    field: Option<String>,
    action: String,
    old_value: Option<String>,
    new_value: Option<String>,
    lines: Option<String>,
}

fn history_rows(conn: &Connection, node: &str) -> Vec<HistoryRow> {
    conn.prepare(
        "SELECT seq, time, kind, item, field, action, old_value, new_value, lines
         FROM changes WHERE node_id = ?1 ORDER BY seq, rowid",
    )
    .expect("prepare")
    .query_map([node], |r| {
        Ok(HistoryRow {
            seq: r.get(0)?,
            time: r.get(1)?,
            kind: r.get(2)?,
            item: r.get(3)?,
            field: r.get(4)?,
            action: r.get(5)?,
            old_value: r.get(6)?,
            new_value: r.get(7)?,
            lines: r.get(8)?,
        })
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

fn sshd_config(content: &str) -> TrackedFile {
    TrackedFile {
        exists: true,
        mode: Some("0644".to_string()),
        content: Some(content.to_string()),
        ..TrackedFile::default()
    }
}

#[test]
fn changes_table_records_upgrade_and_file_edit() {
    let mut conn = open();
    let mut node = TestNode::new(12, "h1");
    let mut facts = base_facts("h1", &[package("openssl", "3.0.11-1", "amd64")]);
    facts.tracked_files.insert(
        "/etc/ssh/sshd_config".to_string(),
        sshd_config("Port 22\nPermitRootLogin yes\n"),
    );
    node.record(&mut conn, &facts, T0);

    // The first change adds each item; a new file's text is stored as added lines only.
    let first = history_rows(&conn, &node.id());
    assert!(first.iter().all(|row| row.seq == 1 && row.time == T0));
    assert!(first.iter().all(|row| row.action == "added"));
    let file = first
        .iter()
        .find(|row| row.kind == "tracked_files")
        .expect("a row for the tracked file");
    assert_eq!(file.item.as_deref(), Some("/etc/ssh/sshd_config"));
    let new_value = file.new_value.as_deref().expect("the file's fields");
    assert!(!new_value.contains("content"), "{new_value}");
    assert!(new_value.contains("0644"), "{new_value}");
    let lines: serde_json::Value =
        serde_json::from_str(file.lines.as_deref().expect("lines")).expect("JSON lines");
    assert_eq!(lines[1]["op"], "+");
    assert_eq!(lines[1]["text"], "PermitRootLogin yes");

    facts
        .packages
        .get_mut("openssl:amd64")
        .expect("openssl")
        .version = "3.0.13-1".to_string();
    facts.tracked_files.insert(
        "/etc/ssh/sshd_config".to_string(),
        sshd_config("Port 22\nPermitRootLogin no\n"),
    );
    node.record(&mut conn, &facts, T0 + 60);

    let second: Vec<HistoryRow> = history_rows(&conn, &node.id())
        .into_iter()
        .filter(|row| row.seq == 2)
        .collect();
    assert_eq!(second.len(), 2, "{second:?}");
    let upgrade = &second[0];
    assert_eq!(upgrade.time, T0 + 60);
    assert_eq!(upgrade.kind, "packages");
    assert_eq!(upgrade.item.as_deref(), Some("openssl:amd64"));
    assert_eq!(upgrade.field.as_deref(), Some("version"));
    assert_eq!(upgrade.action, "changed");
    assert_eq!(upgrade.old_value.as_deref(), Some("\"3.0.11-1\""));
    assert_eq!(upgrade.new_value.as_deref(), Some("\"3.0.13-1\""));
    assert_eq!(upgrade.lines, None);

    let edit = &second[1];
    assert_eq!(edit.kind, "tracked_files");
    assert_eq!(edit.field.as_deref(), Some("content"));
    assert_eq!(edit.old_value, None);
    assert_eq!(edit.new_value, None);
    let lines: serde_json::Value =
        serde_json::from_str(edit.lines.as_deref().expect("lines")).expect("JSON lines");
    assert_eq!(
        lines,
        serde_json::json!([
            {"op": "-", "line": 2, "text": "PermitRootLogin yes"},
            {"op": "+", "line": 2, "text": "PermitRootLogin no"},
        ])
    );
}

#[test]
fn changes_older_than_cutoff_are_deleted() {
    let mut conn = open();
    let mut node = TestNode::new(13, "h2");
    let mut facts = base_facts("h2", &[package("openssl", "3.0.11-1", "amd64")]);
    node.record(&mut conn, &facts, T0);
    facts.os.pretty_name = Some("Debian GNU/Linux 12.5".to_string());
    node.record(&mut conn, &facts, T0 + 100);
    let packages_before = count(&conn, "SELECT count(*) FROM packages");

    let deleted = delete_changes_before(&conn, T0 + 100).expect("delete");
    assert!(deleted > 1, "{deleted} rows deleted");
    let left = history_rows(&conn, &node.id());
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].seq, 2);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM packages"),
        packages_before
    );
}
