//! systemd enabled states and scheduled tasks in a small tree written by the test.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use fleetmesh_node::collect::{collect, CollectOptions};

fn write(root: &Path, path: &str, contents: &str) {
    let file = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    fs::write(file, contents).expect("write");
}

fn link(root: &Path, target: &str, path: &str) {
    let file = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    symlink(target, file).expect("symlink");
}

/// Builds a tree with a masked, a static, a template, a timer and an admin override unit.
fn units_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    let path = root.path();
    let vendor = "/usr/lib/systemd/system";

    write(
        path,
        &format!("{vendor}/getty@.service"),
        "[Unit]\nDescription=Getty on %I\n[Install]\nWantedBy=getty.target\n",
    );
    link(
        path,
        &format!("{vendor}/getty@.service"),
        "/etc/systemd/system/getty.target.wants/getty@tty1.service",
    );
    write(
        path,
        &format!("{vendor}/systemd-journald.service"),
        "[Unit]\nDescription=Journal Service\n",
    );
    write(
        path,
        &format!("{vendor}/rpcbind.service"),
        "[Unit]\nDescription=RPC bind\n[Install]\nWantedBy=multi-user.target\n",
    );
    link(path, "/dev/null", "/etc/systemd/system/rpcbind.service");
    write(path, &format!("{vendor}/backup.timer"), "[Unit]\nDescription=Nightly backup\n[Timer]\nOnCalendar=*-*-* 02:30:00\nPersistent=true\n[Install]\nWantedBy=timers.target\n");
    write(
        path,
        &format!("{vendor}/backup.service"),
        "[Unit]\nDescription=Backup\n[Service]\nUser=backup\nExecStart=/usr/local/bin/backup\n",
    );
    link(
        path,
        &format!("{vendor}/backup.timer"),
        "/etc/systemd/system/timers.target.wants/backup.timer",
    );
    write(
        path,
        &format!("{vendor}/app.service"),
        "[Unit]\nDescription=Vendor app\n[Install]\nWantedBy=multi-user.target\n",
    );
    write(
        path,
        "/etc/systemd/system/app.service",
        "[Unit]\nDescription=Local app override\n[Install]\nWantedBy=multi-user.target\n",
    );
    write(
        path,
        "/var/spool/cron/crontabs/alice",
        "# m h dom mon dow command\n@hourly /home/alice/bin/sync\n",
    );
    write(path, "/etc/cron.daily/logrotate", "#!/bin/sh\n");
    root
}

#[test]
fn unit_enabled_states() {
    let root = units_root();
    let facts = collect(&CollectOptions::new(root.path()));
    let enabled = |unit: &str| {
        facts
            .services
            .get(unit)
            .and_then(|service| service.enabled.as_deref())
    };

    assert_eq!(enabled("getty@tty1.service"), Some("enabled"));
    assert_eq!(enabled("getty@.service"), Some("indirect"));
    assert_eq!(enabled("systemd-journald.service"), Some("static"));
    assert_eq!(enabled("rpcbind.service"), Some("masked"));
    assert_eq!(enabled("backup.timer"), Some("enabled"));
    assert_eq!(enabled("app.service"), Some("disabled"));
    assert_eq!(
        facts.services["getty@tty1.service"].description.as_deref(),
        Some("Getty on %I")
    );
}

#[test]
fn admin_unit_file_overrides_vendor() {
    let root = units_root();
    let facts = collect(&CollectOptions::new(root.path()));
    let app = &facts.services["app.service"];
    assert_eq!(
        app.unit_file.as_deref(),
        Some("/etc/systemd/system/app.service")
    );
    assert_eq!(app.description.as_deref(), Some("Local app override"));
}

#[test]
fn timers_and_user_crontabs() {
    let root = units_root();
    let facts = collect(&CollectOptions::new(root.path()));

    let timer = &facts.scheduled_tasks["/usr/lib/systemd/system/backup.timer:backup.timer"];
    assert_eq!(timer.kind, "systemd-timer");
    assert_eq!(timer.schedule, "OnCalendar=*-*-* 02:30:00");
    assert_eq!(timer.command, "backup.service");
    assert_eq!(timer.user.as_deref(), Some("backup"));

    let cron =
        &facts.scheduled_tasks["/var/spool/cron/crontabs/alice:@hourly /home/alice/bin/sync"];
    assert_eq!(cron.user.as_deref(), Some("alice"));
    assert_eq!(cron.schedule, "@hourly");

    let daily = &facts.scheduled_tasks["/etc/cron.daily/logrotate:@daily"];
    assert_eq!(daily.command, "/etc/cron.daily/logrotate");
}
