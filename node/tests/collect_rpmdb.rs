//! rpm databases in all three formats: the NDB and SQLite fixtures from real images, a Berkeley
//! DB file made with `db5.3_load`, and truncated copies of each.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use fleetmesh_model::Facts;
use fleetmesh_node::collect::packages::rpm;
use fleetmesh_node::collect::{collect, CollectOptions};

/// Returns the shared fixture folder, or `None` (after printing why) when it is absent.
fn shared_fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("SKIPPED: shared fixtures not found at {}", dir.display());
        None
    }
}

/// Collects a temporary root that holds only `bytes` at `path`.
fn collect_with_file(path: &str, bytes: &[u8]) -> Facts {
    let root = tempfile::tempdir().expect("temp dir");
    let file = root.path().join(path.trim_start_matches('/'));
    fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    fs::write(&file, bytes).expect("write");
    collect(&CollectOptions::new(root.path()))
}

fn rpm_errors(facts: &Facts) -> Vec<String> {
    facts
        .collector_errors
        .values()
        .filter(|error| error.collector == "packages.rpm")
        .map(|error| error.message.clone())
        .collect()
}

/// Reads `expected-packages.csv` rows (name, epoch, version, release, arch).
fn expected_rows(csv: &Path) -> BTreeSet<(String, String, String, String, String)> {
    let text = fs::read_to_string(csv).expect("csv readable");
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 5, "csv line {line:?}");
            (
                fields[0].to_string(),
                fields[1].to_string(),
                fields[2].to_string(),
                fields[3].to_string(),
                fields[4].to_string(),
            )
        })
        .collect()
}

#[test]
fn ndb_matches_expected_csv() {
    let Some(fixtures) = shared_fixtures() else {
        return;
    };
    let dir = fixtures.join("rpmdb/sle15-bci");
    let bytes = fs::read(dir.join("Packages.db")).expect("fixture readable");

    let parsed = rpm::parse_ndb(&bytes);
    assert!(
        parsed.problems.is_empty(),
        "problems: {:?}",
        parsed.problems
    );
    let found: BTreeSet<_> = parsed
        .value
        .iter()
        .map(|package| {
            (
                package.name.clone(),
                package
                    .epoch
                    .map(|epoch| epoch.to_string())
                    .unwrap_or_default(),
                package.version.clone(),
                package.release.clone().unwrap_or_default(),
                package.arch.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(parsed.value.len(), found.len(), "duplicate packages");
    assert_eq!(found, expected_rows(&dir.join("expected-packages.csv")));
}

#[test]
fn ndb_collected_from_root() {
    let Some(fixtures) = shared_fixtures() else {
        return;
    };
    let bytes = fs::read(fixtures.join("rpmdb/sle15-bci/Packages.db")).expect("fixture readable");
    let facts = collect_with_file("/usr/lib/sysimage/rpm/Packages.db", &bytes);
    assert!(rpm_errors(&facts).is_empty(), "{:?}", rpm_errors(&facts));
    let bash = &facts.packages["bash:x86_64"];
    assert_eq!(bash.manager, "rpm");
    assert_eq!(bash.full_version(), "4.4-19.6.1");
    assert!(bash.install_time.is_some());
}

#[test]
fn sqlite_has_129_packages_with_curl() {
    let Some(fixtures) = shared_fixtures() else {
        return;
    };
    let bytes =
        fs::read(fixtures.join("rpmdb/cbl-mariner-2.0/rpmdb.sqlite")).expect("fixture readable");
    let facts = collect_with_file("/var/lib/rpm/rpmdb.sqlite", &bytes);

    assert!(rpm_errors(&facts).is_empty(), "{:?}", rpm_errors(&facts));
    assert_eq!(facts.packages.len(), 129);
    let curl = facts.packages.get("curl:x86_64").expect("curl installed");
    assert_eq!(curl.version, "7.76.0");
    assert_eq!(curl.release.as_deref(), Some("6.cm2"));
    assert_eq!(curl.arch.as_deref(), Some("x86_64"));
    assert_eq!(curl.epoch, None);
}

#[test]
fn sqlite_in_captured_tree_is_not_written() {
    let Some(fixtures) = shared_fixtures() else {
        return;
    };
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("var/lib/rpm");
    fs::create_dir_all(&dir).expect("mkdir");
    fs::copy(
        fixtures.join("rpmdb/cbl-mariner-2.0/rpmdb.sqlite"),
        dir.join("rpmdb.sqlite"),
    )
    .expect("copy");

    let facts = collect(&CollectOptions::new(root.path()));
    assert_eq!(facts.packages.len(), 129);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("list")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, vec!["rpmdb.sqlite"]);
}

#[test]
fn bdb_packages_from_db_load_file() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rpmdb-bdb/Packages");
    let bytes = fs::read(path).expect("fixture readable");
    let facts = collect_with_file("/var/lib/rpm/Packages", &bytes);

    assert!(rpm_errors(&facts).is_empty(), "{:?}", rpm_errors(&facts));
    assert_eq!(facts.packages.len(), 3);
    let bash = &facts.packages["bash:x86_64"];
    assert_eq!(bash.full_version(), "4.4.20-4.el8");
    assert_eq!(bash.install_time, Some(1_700_000_001));
    let openssl = &facts.packages["openssl-libs:x86_64"];
    assert_eq!(openssl.full_version(), "1:1.1.1k-12.el8");
    assert_eq!(openssl.source.as_deref(), Some("openssl"));
    assert!(facts.packages.contains_key("tzdata:noarch"));
}

#[test]
fn bdb_other_format_is_unsupported_error() {
    let mut bytes = vec![0u8; 4096];
    bytes[12..16].copy_from_slice(&0x0005_3162u32.to_le_bytes());
    let facts = collect_with_file("/var/lib/rpm/Packages", &bytes);
    let errors = rpm_errors(&facts);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("unsupported rpmdb format"), "{errors:?}");
    assert!(facts.packages.is_empty());
}

#[test]
fn truncated_ndb_gives_partial_packages_and_error() {
    let Some(fixtures) = shared_fixtures() else {
        return;
    };
    let bytes = fs::read(fixtures.join("rpmdb/sle15-bci/Packages.db")).expect("fixture readable");
    let facts = collect_with_file(
        "/usr/lib/sysimage/rpm/Packages.db",
        &bytes[..bytes.len() / 2],
    );

    let errors = rpm_errors(&facts);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("past the end"), "{errors:?}");
    assert!(!facts.packages.is_empty());
    assert!(facts.packages.len() < 35);
}

#[test]
fn truncated_sqlite_gives_error_fact() {
    let Some(fixtures) = shared_fixtures() else {
        return;
    };
    let bytes =
        fs::read(fixtures.join("rpmdb/cbl-mariner-2.0/rpmdb.sqlite")).expect("fixture readable");
    let facts = collect_with_file("/var/lib/rpm/rpmdb.sqlite", &bytes[..bytes.len() / 3]);

    let errors = rpm_errors(&facts);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(facts.packages.len() < 129);
}

#[test]
fn truncated_bdb_gives_partial_packages_and_error() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rpmdb-bdb/Packages");
    let bytes = fs::read(path).expect("fixture readable");
    let facts = collect_with_file("/var/lib/rpm/Packages", &bytes[..bytes.len() - 3000]);

    let errors = rpm_errors(&facts);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(facts.packages.len() < 3);
}
