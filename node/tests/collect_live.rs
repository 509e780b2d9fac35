//! Collection of the machine running the tests (root `/`), which exercises the live-only paths:
//! `statvfs`, socket owners from `/proc/<pid>/fd`, and the systemd check.

use std::path::Path;
use std::time::Instant;

use fleetmesh_node::collect::{collect, CollectOptions};

#[test]
fn live_root_collects_real_facts() {
    if !Path::new("/proc/self/stat").exists() {
        println!("SKIPPED: /proc is not mounted, so this is not a live Linux system");
        return;
    }
    let options = CollectOptions::new("/");
    assert!(options.live);

    let started = Instant::now();
    let facts = collect(&options);
    let elapsed = started.elapsed();
    println!(
        "live collection: {} ms, {} packages, {} mounts, {} interfaces, {} listening, {} users, {} errors",
        elapsed.as_millis(),
        facts.packages.len(),
        facts.mounts.len(),
        facts.interfaces.len(),
        facts.listening.len(),
        facts.users.len(),
        facts.collector_errors.len()
    );
    for (key, error) in &facts.collector_errors {
        println!("error fact {key}: {}", error.message);
    }

    assert!(elapsed < options.collector_budget * 2);
    let panicked: Vec<_> = facts
        .collector_errors
        .values()
        .filter(|error| error.message.contains("panicked"))
        .collect();
    assert!(panicked.is_empty(), "{panicked:?}");
    assert!(!facts.system.hostname.is_empty());
    assert!(facts.system.boot_time.is_some());
    assert!(facts.system.architecture.is_some());
    assert!(facts.os.kernel_release.is_some());
    assert!(facts.hardware.cpu_threads.is_some());
    assert!(facts.users.contains_key("root"));
    if Path::new("/etc/os-release").exists() {
        assert!(facts.os.id.is_some());
    }
    if Path::new("/var/lib/dpkg/status").exists() {
        assert!(!facts.packages.is_empty());
    }
    if Path::new("/proc/net/fib_trie").exists() {
        let loopback = &facts.interfaces["lo"];
        assert!(
            loopback.addresses.contains_key("127.0.0.1/8"),
            "{loopback:?}"
        );
        assert!(
            !loopback.addresses.contains_key("127.0.0.0/8"),
            "{loopback:?}"
        );
    }
    let root_mount = facts.mounts.get("/").expect("/ is mounted");
    assert!(
        root_mount.total_bytes.is_some(),
        "statvfs runs on a live system"
    );
    assert!(root_mount.free_bytes <= root_mount.total_bytes);
}
