//! Bad input to the CLI: each case gives one error line naming the value and the fix, a
//! non-zero exit status, no panic, and leaves the data in place.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use anyhow::Result;
use fleetmesh_tests::binary;

fn run(args: &[&str]) -> Result<Output> {
    Ok(std::process::Command::new(binary()?).args(args).output()?)
}

/// Asserts a failed run whose error output contains every fragment and no panic.
fn assert_clear_error(output: &Output, fragments: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        error_lines.len(),
        1,
        "expected one error line, got: {stderr}"
    );
    for fragment in fragments {
        assert!(
            stderr.contains(fragment),
            "missing {fragment:?} in: {stderr}"
        );
    }
}

fn up_args<'a>(data_dir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--data-dir",
        data_dir,
        "up",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn up_rejects_corrupt_store() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("fleetmesh.db");
    let garbage =
        b"this is not a database, just some bytes that are long enough to look like a page header"
            .repeat(20);
    fs::write(&db, &garbage)?;
    let data_dir = dir.path().to_string_lossy().to_string();
    let output = run(&up_args(&data_dir, &[]))?;
    assert_clear_error(
        &output,
        &["fleetmesh.db", "corrupt", "move the data directory aside"],
    );
    assert_eq!(fs::read(&db)?, garbage, "the corrupt file was changed");
    Ok(())
}

#[test]
fn up_rejects_foreign_database() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("fleetmesh.db");
    write_foreign_sqlite(&db)?;
    let before = fs::read(&db)?;
    let data_dir = dir.path().to_string_lossy().to_string();
    let output = run(&up_args(&data_dir, &[]))?;
    assert_clear_error(&output, &["not a fleetmesh store", "--data-dir"]);
    assert_eq!(fs::read(&db)?, before, "the foreign database was changed");
    Ok(())
}

/// Writes an empty SQLite database that belongs to another application (application id
/// 0x12345678), byte by byte, so the test needs no SQLite library of its own.
fn write_foreign_sqlite(path: &std::path::Path) -> Result<()> {
    // An empty SQLite database is a single 4096-byte page whose header is documented in the
    // SQLite file format; application_id lives at offset 68.
    let mut page = vec![0u8; 4096];
    page[..16].copy_from_slice(b"SQLite format 3\0");
    page[16..18].copy_from_slice(&4096u16.to_be_bytes()); // page size
    page[18] = 1; // file format write version
    page[19] = 1; // file format read version
    page[21] = 64; // max embedded payload fraction
    page[22] = 32; // min embedded payload fraction
    page[23] = 32; // leaf payload fraction
    page[28..32].copy_from_slice(&1u32.to_be_bytes()); // database size in pages
    page[44..48].copy_from_slice(&4u32.to_be_bytes()); // schema format
    page[56..60].copy_from_slice(&1u32.to_be_bytes()); // text encoding UTF-8
    page[68..72].copy_from_slice(&0x1234_5678u32.to_be_bytes()); // application id
    page[92..96].copy_from_slice(&1u32.to_be_bytes()); // version-valid-for
    page[96..100].copy_from_slice(&3_045_000u32.to_be_bytes()); // SQLite version
    page[100] = 0x0d; // empty table b-tree leaf page
    page[105..107].copy_from_slice(&4096u16.to_be_bytes()); // cell content start
    fs::write(path, page)?;
    Ok(())
}

#[test]
fn up_rejects_readable_key_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("node.key");
    let line = format!("fleetmesh-node-key-v1 {}\n", "11".repeat(32));
    fs::write(&key, &line)?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644))?;
    let data_dir = dir.path().to_string_lossy().to_string();
    let output = run(&up_args(&data_dir, &[]))?;
    assert_clear_error(&output, &["node.key", "0644", "chmod 600"]);
    assert_eq!(fs::read_to_string(&key)?, line, "the key file was changed");
    Ok(())
}

#[test]
fn up_rejects_unbindable_address() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().to_string();
    // A port this test already holds on loopback cannot be bound a second time.
    let holder = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = format!("/ip4/127.0.0.1/tcp/{}", holder.local_addr()?.port());
    let output = run(&[
        "--data-dir",
        &data_dir,
        "up",
        "--no-mdns",
        "--listen",
        &address,
    ])?;
    assert_clear_error(&output, &[&address, "--listen"]);
    Ok(())
}

#[test]
fn up_rejects_unparsable_peer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().to_string();
    let output = run(&up_args(&data_dir, &["--peer", "10.0.0.5:7411"]))?;
    assert_clear_error(&output, &["10.0.0.5:7411", "multiaddr"]);
    assert!(
        !dir.path().join("fleetmesh.db").exists(),
        "a store was created"
    );
    Ok(())
}

#[test]
fn nodes_on_empty_dir_says_run_up() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().to_string();
    let output = run(&["--data-dir", &data_dir, "nodes"])?;
    assert_clear_error(&output, &["fleetmesh up", "--data-dir"]);
    Ok(())
}
