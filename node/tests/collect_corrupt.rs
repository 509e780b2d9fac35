//! Corrupt and unreadable inputs: each gives the readable part plus error facts, and the other
//! collectors go on.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use fleetmesh_model::Facts;
use fleetmesh_node::collect::{collect, CollectOptions};

/// Writes `contents` at `path` under `root`, creating parent folders.
fn write(root: &Path, path: &str, contents: &[u8]) {
    let file = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    fs::write(file, contents).expect("write");
}

fn error_for<'a>(facts: &'a Facts, collector: &str, path: &str) -> Option<&'a str> {
    facts
        .collector_errors
        .get(&format!("{collector}:{path}"))
        .map(|error| error.message.as_str())
}

/// Copies a small valid tree into a temporary root, so a test can break one file and check that
/// the rest is still read.
fn base_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/root-small");
    copy_tree(&fixtures, root.path());
    root
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).expect("fixture folder") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn small_root_reads_without_errors() {
    let root = base_root();
    let facts = collect(&CollectOptions::new(root.path()));
    assert!(
        facts.collector_errors.is_empty(),
        "{:#?}",
        facts.collector_errors
    );
    assert_eq!(facts.packages.len(), 2);
    assert_eq!(facts.os.id.as_deref(), Some("debian"));
    assert!(facts.users["alice"].admin);
    // The fingerprint that `ssh-keygen -lf` printed for the key in the fixture.
    assert_eq!(
        facts.users["alice"].authorized_keys,
        vec!["SHA256:KqSwz4seF7D3WBp7tuhqA3UD4qiu0aF/GV5XmfMjv+M"]
    );
    assert_eq!(facts.system.fqdn.as_deref(), Some("web02.example.net"));
    assert_eq!(facts.dns.servers, vec!["192.0.2.53"]);
    let task =
        &facts.scheduled_tasks["/etc/cron.d/backup:30 2 * * * /usr/local/bin/backup --nightly"];
    assert_eq!(task.user.as_deref(), Some("root"));
    assert_eq!(facts.service_manager.as_deref(), Some("none"));
}

#[test]
fn dpkg_stanza_without_package_field() {
    let root = base_root();
    let status = fs::read_to_string(root.path().join("var/lib/dpkg/status")).expect("status");
    let broken = format!("{status}\nStatus: install ok installed\nVersion: 1.0\n\nPackage: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13.dfsg-1\n");
    write(root.path(), "/var/lib/dpkg/status", broken.as_bytes());

    let facts = collect(&CollectOptions::new(root.path()));
    assert_eq!(
        facts.packages.len(),
        3,
        "the stanzas around the broken one are kept"
    );
    assert!(facts.packages.contains_key("zlib1g:amd64"));
    let message = error_for(&facts, "packages.dpkg", "/var/lib/dpkg/status").expect("error fact");
    assert!(message.contains("no Package field"), "{message}");
}

#[test]
fn os_release_with_binary_bytes() {
    let root = base_root();
    let mut bytes = b"ID=debian\nVERSION_ID=\"12\"\n".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0x00, 0x9c, b'\n']);
    bytes.extend_from_slice(b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n");
    write(root.path(), "/etc/os-release", &bytes);

    let facts = collect(&CollectOptions::new(root.path()));
    assert_eq!(facts.os.id.as_deref(), Some("debian"));
    assert_eq!(facts.os.version_id.as_deref(), Some("12"));
    assert_eq!(
        facts.os.pretty_name.as_deref(),
        Some("Debian GNU/Linux 12 (bookworm)")
    );
    let message = error_for(&facts, "os", "/etc/os-release").expect("error fact");
    assert!(message.contains("invalid UTF-8"), "{message}");
}

#[test]
fn passwd_that_is_a_directory() {
    let root = base_root();
    fs::remove_file(root.path().join("etc/passwd")).expect("remove");
    fs::create_dir(root.path().join("etc/passwd")).expect("mkdir");

    let facts = collect(&CollectOptions::new(root.path()));
    assert!(facts.users.is_empty());
    assert!(!facts.groups.is_empty(), "groups are still read");
    assert_eq!(facts.packages.len(), 2, "other collectors go on");
    let message = error_for(&facts, "accounts", "/etc/passwd").expect("error fact");
    assert!(message.contains("not a regular file"), "{message}");
}

#[test]
fn hostname_symlink_loop() {
    let root = base_root();
    fs::remove_file(root.path().join("etc/hostname")).expect("remove");
    std::os::unix::fs::symlink("hostname", root.path().join("etc/hostname")).expect("symlink");

    let facts = collect(&CollectOptions::new(root.path()));
    let message = error_for(&facts, "system", "/etc/hostname").expect("error fact");
    assert!(message.contains("read failed"), "{message}");
    assert_eq!(facts.os.id.as_deref(), Some("debian"));
}

#[test]
fn group_without_read_permission() {
    let root = base_root();
    let group = root.path().join("etc/group");
    let mut permissions = fs::metadata(&group).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o000);
    fs::set_permissions(&group, permissions).expect("chmod");
    if fs::read(&group).is_ok() {
        println!("SKIPPED: running with permission to read mode-000 files (root)");
        return;
    }

    let facts = collect(&CollectOptions::new(root.path()));
    assert!(facts.groups.is_empty());
    assert!(!facts.users.is_empty());
    let message = error_for(&facts, "accounts", "/etc/group").expect("error fact");
    assert!(message.contains("ermission denied"), "{message}");
}

#[test]
fn fifo_in_place_of_hosts_does_not_block() {
    let root = base_root();
    let hosts = root.path().join("etc/hosts");
    let _ = fs::remove_file(&hosts);
    let made = std::process::Command::new("mkfifo").arg(&hosts).status();
    if !matches!(made, Ok(status) if status.success()) {
        println!("SKIPPED: mkfifo is not available");
        return;
    }

    let started = Instant::now();
    let facts = collect(&CollectOptions::new(root.path()));
    assert!(started.elapsed() < Duration::from_secs(5));
    let message = error_for(&facts, "system", "/etc/hosts").expect("error fact");
    assert!(message.contains("FIFO"), "{message}");
}

#[test]
fn zero_budget_stops_with_error_facts() {
    let root = base_root();
    let mut options = CollectOptions::new(root.path());
    options.collector_budget = Duration::ZERO;

    let started = Instant::now();
    let facts = collect(&options);
    assert!(started.elapsed() < Duration::from_secs(5));
    let stopped = facts
        .collector_errors
        .values()
        .filter(|error| error.message.contains("time budget"))
        .count();
    assert!(stopped >= 1, "{:#?}", facts.collector_errors);
}

#[test]
fn shadow_is_never_tracked() {
    let root = base_root();
    write(
        root.path(),
        "/etc/shadow",
        b"root:$6$salt$hash:19000:0:99999:7:::\n",
    );
    let mut options = CollectOptions::new(root.path());
    options.extra_tracked_files = vec!["/etc/shadow".to_string(), "/etc/../etc/shadow".to_string()];

    let facts = collect(&options);
    assert!(!facts.tracked_files.contains_key("/etc/shadow"));
    let message = error_for(&facts, "tracked_files", "/etc/shadow").expect("error fact");
    assert!(message.contains("password hashes"), "{message}");
    let serialized = serde_json::to_string(&facts).expect("serialize");
    assert!(!serialized.contains("$6$salt"));
}

#[test]
fn extra_tracked_file_redacted_and_missing() {
    let root = base_root();
    write(
        root.path(),
        "/etc/app/app.conf",
        b"listen = 0.0.0.0:8080\ndb_password = hunter2\n-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
    );
    let mut options = CollectOptions::new(root.path());
    options.extra_tracked_files = vec![
        "/etc/app/*".to_string(),
        "/etc/app/missing.conf".to_string(),
    ];

    let facts = collect(&options);
    let file = &facts.tracked_files["/etc/app/app.conf"];
    let content = file.content.as_deref().expect("content");
    assert!(content.contains("listen = 0.0.0.0:8080"));
    assert!(content.contains("db_password = [REDACTED]"));
    assert!(!content.contains("hunter2"));
    assert!(!content.contains("MIIB"));
    assert!(!facts.tracked_files["/etc/app/missing.conf"].exists);
}
