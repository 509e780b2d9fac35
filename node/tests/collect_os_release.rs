//! os-release files of many distributions, checked against a plain reading of each file.

use std::fs;
use std::path::PathBuf;

use fleetmesh_node::collect::os::{os_from_fields, parse_os_release};
use fleetmesh_node::collect::{collect, CollectOptions};

/// Returns the os-release fixture folder, or `None` (after printing why) when it is absent.
fn os_release_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/os-release");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!(
            "SKIPPED: os-release fixtures not found at {}",
            dir.display()
        );
        None
    }
}

/// Reads `KEY=value` the simple way: the last line that starts with `KEY=`, with one pair of
/// surrounding quotes removed.
fn plain_value(text: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    let raw = text
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(&prefix))?;
    let raw = raw.trim();
    let unquoted = raw
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .or_else(|| {
            raw.strip_prefix('\'')
                .and_then(|rest| rest.strip_suffix('\''))
        })
        .unwrap_or(raw);
    Some(unquoted.to_string()).filter(|value| !value.is_empty())
}

#[test]
fn every_fixture_parses_like_plain_reading() {
    let Some(dir) = os_release_dir() else {
        return;
    };
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("fixture folder readable")
        .map(|entry| entry.expect("entry").path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 39, "found only {} fixtures", paths.len());

    for path in paths {
        let name = path.display().to_string();
        let text = fs::read_to_string(&path).expect("fixture is UTF-8");
        let parsed = parse_os_release(&text);
        assert!(parsed.problems.is_empty(), "{name}: {:?}", parsed.problems);
        let os = os_from_fields(parsed.value);

        assert_eq!(os.id, plain_value(&text, "ID"), "{name}: ID");
        assert!(os.id.is_some(), "{name}: ID missing");
        assert_eq!(
            os.version_id,
            plain_value(&text, "VERSION_ID"),
            "{name}: VERSION_ID"
        );
        assert_eq!(
            os.pretty_name,
            plain_value(&text, "PRETTY_NAME"),
            "{name}: PRETTY_NAME"
        );
        assert_eq!(os.name, plain_value(&text, "NAME"), "{name}: NAME");
    }
}

#[test]
fn fixture_without_version_id_reads_none() {
    let Some(dir) = os_release_dir() else {
        return;
    };
    let text = fs::read_to_string(dir.join("manjaro")).expect("fixture readable");
    let os = os_from_fields(parse_os_release(&text).value);
    assert_eq!(os.version_id, None);
    assert_eq!(os.id.as_deref(), Some("manjaro"));
}

#[test]
fn collect_reads_usr_lib_os_release_link() {
    let Some(dir) = os_release_dir() else {
        return;
    };
    let root = tempfile::tempdir().expect("temp dir");
    fs::create_dir_all(root.path().join("etc")).expect("mkdir");
    fs::create_dir_all(root.path().join("usr/lib")).expect("mkdir");
    fs::copy(
        dir.join("ubuntu_2204"),
        root.path().join("usr/lib/os-release"),
    )
    .expect("copy");
    // Debian and Ubuntu ship /etc/os-release as a relative link to /usr/lib/os-release.
    std::os::unix::fs::symlink("../usr/lib/os-release", root.path().join("etc/os-release"))
        .expect("symlink");

    let facts = collect(&CollectOptions::new(root.path()));
    assert_eq!(facts.os.id.as_deref(), Some("ubuntu"));
    assert_eq!(facts.os.version_id.as_deref(), Some("22.04"));
    assert_eq!(facts.os.id_like, vec!["debian"]);
    assert_eq!(facts.os.release_source.as_deref(), Some("/etc/os-release"));
}

#[test]
fn fallback_to_redhat_release() {
    let root = tempfile::tempdir().expect("temp dir");
    fs::create_dir_all(root.path().join("etc")).expect("mkdir");
    fs::write(
        root.path().join("etc/redhat-release"),
        "CentOS release 6.10 (Final)\n",
    )
    .expect("write");

    let facts = collect(&CollectOptions::new(root.path()));
    assert_eq!(facts.os.id.as_deref(), Some("centos"));
    assert_eq!(facts.os.version_id.as_deref(), Some("6.10"));
    assert_eq!(
        facts.os.release_source.as_deref(),
        Some("/etc/redhat-release")
    );
}
