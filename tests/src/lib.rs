//! Harness for integration tests that run real `fleetmesh` processes on loopback.
//!
//! [`TestNode`] owns a data directory, a copy of a fixture root and a child process; dropping it
//! kills the process, so a failing test leaves nothing running. [`TestNode::start`] listens on
//! 127.0.0.1 with port 0 and mDNS off, so those tests send nothing beyond loopback. The
//! [`netns`] module runs nodes inside network namespaces that the test creates.

pub mod netns;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Returns the path of the `fleetmesh` binary, building it first if needed.
///
/// `cargo test` does not build the binaries of other packages, so the harness runs
/// `cargo build -p fleetmesh-cli` once per test process, in the profile the tests use.
pub fn binary() -> Result<PathBuf> {
    static BINARY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_binary().map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FLEETMESH_BIN") {
        return Ok(PathBuf::from(path));
    }
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable is not under target/<profile>/deps")?
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("debug")
        .to_string();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    // ring's build script reruns when CARGO_MANIFEST_DIR changes; the test process's value
    // would make this build and the test build invalidate each other on every run.
    command.env_remove("CARGO_MANIFEST_DIR");
    command.args([
        "build",
        "--quiet",
        "-p",
        "fleetmesh-cli",
        "--bin",
        "fleetmesh",
    ]);
    if profile == "release" {
        command.arg("--release");
    }
    let status = command
        .current_dir(workspace_root())
        .status()
        .context("running cargo build for the fleetmesh binary failed")?;
    if !status.success() {
        bail!("cargo build -p fleetmesh-cli failed with {status}");
    }
    let binary = profile_dir.join("fleetmesh");
    if !binary.exists() {
        bail!("built the CLI but {} does not exist", binary.display());
    }
    Ok(binary)
}

/// Returns the workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Returns `../shared/fixtures` beside the workspace, if it exists.
pub fn shared_fixtures() -> Option<PathBuf> {
    let path = workspace_root().join("../shared/fixtures");
    path.is_dir().then_some(path)
}

/// Returns the root to copy for test nodes: the shared Debian 12 container root when present,
/// else the project's own small root. The second value names the choice for test output.
pub fn fixture_root() -> (PathBuf, &'static str) {
    match shared_fixtures() {
        Some(shared) if shared.join("roots/debian12-container").is_dir() => (
            shared.join("roots/debian12-container"),
            "shared debian12-container root",
        ),
        _ => (
            mini_root(),
            "project mini root (../shared/fixtures not found)",
        ),
    }
}

/// Returns the project's own small root: a few files and eight dpkg packages.
pub fn mini_root() -> PathBuf {
    workspace_root().join("tests/fixtures/roots/mini")
}

/// Copies a directory tree (files and directories; symlinks are copied as links).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            let link = fs::read_link(entry.path())?;
            std::os::unix::fs::symlink(link, &target)?;
        } else {
            fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Creates a temporary directory for a test's nodes. With `FLEETMESH_KEEP_TEST_DIRS=1` it is
/// kept after the test, and its path is printed, so logs and stores can be inspected.
pub fn test_dir() -> Result<(Option<tempfile::TempDir>, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("fleetmesh-test-")
        .tempdir()?;
    if std::env::var_os("FLEETMESH_KEEP_TEST_DIRS").is_some() {
        let path = dir.keep();
        println!("keeping test directory {}", path.display());
        return Ok((None, path));
    }
    let path = dir.path().to_path_buf();
    Ok((Some(dir), path))
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if start.elapsed() > timeout {
            match last_error {
                Some(err) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {err:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One fleetmesh node under test: its directories and, while running, its process.
pub struct TestNode {
    /// Name used in messages and as host name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Root directory the collectors read.
    pub root: PathBuf,
    child: Option<Child>,
    log_path: PathBuf,
    namespace: Option<String>,
}

impl TestNode {
    /// Prepares a node in `base/name` with a copy of `root_source` whose host name is `name`.
    pub fn new(base: &Path, name: &str, root_source: &Path) -> Result<TestNode> {
        let dir = base.join(name);
        let root = dir.join("root");
        copy_tree(root_source, &root)?;
        fs::write(root.join("etc/hostname"), format!("{name}\n"))?;
        Ok(TestNode {
            name: name.to_string(),
            data_dir: dir.join("data"),
            root,
            child: None,
            log_path: dir.join("node.log"),
            namespace: None,
        })
    }

    /// Sets the network namespace that later starts run `fleetmesh up` in, through
    /// `ip netns exec`; `None` runs it in the test's own namespace.
    pub fn set_namespace(&mut self, namespace: Option<String>) {
        self.namespace = namespace;
    }

    /// Starts `fleetmesh up` on loopback with fast timers and the given extra arguments.
    pub fn start(&mut self, extra: &[String]) -> Result<()> {
        let mut args: Vec<String> = [
            "--no-mdns",
            "--interval",
            "1",
            "--anti-entropy-interval",
            "2",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        args.extend_from_slice(extra);
        self.start_up(&args)
    }

    /// Starts `fleetmesh up` with this node's data directory and root, and `args` as the only
    /// other options. Inside a namespace set by [`TestNode::set_namespace`], the process is
    /// `ip netns exec NAMESPACE fleetmesh ...`; `ip` replaces itself with `fleetmesh`, so the
    /// child's pid is the node's.
    pub fn start_up(&mut self, args: &[String]) -> Result<()> {
        if self.child.is_some() {
            bail!("node {} is already running", self.name);
        }
        // The status file of a previous run would name stale addresses.
        let _ = fs::remove_file(self.data_dir.join("status.json"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut command = match &self.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(binary()?);
                command
            }
            None => Command::new(binary()?),
        };
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("up")
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env("FLEETMESH_LOG", "info,fleetmesh_node=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(command.spawn().context("starting fleetmesh up failed")?);
        Ok(())
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Reports whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Reads the daemon's status file once it lists listen addresses.
    pub fn wait_status(&mut self) -> Result<Value> {
        let path = self.data_dir.join("status.json");
        let name = self.name.clone();
        let log_path = self.log_path.clone();
        let mut exited = None;
        let result = wait_for(
            &format!("{name} to listen"),
            Duration::from_secs(30),
            || {
                if let Some(status) = self.exit_status() {
                    exited = Some(status);
                    return Ok(Some(Value::Null));
                }
                let Ok(text) = fs::read_to_string(&path) else {
                    return Ok(None);
                };
                let status: Value = serde_json::from_str(&text)?;
                let listening = status["listen"].as_array().is_some_and(|a| a.len() >= 2);
                Ok(listening.then_some(status))
            },
        );
        if let Some(status) = exited {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            bail!("node {name} exited during start with {status}; log:\n{log}");
        }
        result
    }

    /// Returns the exit status once a started process has exited.
    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Returns the node's QUIC listen address with its `/p2p/` suffix.
    pub fn quic_address(&mut self) -> Result<String> {
        let status = self.wait_status()?;
        status["listen"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|address| address.contains("/quic-v1"))
            .map(str::to_string)
            .context("status lists no QUIC address")
    }

    /// Runs a read command against this node's data directory.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Command::new(binary()?)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .context("running fleetmesh failed")
    }

    /// Runs a command and returns its standard output, failing with its standard error.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.cli(args)?;
        if !output.status.success() {
            bail!(
                "fleetmesh {} on {} failed: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Creates a join token with this node's local fleet root key (the node must have run `up`
    /// once without being enrolled). `extra` adds options such as `--valid-for`.
    pub fn token(&self, tenant: &str, site: &str, role: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec![
            "fleet", "token", "--local", "--tenant", tenant, "--site", site, "--role", role,
        ];
        if !extra.contains(&"--expires") {
            args.extend(["--expires", "1h"]);
        }
        args.extend_from_slice(extra);
        Ok(self.cli_ok(&args)?.trim().to_string())
    }

    /// Enrolls this node with `token` and keeps `peer` as the address `up` dials.
    pub fn join(&self, token: &str, peer: Option<&str>) -> Result<()> {
        let mut args = vec!["join", token];
        if let Some(peer) = peer {
            args.extend(["--peer", peer]);
        }
        self.cli_ok(&args)?;
        Ok(())
    }

    /// Enrolls this node as a plain node of `operator`'s local fleet, tenant and site
    /// "default", dialing `operator` at `peer`. This is the one place tests set up a fleet.
    pub fn join_fleet_of(&self, operator: &TestNode, peer: &str) -> Result<()> {
        let token = operator.token("default", "default", "node", &[])?;
        self.join(&token, Some(peer))
    }

    /// Runs `fleetmesh query --format json SQL` and returns the rows.
    pub fn query(&self, sql: &str) -> Result<Vec<Value>> {
        let output = self.cli(&["query", "--format", "json", sql])?;
        if !output.status.success() {
            bail!(
                "query on {} failed: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let rows: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("query output of {} is not JSON", self.name))?;
        Ok(rows.as_array().cloned().unwrap_or_default())
    }

    /// Returns the host names listed by `fleetmesh nodes --json`, sorted.
    pub fn listed_hostnames(&self) -> Result<Vec<String>> {
        let output = self.cli(&["nodes", "--json"])?;
        if !output.status.success() {
            bail!(
                "nodes on {} failed: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let nodes: Value = serde_json::from_slice(&output.stdout)?;
        let mut names: Vec<String> = nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|node| node["hostname"].as_str().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Returns the node id from the status file (the node must have started once).
    pub fn node_id(&mut self) -> Result<String> {
        let status = self.wait_status()?;
        status["node_id"]
            .as_str()
            .map(str::to_string)
            .context("status has no node_id")
    }

    /// Returns the whole log of the node.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Counts the signed changes in this node's store written by `author` (a node id).
    pub fn stored_changes_by(&self, author: &str) -> Result<u64> {
        let author: fleetmesh_model::NodeId = author
            .parse()
            .with_context(|| format!("{author} is not a node id"))?;
        self.count_signed_changes("WHERE author = ?1", [author.0.to_vec()])
    }

    /// Counts every signed change in this node's store.
    pub fn stored_changes(&self) -> Result<u64> {
        self.count_signed_changes("", [])
    }

    /// Counts the signed changes in this node's store whose bytes were compacted away.
    pub fn compacted_changes(&self) -> Result<u64> {
        self.count_signed_changes("WHERE length(bytes) = 0", [])
    }

    /// Counts the rows of `signed_changes` that `filter` (an SQL `WHERE` clause or nothing)
    /// selects, on a read-only connection to the node's store.
    fn count_signed_changes<P: rusqlite::Params>(&self, filter: &str, params: P) -> Result<u64> {
        let conn = rusqlite::Connection::open_with_flags(
            self.data_dir.join("fleetmesh.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let count: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM signed_changes {filter}"),
            params,
            |row| row.get(0),
        )?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Returns the tail of the node's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let bytes = match fs::read(&self.log_path) {
            Ok(bytes) => bytes,
            Err(err) => return format!("(cannot read {}: {err})", self.log_path.display()),
        };
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Sets one package's version in a dpkg status file, returning the old version.
pub fn set_dpkg_version(root: &Path, package: &str, version: &str) -> Result<String> {
    let path = root.join("var/lib/dpkg/status");
    let text = fs::read_to_string(&path)?;
    let mut out = String::with_capacity(text.len());
    let mut in_package = false;
    let mut old = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("Package: ") {
            in_package = name.trim() == package;
        }
        if in_package && line.starts_with("Version: ") && old.is_none() {
            old = Some(line["Version: ".len()..].to_string());
            out.push_str(&format!("Version: {version}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    let old = old.with_context(|| format!("package {package} not found in {}", path.display()))?;
    replace_file(&path, &out)?;
    Ok(old)
}

/// Adds an installed package to a dpkg status file, as `apt install` would. Tests use a new
/// package per change, so every change stays visible in the final `packages` table.
pub fn add_dpkg_package(root: &Path, package: &str, version: &str) -> Result<()> {
    let path = root.join("var/lib/dpkg/status");
    let mut text =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if !text.is_empty() && !text.ends_with("\n\n") {
        text.push_str(if text.ends_with('\n') { "\n" } else { "\n\n" });
    }
    text.push_str(&format!(
        "Package: {package}\nStatus: install ok installed\nPriority: optional\n\
         Architecture: amd64\nVersion: {version}\nDescription: package added by a test\n"
    ));
    replace_file(&path, &text)
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`, so a collector
/// reading at the same moment sees the old or the new file, never a partial one.
fn replace_file(path: &Path, text: &str) -> Result<()> {
    let temp = path.with_extension("fleetmesh-test-tmp");
    fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
    fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))
}
