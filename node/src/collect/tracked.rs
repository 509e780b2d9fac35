//! Tracked configuration files: hash, size, mode, owner, modification time and, for text files
//! up to 64 KiB, the contents with secrets redacted (see [`super::redact`]).
//!
//! [`DEFAULT_TRACKED_FILES`] lists what an MSP usually audits; configured extra paths are added
//! to it. A path ending in `/*` stands for every regular file in that directory. Default files
//! that do not exist are left out; an extra path that does not exist is recorded with
//! `exists: false`, so its later appearance shows in the history.
//!
//! `/etc/shadow`, `/etc/gshadow`, their backups and `/etc/security/opasswd` hold password
//! hashes and are never read, even when configured.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fleetmesh_model::facts::TrackedFile;
use fleetmesh_model::Facts;
use sha2::{Digest, Sha256};

use super::context::Context;
use super::redact::redact;
use crate::collect::add_error;

const NAME: &str = "tracked_files";

/// Largest file whose contents are recorded.
pub const CONTENT_MAX_BYTES: u64 = 64 * 1024;

/// Files listed per `/*` directory pattern at most, so a directory full of generated files
/// cannot flood the document.
const DIRECTORY_FILES_MAX: usize = 256;

/// Files an MSP usually audits.
pub const DEFAULT_TRACKED_FILES: [&str; 52] = [
    "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d/*",
    "/etc/ssh/ssh_config",
    "/etc/sudoers",
    "/etc/sudoers.d/*",
    "/etc/passwd",
    "/etc/group",
    "/etc/login.defs",
    "/etc/security/limits.conf",
    "/etc/security/access.conf",
    "/etc/pam.d/sshd",
    "/etc/pam.d/sudo",
    "/etc/pam.d/common-auth",
    "/etc/pam.d/common-password",
    "/etc/pam.d/system-auth",
    "/etc/pam.d/password-auth",
    "/etc/fstab",
    "/etc/crypttab",
    "/etc/hosts",
    "/etc/hosts.allow",
    "/etc/hosts.deny",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/network/interfaces",
    "/etc/netplan/*",
    "/etc/crontab",
    "/etc/cron.d/*",
    "/etc/sysctl.conf",
    "/etc/sysctl.d/*",
    "/etc/environment",
    "/etc/default/grub",
    "/etc/selinux/config",
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d/*",
    "/etc/yum.repos.d/*",
    "/etc/dnf/dnf.conf",
    "/etc/zypp/repos.d/*",
    "/etc/apk/repositories",
    "/etc/pacman.conf",
    "/etc/ntp.conf",
    "/etc/chrony.conf",
    "/etc/chrony/chrony.conf",
    "/etc/systemd/timesyncd.conf",
    "/etc/audit/auditd.conf",
    "/etc/audit/rules.d/*",
    "/etc/nftables.conf",
    "/etc/iptables/rules.v4",
    "/etc/iptables/rules.v6",
    "/etc/ufw/ufw.conf",
    "/etc/rsyslog.conf",
    "/etc/logrotate.conf",
];

/// Files never read because they hold password hashes.
const FORBIDDEN_FILES: [&str; 5] = [
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
];

/// Collects the default and configured files into `facts.tracked_files`.
pub fn collect(ctx: &Context, facts: &mut Facts) {
    let defaults = expand_patterns(ctx, facts, DEFAULT_TRACKED_FILES.iter().copied());
    let extras = expand_patterns(
        ctx,
        facts,
        ctx.extra_tracked_files().iter().map(String::as_str),
    );

    for path in defaults.union(&extras) {
        if ctx.expired() {
            ctx.record_expired(facts, NAME, None);
            return;
        }
        if let Some(file) = read_tracked(ctx, facts, path) {
            if file.exists || extras.contains(path) {
                facts.tracked_files.insert(path.clone(), file);
            }
        }
    }
}

/// Expands `/*` patterns and normalizes paths; invalid or forbidden paths become error facts.
fn expand_patterns<'a>(
    ctx: &Context,
    facts: &mut Facts,
    patterns: impl Iterator<Item = &'a str>,
) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for pattern in patterns {
        let Some(normal) = normalize(pattern) else {
            add_error(
                facts,
                NAME,
                Some(pattern),
                "tracked paths must be absolute, such as /etc/app.conf or /etc/app.d/*",
            );
            continue;
        };
        let Some(dir) = normal.strip_suffix("/*") else {
            paths.insert(normal);
            continue;
        };
        let names = ctx.list_dir(facts, NAME, dir);
        if names.len() > DIRECTORY_FILES_MAX {
            add_error(
                facts,
                NAME,
                Some(&normal),
                format!(
                    "directory has {} entries; only the first {DIRECTORY_FILES_MAX} are tracked",
                    names.len()
                ),
            );
        }
        for name in names.into_iter().take(DIRECTORY_FILES_MAX) {
            let path = format!("{dir}/{name}");
            if ctx.resolve(&path).is_file() {
                paths.insert(path);
            }
        }
    }
    paths
}

/// Makes `path` absolute-normal (no `.`, `..` or doubled slashes); `None` if it is relative.
fn normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn is_forbidden(path: &str) -> bool {
    FORBIDDEN_FILES.contains(&path)
}

/// Reads one tracked file. Returns `None` when the file was skipped with an error fact.
fn read_tracked(ctx: &Context, facts: &mut Facts, path: &str) -> Option<TrackedFile> {
    let host = ctx.resolve(path);
    let target = ctx.machine_path(&host);
    if is_forbidden(path) || target.as_deref().is_some_and(is_forbidden) {
        add_error(
            facts,
            NAME,
            Some(path),
            "not tracked: the file holds password hashes, which are never read",
        );
        return None;
    }

    let meta = match fs::metadata(&host) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Some(TrackedFile::default()),
        Err(err) => {
            add_error(facts, NAME, Some(path), format!("stat failed: {err}"));
            return None;
        }
    };
    if !meta.is_file() {
        add_error(
            facts,
            NAME,
            Some(path),
            "not a regular file, so it is not tracked",
        );
        return None;
    }

    let mut file = TrackedFile {
        exists: true,
        size: Some(meta.len()),
        mode: Some(format!("{:04o}", meta.mode() & 0o7777)),
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
        mtime: Some(meta.mtime()),
        ..TrackedFile::default()
    };
    match hash_and_head(&host) {
        Ok((sha256, head, size)) => {
            file.sha256 = Some(sha256);
            file.size = Some(size);
            file.content = text_content(path, head, size);
        }
        Err(err) => add_error(facts, NAME, Some(path), format!("read failed: {err}")),
    }
    Some(file)
}

/// Hashes the whole file and keeps its first [`CONTENT_MAX_BYTES`] + 1 bytes. Returns the hex
/// digest, the kept bytes and the number of bytes read.
fn hash_and_head(host: &Path) -> io::Result<(String, Vec<u8>, u64)> {
    let mut file = fs::File::open(host)?;
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        let chunk = &buffer[..read];
        hasher.update(chunk);
        let room = (CONTENT_MAX_BYTES as usize + 1).saturating_sub(head.len());
        head.extend_from_slice(&chunk[..read.min(room)]);
        total += read as u64;
    }
    Ok((hex::encode(hasher.finalize()), head, total))
}

/// Returns the redacted text of a small text file, or `None` for large or binary files.
fn text_content(path: &str, head: Vec<u8>, size: u64) -> Option<String> {
    if size > CONTENT_MAX_BYTES || head.contains(&0) {
        return None;
    }
    let text = String::from_utf8(head).ok()?;
    Some(redact(path, &text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(
            normalize("/etc//ssh/./sshd_config").as_deref(),
            Some("/etc/ssh/sshd_config")
        );
        assert_eq!(
            normalize("/etc/../etc/shadow").as_deref(),
            Some("/etc/shadow")
        );
        assert_eq!(normalize("etc/hosts"), None);
    }
}
