//! Context of a collection run: the root to read under, whether the running system may be asked,
//! the deadline, and file helpers that turn I/O problems into error facts.
//!
//! Paths are given as they are on the machine (`/etc/os-release`) and are read under the root.
//! When the root is not `/`, symbolic links are resolved inside the root, so an absolute link in
//! a captured tree (`etc/resolv.conf -> /run/...`) never leads out to the collecting host.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::collect::add_error;
use fleetmesh_model::Facts;

/// Largest file a collector reads whole unless it passes its own limit (64 MiB).
pub const READ_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Symbolic links followed while resolving one path; the kernel stops at 40 as well.
const SYMLINK_HOPS_MAX: usize = 40;

/// Largest file that can replace a symbolic link (see [`Context::read_link_like`]).
const LINK_FILE_MAX_BYTES: u64 = 4096;

/// Reason a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The file does not exist; collectors treat this as "nothing to record".
    NotFound,
    /// Any other problem, as a message for an error fact.
    Failed(String),
}

/// Shared state of one collection run.
#[derive(Debug)]
pub struct Context {
    root: PathBuf,
    live: bool,
    deadline: Instant,
    budget: Duration,
    extra_tracked_files: Vec<String>,
}

impl Context {
    /// Creates a context that reads under `root` until `deadline`.
    pub fn new(root: PathBuf, live: bool, budget: Duration, deadline: Instant) -> Self {
        Context {
            root,
            live,
            deadline,
            budget,
            extra_tracked_files: Vec::new(),
        }
    }

    /// Adds files to track beyond the default list.
    pub fn with_extra_tracked_files(mut self, files: Vec<String>) -> Self {
        self.extra_tracked_files = files;
        self
    }

    /// Files to track beyond the default list, as configured.
    pub fn extra_tracked_files(&self) -> &[String] {
        &self.extra_tracked_files
    }

    /// Returns whether the running system may be asked (commands, `/proc/<pid>/fd`, `statvfs`).
    pub fn live(&self) -> bool {
        self.live
    }

    /// Returns whether the time budget is used up. Loops over many items check it and stop early.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Records that `collector` stopped early because the budget ran out.
    pub fn record_expired(&self, facts: &mut Facts, collector: &str, path: Option<&str>) {
        add_error(
            facts,
            collector,
            path,
            format!(
                "stopped early: time budget of {} ms used up, so the facts are incomplete",
                self.budget.as_millis()
            ),
        );
    }

    /// Returns where `path` (absolute, as on the machine) lies on the collecting host,
    /// without following any link.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Returns where `path` lies on the collecting host, with symbolic links resolved inside
    /// the root. On a live system the kernel resolves them, so the path is returned as is.
    pub fn resolve(&self, path: &str) -> PathBuf {
        if self.live {
            return self.host_path(path);
        }

        let mut pending: Vec<OsString> = components_reversed(Path::new(path));
        let mut resolved: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                resolved.pop();
                continue;
            }
            resolved.push(part);
            let host = self.join_root(&resolved);
            let Ok(meta) = fs::symlink_metadata(&host) else {
                // Missing: the rest cannot be links, and opening the path reports the error.
                resolved.extend(pending.into_iter().rev());
                return self.join_root(&resolved);
            };
            if !meta.file_type().is_symlink() {
                continue;
            }
            hops += 1;
            let Ok(target) = fs::read_link(&host) else {
                continue;
            };
            if hops > SYMLINK_HOPS_MAX {
                // Opening this path fails with "too many levels of symbolic links" on the host.
                resolved.extend(pending.into_iter().rev());
                return self.join_root(&resolved);
            }
            resolved.pop();
            if target.is_absolute() {
                resolved.clear();
            }
            pending.extend(components_reversed(&target));
        }
        self.join_root(&resolved)
    }

    /// Returns the path on the machine (`/etc/shadow`) of a host path under the root,
    /// or `None` when the host path lies outside the root or is not UTF-8.
    pub fn machine_path(&self, host: &Path) -> Option<String> {
        let inside = host.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", inside.to_str()?))
    }

    fn join_root(&self, parts: &[OsString]) -> PathBuf {
        let mut out = self.root.clone();
        out.extend(parts);
        out
    }

    /// Reads a whole regular file of at most `max_bytes`.
    ///
    /// Anything but a regular file (a directory, a FIFO, a device) is rejected before it is
    /// opened, so a FIFO in a captured tree cannot block the collector.
    pub fn read(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, ReadError> {
        let host = self.resolve(path);
        read_regular(&host, max_bytes)
    }

    /// Reads a text file. A missing file returns `None` without an error fact; other failures
    /// record one. Bytes that are not UTF-8 are replaced (U+FFFD) and recorded as an error fact,
    /// so the readable part is still used.
    pub fn read_text(&self, facts: &mut Facts, collector: &str, path: &str) -> Option<String> {
        self.read_text_limited(facts, collector, path, READ_MAX_BYTES)
    }

    /// Like [`Context::read_text`] with a size limit.
    pub fn read_text_limited(
        &self,
        facts: &mut Facts,
        collector: &str,
        path: &str,
        max_bytes: u64,
    ) -> Option<String> {
        let bytes = self.read_bytes(facts, collector, path, max_bytes)?;
        Some(decode_text(facts, collector, path, bytes))
    }

    /// Reads a file as bytes. A missing file returns `None` quietly; other failures record an
    /// error fact.
    pub fn read_bytes(
        &self,
        facts: &mut Facts,
        collector: &str,
        path: &str,
        max_bytes: u64,
    ) -> Option<Vec<u8>> {
        match self.read(path, max_bytes) {
            Ok(bytes) => Some(bytes),
            Err(ReadError::NotFound) => None,
            Err(ReadError::Failed(message)) => {
                add_error(facts, collector, Some(path), message);
                None
            }
        }
    }

    /// Reads a small sysfs or procfs attribute: the first line, trimmed. Missing, unreadable
    /// and empty files all return `None` without an error fact, because many attributes are
    /// optional or restricted to root.
    pub fn read_attribute(&self, path: &str) -> Option<String> {
        let bytes = self.read(path, 64 * 1024).ok()?;
        let text = String::from_utf8_lossy(&bytes);
        let line = text.lines().next().unwrap_or("").trim();
        (!line.is_empty()).then(|| line.to_string())
    }

    /// Lists the names in a directory, sorted. A missing directory gives an empty list; other
    /// failures record an error fact. Names that are not UTF-8 are skipped.
    pub fn list_dir(&self, facts: &mut Facts, collector: &str, path: &str) -> Vec<String> {
        let host = self.resolve(path);
        let entries = match fs::read_dir(&host) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(err) if err.kind() == io::ErrorKind::NotADirectory => return Vec::new(),
            Err(err) => {
                add_error(
                    facts,
                    collector,
                    Some(path),
                    format!("listing failed: {err}"),
                );
                return Vec::new();
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Returns the target of a symbolic link at `path`, or the path held by a small file that
    /// replaces one.
    ///
    /// Trees copied by tools without link support keep a link as a regular file holding the
    /// target path on one line. A real unit or configuration file never consists of a single
    /// absolute path, so such a file is read as a link.
    pub fn read_link_like(&self, path: &str) -> Option<String> {
        let host = self.host_path(path);
        let meta = fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            return fs::read_link(&host)
                .ok()
                .and_then(|target| target.to_str().map(str::to_string));
        }
        if !meta.is_file() || meta.len() == 0 || meta.len() > LINK_FILE_MAX_BYTES {
            return None;
        }
        let bytes = fs::read(&host).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?.trim();
        let is_path = text.starts_with('/')
            && !text.contains(char::is_whitespace)
            && !text.contains(['[', '=']);
        is_path.then(|| text.to_string())
    }

    /// Runs a command of the live system and returns its standard output.
    ///
    /// The command gets no input and is killed when it outlives `timeout` or the collector's
    /// deadline, whichever comes first.
    pub fn run_command(
        &self,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String, String> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("LC_ALL", "C")
            .spawn()
            .map_err(|err| format!("starting {program} failed: {err}"))?;

        // Read output on a thread so that a full pipe cannot stall the child while we wait.
        let mut stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(pipe) = stdout.as_mut() {
                let _ = pipe.take(READ_MAX_BYTES).read_to_end(&mut out);
            }
            out
        });

        let limit = Instant::now() + timeout.min(self.remaining());
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{program} timed out after {} ms",
                        timeout.as_millis()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(err) => return Err(format!("waiting for {program} failed: {err}")),
            }
        };
        let out = reader.join().unwrap_or_default();
        if !status.success() {
            return Err(format!("{program} exited with {status}"));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Decodes file bytes as UTF-8, recording an error fact when some bytes had to be replaced.
pub fn decode_text(facts: &mut Facts, collector: &str, path: &str, bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let offset = err.utf8_error().valid_up_to();
            add_error(
                facts,
                collector,
                Some(path),
                format!("invalid UTF-8 at byte {offset}; the invalid bytes were replaced"),
            );
            String::from_utf8_lossy(err.as_bytes()).into_owned()
        }
    }
}

/// Reads a regular file on the host of at most `max_bytes`.
pub fn read_regular(host: &Path, max_bytes: u64) -> Result<Vec<u8>, ReadError> {
    let meta = fs::metadata(host).map_err(io_error)?;
    if !meta.is_file() {
        return Err(ReadError::Failed(format!(
            "not a regular file ({})",
            describe_file_type(&meta.file_type())
        )));
    }
    let file = fs::File::open(host).map_err(io_error)?;
    let mut bytes = Vec::with_capacity(meta.len().min(max_bytes) as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ReadError::Failed(format!(
            "file is larger than the limit of {max_bytes} bytes, so it was not read"
        )));
    }
    Ok(bytes)
}

fn io_error(err: io::Error) -> ReadError {
    if err.kind() == io::ErrorKind::NotFound {
        ReadError::NotFound
    } else {
        ReadError::Failed(format!("read failed: {err}"))
    }
}

fn describe_file_type(file_type: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

fn components_reversed(path: &Path) -> Vec<OsString> {
    let mut parts: Vec<OsString> = path
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    parts.reverse();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(root: &Path) -> Context {
        Context::new(
            root.to_path_buf(),
            false,
            Duration::from_secs(5),
            Instant::now() + Duration::from_secs(5),
        )
    }

    #[test]
    fn resolve_keeps_absolute_links_inside_root() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::create_dir_all(root.join("run/real")).expect("mkdir");
        fs::write(root.join("run/real/file"), "inside").expect("write");
        std::os::unix::fs::symlink("/run/real/file", root.join("etc/link")).expect("symlink");

        let ctx = context(root);
        assert_eq!(ctx.resolve("/etc/link"), root.join("run/real/file"));
        assert_eq!(ctx.read("/etc/link", 100).ok(), Some(b"inside".to_vec()));
    }

    #[test]
    fn resolve_follows_relative_links_and_parent_dirs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::create_dir_all(root.join("run/x")).expect("mkdir");
        std::os::unix::fs::symlink("../run/x", root.join("etc/dir")).expect("symlink");
        assert_eq!(context(root).resolve("/etc/dir/y"), root.join("run/x/y"));
    }

    #[test]
    fn resolve_cannot_climb_above_root() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::os::unix::fs::symlink("../../../../etc/passwd", root.join("etc/up")).expect("symlink");
        assert_eq!(context(root).resolve("/etc/up"), root.join("etc/passwd"));
    }

    #[test]
    fn read_rejects_fifo_without_blocking() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("fifo");
        let status = Command::new("mkfifo").arg(&fifo).status();
        if !matches!(status, Ok(s) if s.success()) {
            println!("SKIPPED: mkfifo is not available");
            return;
        }
        let result = context(dir.path()).read("/fifo", 100);
        assert!(matches!(result, Err(ReadError::Failed(message)) if message.contains("FIFO")));
    }

    #[test]
    fn read_link_like_accepts_path_files_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        fs::write(root.join("a"), "/lib/systemd/system/ssh.service").expect("write");
        fs::write(root.join("b"), "[Unit]\nDescription=x\n").expect("write");
        let ctx = context(root);
        assert_eq!(
            ctx.read_link_like("/a").as_deref(),
            Some("/lib/systemd/system/ssh.service")
        );
        assert_eq!(ctx.read_link_like("/b"), None);
    }
}
