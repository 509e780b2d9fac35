//! Collection of the captured Debian 12 container tree in the shared fixtures: packages,
//! accounts, units, sockets and tracked files, plus determinism and a no-op second record.

use std::path::PathBuf;

use fleetmesh_model::{Identity, NodeDocument, NodeId, TenantId};
use fleetmesh_node::collect::{collect, CollectOptions};

/// Returns the fixture root, or `None` (after printing why) when the shared fixtures are absent.
fn debian_root() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/roots/debian12-container");
    if root.is_dir() {
        Some(root)
    } else {
        println!("SKIPPED: fixture root {} not found", root.display());
        None
    }
}

#[test]
fn debian_root_has_no_errors() {
    let Some(root) = debian_root() else {
        return;
    };
    let facts = collect(&CollectOptions::new(root));
    assert!(
        facts.collector_errors.is_empty(),
        "{:#?}",
        facts.collector_errors
    );
}

#[test]
fn debian_root_system_and_os() {
    let Some(root) = debian_root() else {
        return;
    };
    let facts = collect(&CollectOptions::new(root));
    assert_eq!(facts.system.hostname, "branch01-web");
    assert_eq!(
        facts.system.machine_id.as_deref(),
        Some("5c1d2f0e9b8a4c7d8e6f5a4b3c2d1e0f")
    );
    assert_eq!(facts.system.architecture.as_deref(), Some("x86_64"));
    assert_eq!(facts.os.id.as_deref(), Some("debian"));
    assert_eq!(facts.os.version_id.as_deref(), Some("12"));
    assert_eq!(facts.os.kernel_release.as_deref(), Some("6.18.44-fc-v1252"));
    assert_eq!(facts.hardware.cpu_threads, Some(2));
    assert_eq!(facts.hardware.memory_total_kib, Some(24_683_792));
    assert!(facts.mounts.contains_key("/"));
    assert!(!facts.mounts.contains_key("/proc"));
}

#[test]
fn debian_root_has_707_dpkg_packages() {
    let Some(root) = debian_root() else {
        return;
    };
    let facts = collect(&CollectOptions::new(root));
    assert_eq!(facts.packages.len(), 707);
    assert!(facts
        .packages
        .values()
        .all(|package| package.manager == "dpkg"));
    let libc = &facts.packages["libc6:amd64"];
    assert_eq!(libc.source.as_deref(), Some("glibc"));
    assert_eq!(libc.version, "2.36-9+deb12u14");
    assert!(facts.packages.contains_key("bash:amd64"));
}

#[test]
fn debian_root_users_and_groups() {
    let Some(root) = debian_root() else {
        return;
    };
    let facts = collect(&CollectOptions::new(root));
    assert_eq!(facts.users.len(), 24);
    let root_user = &facts.users["root"];
    assert_eq!((root_user.uid, root_user.gid), (0, 0));
    assert_eq!(root_user.shell, "/bin/bash");
    let postgres = &facts.users["postgres"];
    assert_eq!(postgres.uid, 101);
    assert_eq!(postgres.home, "/var/lib/postgresql");
    assert!(facts.users.contains_key("cloudsdk"));
    assert!(
        facts.users.values().all(|user| !user.admin),
        "the sudo group has no members"
    );
    assert_eq!(facts.groups["ssl-cert"].members, vec!["postgres"]);
    assert_eq!(facts.groups["sudo"].gid, 27);
}

#[test]
fn debian_root_enabled_units() {
    let Some(root) = debian_root() else {
        return;
    };
    let facts = collect(&CollectOptions::new(root));
    assert_eq!(
        facts.service_manager.as_deref(),
        Some("systemd (not running)")
    );
    let enabled = |unit: &str| {
        facts
            .services
            .get(unit)
            .and_then(|service| service.enabled.as_deref())
    };
    assert_eq!(enabled("ssh.service"), Some("enabled"));
    assert_eq!(enabled("cron.service"), Some("enabled"));
    assert_eq!(enabled("nginx.service"), Some("disabled"));
    assert_eq!(enabled("sshd.service"), Some("alias"));
    assert!(facts
        .services
        .values()
        .all(|service| service.active.is_none()));
    assert_eq!(
        facts.services["ssh.service"].description.as_deref(),
        Some("OpenBSD Secure Shell server")
    );
}

#[test]
fn debian_root_network() {
    let Some(root) = debian_root() else {
        return;
    };
    let facts = collect(&CollectOptions::new(root));
    let socket = facts
        .listening
        .get("tcp/0.0.0.0:2024")
        .expect("listening socket");
    assert_eq!(socket.port, 2024);
    assert_eq!(socket.uid, Some(0));
    assert_eq!(
        socket.process, None,
        "owners are only looked up on a live system"
    );
    assert_eq!(facts.listening.len(), 1);

    let default = facts
        .routes
        .get("default via 192.0.2.1 dev eth0")
        .expect("IPv4 default route");
    assert_eq!(default.destination, "default");
    assert!(facts.routes.contains_key("default via fd00::1 dev eth0"));
    assert!(facts.interfaces["eth0"]
        .addresses
        .contains_key("fd00::2/64"));
    assert!(facts.interfaces.contains_key("lo"));
}

#[test]
fn debian_root_sshd_config_content() {
    let Some(root) = debian_root() else {
        return;
    };
    let facts = collect(&CollectOptions::new(root));
    let file = &facts.tracked_files["/etc/ssh/sshd_config"];
    assert!(file.exists);
    assert_eq!(file.size, Some(282));
    assert_eq!(file.sha256.as_ref().map(String::len), Some(64));
    let content = file.content.as_deref().expect("text content");
    assert!(content.contains("PermitRootLogin yes"));
    assert!(content.contains("PasswordAuthentication yes"));
    assert!(!facts.tracked_files.contains_key("/etc/shadow"));
}

#[test]
fn debian_root_collects_deterministically() {
    let Some(root) = debian_root() else {
        return;
    };
    let options = CollectOptions::new(root);
    let first = collect(&options);
    let second = collect(&options);
    assert_eq!(first, second);
}

#[test]
fn debian_root_second_record_is_none() {
    let Some(root) = debian_root() else {
        return;
    };
    let options = CollectOptions::new(root);
    let node = NodeId([7; 32]);
    let tenant = TenantId::new("acme").expect("valid tenant name");
    let mut document = NodeDocument::new(tenant, node);
    let identity = Identity {
        node_id: node.to_string(),
        tenant: "acme".to_string(),
        site: "branch01".to_string(),
        hostname: "branch01-web".to_string(),
        agent_version: "test".to_string(),
    };

    let first = document
        .record(&identity, &collect(&options), 1_700_000_000)
        .expect("first record succeeds");
    assert!(first.is_some(), "the first collection writes a change");
    let second = document
        .record(&identity, &collect(&options), 1_700_000_600)
        .expect("second record succeeds");
    assert!(second.is_none(), "an unchanged machine writes no change");
}
