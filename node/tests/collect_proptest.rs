//! Property tests: every parser of file contents takes arbitrary bytes without panicking, and
//! the binary database readers take damaged copies of real databases.

use std::path::PathBuf;

use fleetmesh_node::collect::network::{parse_net_dev_names, parse_resolv_conf, procnet};
use fleetmesh_node::collect::packages::{apk, bdb, dpkg, ndb, pacman, rpm};
use fleetmesh_node::collect::{
    accounts, hardware, os, redact, scheduled, services, storage, system, systemd,
};
use proptest::prelude::*;

/// Reads a database file used as the seed of the mutation tests, if it is present.
fn seed(relative: &str) -> Option<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read(path).ok()
}

/// Runs every text parser on `text`.
fn parse_all_text(text: &str) {
    let _ = os::parse_os_release(text);
    let _ = os::os_from_lsb_release(text);
    let _ = os::os_from_redhat_release(text);
    let _ = os::os_from_debian_version(text);
    let _ = os::os_from_alpine_release(text);
    let _ = os::parse_proc_version(text);

    let _ = system::parse_boot_time(text);
    let _ = system::fqdn_from_hosts(text, "web01");

    let _ = hardware::parse_cpuinfo(text);
    let _ = hardware::parse_meminfo(text);

    let _ = storage::parse_mounts(text);
    let _ = storage::unescape_octal(text);

    let _ = parse_net_dev_names(text);
    let _ = parse_resolv_conf(text);
    let _ = procnet::parse_route(text, true);
    let _ = procnet::parse_route(text, false);
    let _ = procnet::parse_ipv6_route(text);
    let _ = procnet::parse_if_inet6(text);
    let _ = procnet::parse_fib_trie_local(text);
    let _ = procnet::parse_sockets(text, false, false);
    let _ = procnet::parse_sockets(text, true, true);

    let _ = dpkg::parse_status(text, true);
    let _ = dpkg::parse_status(text, false);
    let _ = apk::parse_installed(text);
    let _ = pacman::parse_desc(text);

    let _ = accounts::parse_passwd(text);
    let _ = accounts::parse_group(text);
    let _ = accounts::parse_authorized_keys(text);
    let _ = accounts::authorized_keys_files(text);

    let _ = scheduled::parse_crontab(text, true);
    let _ = scheduled::parse_crontab(text, false);
    let _ = systemd::parse_unit_file(text);
    let _ = services::parse_list_units(text);

    let _ = redact::redact("/etc/app.conf", text);
    let _ = redact::redact("/etc/passwd", text);
}

/// Runs every binary parser on `bytes`.
fn parse_all_binary(bytes: &[u8]) {
    let _ = rpm::parse_header(bytes);
    let _ = rpm::parse_ndb(bytes);
    let _ = rpm::parse_bdb(bytes);
    let _ = ndb::read_blobs(bytes);
    let _ = bdb::read_hash_values(bytes);
    let _ = system::elf_architecture(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn text_parsers_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        parse_all_text(&String::from_utf8_lossy(&bytes));
        parse_all_binary(&bytes);
    }

    #[test]
    fn text_parsers_take_line_shaped_input(
        lines in proptest::collection::vec("[ -~\t]{0,80}", 0..40),
    ) {
        parse_all_text(&lines.join("\n"));
    }

    #[test]
    fn header_parser_takes_plausible_sizes(
        tags in 0u32..64,
        data_len in 0u32..4096,
        body in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut blob = Vec::new();
        blob.extend_from_slice(&tags.to_be_bytes());
        blob.extend_from_slice(&data_len.to_be_bytes());
        blob.extend_from_slice(&body);
        let _ = rpm::parse_header(&blob);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn ndb_reader_takes_damaged_database(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..32),
        cut in any::<prop::sample::Index>(),
    ) {
        let Some(mut bytes) = seed("../../shared/fixtures/rpmdb/sle15-bci/Packages.db") else {
            println!("SKIPPED: NDB fixture not found");
            return Ok(());
        };
        for (at, value) in &edits {
            let index = at.index(bytes.len());
            bytes[index] = *value;
        }
        let kept = cut.index(bytes.len() + 1);
        let _ = rpm::parse_ndb(&bytes[..kept]);
        let _ = rpm::parse_ndb(&bytes);
    }

    #[test]
    fn bdb_reader_takes_damaged_database(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..32),
        cut in any::<prop::sample::Index>(),
    ) {
        let Some(mut bytes) = seed("tests/fixtures/rpmdb-bdb/Packages") else {
            println!("SKIPPED: Berkeley DB fixture not found");
            return Ok(());
        };
        for (at, value) in &edits {
            let index = at.index(bytes.len());
            bytes[index] = *value;
        }
        let kept = cut.index(bytes.len() + 1);
        let _ = rpm::parse_bdb(&bytes[..kept]);
        let _ = rpm::parse_bdb(&bytes);
    }

    #[test]
    fn dpkg_parser_takes_damaged_status(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..64),
    ) {
        let Some(mut bytes) = seed("../../shared/fixtures/roots/debian12-container/var/lib/dpkg/status") else {
            println!("SKIPPED: dpkg status fixture not found");
            return Ok(());
        };
        for (at, value) in &edits {
            let index = at.index(bytes.len());
            bytes[index] = *value;
        }
        let parsed = dpkg::parse_status(&String::from_utf8_lossy(&bytes), true);
        prop_assert!(parsed.value.len() <= 707 + edits.len());
    }
}

/// Files a whole-collection run fills with arbitrary bytes.
const FUZZED_FILES: [&str; 12] = [
    "etc/os-release",
    "etc/passwd",
    "etc/group",
    "etc/crontab",
    "etc/resolv.conf",
    "var/lib/dpkg/status",
    "lib/apk/db/installed",
    "var/lib/rpm/Packages",
    "proc/net/tcp",
    "proc/cpuinfo",
    "proc/mounts",
    "lib/systemd/system/app.service",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn collect_takes_arbitrary_files(
        contents in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), FUZZED_FILES.len()),
    ) {
        let root = tempfile::tempdir().expect("temp dir");
        for (path, bytes) in FUZZED_FILES.iter().zip(&contents) {
            let file = root.path().join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, bytes).expect("write");
        }
        let facts = fleetmesh_node::collect::collect(&fleetmesh_node::collect::CollectOptions::new(root.path()));
        let panicked: Vec<_> = facts
            .collector_errors
            .values()
            .filter(|error| error.message.contains("panicked"))
            .collect();
        prop_assert!(panicked.is_empty(), "{:?}", panicked);
    }
}
