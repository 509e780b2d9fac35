//! Mounted file systems with type, options, and (on a live system) size and free space.
//!
//! The mount table is `/proc/mounts` (falling back to `/proc/self/mounts` and `/etc/mtab`).
//! Kernel pseudo file systems (proc, sysfs, cgroup, ...) and mounts that come and go with
//! containers, user sessions and snaps are left out, because recording them would write a change
//! every time a container starts or a user logs in. When a mount point is mounted twice, the
//! later entry is the one that is visible, so it wins.
//!
//! Free space is rounded down to 1/100 of the total, so ordinary churn writes no change. Sizes
//! come from `statvfs`, which is called only on a live system. On a network file system it runs
//! on its own thread with a short timeout, because `statvfs` on a hung NFS server blocks.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use fleetmesh_model::facts::Mount;
use fleetmesh_model::Facts;

use super::context::Context;
use super::Parsed;
use crate::collect::add_error;

const NAME: &str = "storage";

/// How long `statvfs` on a network file system may take.
const NETWORK_STATVFS_TIMEOUT: Duration = Duration::from_secs(2);

/// File system types that hold no storage an administrator manages.
const PSEUDO_FS_TYPES: [&str; 25] = [
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.gvfsd-fuse",
    "fuse.portal",
    "fuse.lxcfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "sysfs",
    "tracefs",
];

/// Mount point prefixes of mounts that appear and vanish at run time.
const TRANSIENT_PREFIXES: [&str; 12] = [
    "/proc",
    "/sys",
    "/run/user",
    "/run/netns",
    "/run/docker",
    "/run/containerd",
    "/run/credentials",
    "/var/lib/docker",
    "/var/lib/containers",
    "/var/lib/kubelet",
    "/snap",
    "/var/snap",
];

/// File system types whose `statvfs` may hang on an unreachable server.
const NETWORK_FS_TYPES: [&str; 10] = [
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "fuse.sshfs",
    "9p",
    "afs",
];

/// One line of a mount table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountEntry {
    /// Source device or remote.
    pub device: String,
    /// Mount point.
    pub mount_point: String,
    /// File system type.
    pub fs_type: String,
    /// Mount options.
    pub options: String,
}

/// Collects mounts into `facts.mounts`.
pub fn collect(ctx: &Context, facts: &mut Facts) {
    let sources = ["/proc/mounts", "/proc/self/mounts", "/etc/mtab"];
    let Some((path, text)) = sources
        .iter()
        .find_map(|path| ctx.read_text(facts, NAME, path).map(|text| (*path, text)))
    else {
        // A captured tree often has no /proc; only a live system must have a mount table.
        if ctx.live() {
            add_error(
                facts,
                NAME,
                None,
                "no mount table found (/proc/mounts, /etc/mtab)",
            );
        }
        return;
    };

    for entry in parse_mounts(&text).into_value(facts, NAME, path) {
        if !is_managed_storage(&entry) {
            continue;
        }
        let mut mount = Mount {
            device: entry.device,
            fs_type: entry.fs_type,
            options: entry.options,
            ..Mount::default()
        };
        if ctx.live() {
            if ctx.expired() {
                ctx.record_expired(facts, NAME, None);
                return;
            }
            match space(&entry.mount_point, &mount.fs_type, ctx.remaining()) {
                Ok((total, free)) => {
                    mount.total_bytes = Some(total);
                    mount.free_bytes = Some(round_free(free, total));
                }
                Err(message) => add_error(facts, NAME, Some(&entry.mount_point), message),
            }
        }
        facts.mounts.insert(entry.mount_point, mount);
    }
}

/// Parses a mount table (`/proc/mounts` or `/etc/mtab` format) and decodes the octal escapes
/// (`\040` for a space) that the kernel writes in paths.
pub fn parse_mounts(text: &str) -> Parsed<Vec<MountEntry>> {
    let mut parsed = Parsed::<Vec<MountEntry>>::default();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 {
            parsed.problems.push(format!(
                "line {}: expected at least 4 fields, found {}",
                index + 1,
                fields.len()
            ));
            continue;
        }
        parsed.value.push(MountEntry {
            device: unescape_octal(fields[0]),
            mount_point: unescape_octal(fields[1]),
            fs_type: unescape_octal(fields[2]),
            options: unescape_octal(fields[3]),
        });
    }
    parsed
}

/// Decodes `\ooo` octal escapes; anything else is kept as written.
pub fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4).filter(|digits| {
            bytes[i] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, digit| acc * 8 + u32::from(digit - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Returns whether a mount contains storage worth recording (see the module documentation).
pub fn is_managed_storage(entry: &MountEntry) -> bool {
    if PSEUDO_FS_TYPES.contains(&entry.fs_type.as_str()) {
        return false;
    }
    let transient = TRANSIENT_PREFIXES.iter().any(|prefix| {
        entry.mount_point == *prefix
            || entry
                .mount_point
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    });
    !transient
}

/// Rounds free bytes down to a multiple of 1/100 of the total. Logs and caches move free space
/// every day, and a finer step would record that churn as configuration changes.
pub fn round_free(free: u64, total: u64) -> u64 {
    let step = (total / 100).max(1);
    free / step * step
}

/// Returns total and available bytes of the file system at `mount_point` (live systems only).
fn space(mount_point: &str, fs_type: &str, remaining: Duration) -> Result<(u64, u64), String> {
    if !NETWORK_FS_TYPES.contains(&fs_type) {
        return statvfs(mount_point);
    }
    let (sender, receiver) = mpsc::channel();
    let path = mount_point.to_string();
    thread::Builder::new()
        .name("collect-statvfs".to_string())
        .spawn(move || {
            let _ = sender.send(statvfs(&path));
        })
        .map_err(|err| format!("starting the statvfs thread failed: {err}"))?;
    let timeout = NETWORK_STATVFS_TIMEOUT.min(remaining);
    receiver.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(format!(
            "statvfs did not return within {} ms; the server may be unreachable",
            timeout.as_millis()
        ))
    })
}

fn statvfs(mount_point: &str) -> Result<(u64, u64), String> {
    let stat = rustix::fs::statvfs(mount_point).map_err(|err| format!("statvfs failed: {err}"))?;
    let total = stat.f_blocks.saturating_mul(stat.f_frsize);
    // Available to unprivileged users, as `df` shows it.
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    Ok((total, free))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_with_escapes() {
        let parsed = parse_mounts("/dev/sda1 /mnt/my\\040disk ext4 rw,relatime 0 0\nbroken line\n");
        assert_eq!(parsed.value.len(), 1);
        assert_eq!(parsed.value[0].mount_point, "/mnt/my disk");
        assert_eq!(parsed.problems.len(), 1);
    }

    #[test]
    fn free_space_rounding() {
        assert_eq!(round_free(123_456_789, 1_000_000_000), 120_000_000);
        assert_eq!(round_free(5, 10), 5);
        assert_eq!(round_free(0, 0), 0);
    }

    #[test]
    fn transient_mounts_are_skipped() {
        let entry = |mount_point: &str, fs_type: &str| MountEntry {
            mount_point: mount_point.to_string(),
            fs_type: fs_type.to_string(),
            ..MountEntry::default()
        };
        assert!(is_managed_storage(&entry("/", "ext4")));
        assert!(is_managed_storage(&entry("/srv", "xfs")));
        assert!(is_managed_storage(&entry("/snapshots", "btrfs")));
        assert!(!is_managed_storage(&entry("/run/user/1000", "tmpfs")));
        assert!(!is_managed_storage(&entry("/proc", "proc")));
        assert!(!is_managed_storage(&entry(
            "/var/lib/docker/overlay2/x/merged",
            "overlay"
        )));
    }
}
