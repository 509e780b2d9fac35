//! Test hosts built from Linux network namespaces, for fault tests with real `fleetmesh`
//! processes.
//!
//! A [`Lab`] creates namespaces, veth pairs, bridges and nftables rules with iproute2 and
//! `nft`, and runs helper processes inside them. Dropping it kills those helpers and deletes
//! every namespace it created, also when the test panics. Namespace names start with
//! `fmt<pid>-<test>-`, so parallel test processes never share one, and a later lab deletes the
//! namespaces of a test process that died without cleaning up.
//!
//! [`Mesh`] builds the topology the fault tests share, with addresses only from 10.77.0.0/16,
//! which exists only inside these namespaces:
//!
//! ```text
//! node s1n1 (10.77.1.11) ─┐                      ┌─ node s2n1 (10.77.2.11)
//! node s1n2 (10.77.1.12) ─┼─ bridge ─ lan1 ┐     ├─ ...
//! node s1n3 (10.77.1.13) ─┘  (site1)  router ─ lan2 ─ bridge (site2)
//!                                          └ lan3 ─ bridge (site3) ─ ...
//! ```
//!
//! Each node namespace has one veth into its site's bridge and a default route through the
//! router, whose `lan<s>` interface is site s's WAN link. Nodes find the nodes of their own site
//! with mDNS, and reach other sites through `--peer` addresses: the QUIC and the TCP address of
//! node 1 (the hub) of every other site.
//!
//! Tests that use a lab run one at a time within a test process (a lab holds a global lock),
//! because each runs nine nodes on machines with few cores. Cargo runs test files one after
//! another, so keep each scenario in its own `tests/netns_*.rs` file.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, Context, Result};
use serde_json::Value;

mod checks;
mod faults;
mod mesh;

pub use checks::{Change, Ledger};
pub use faults::relay_counts;
pub use mesh::{enroll_nodes, node_multiaddrs, site_address, site_network, Mesh, NetNode};

/// Prefix of every namespace a lab creates.
pub const NAMESPACE_PREFIX: &str = "fmt";

/// Environment variable that turns a skipped network-namespace test into a failure, for CI
/// machines that are expected to run them.
pub const REQUIRE_ENV: &str = "FLEETMESH_REQUIRE_NETNS";

/// UDP (QUIC) and TCP port every node listens on; each namespace has its own ports.
pub const NODE_PORT: u16 = 7411;

/// Seconds between collections of every node in a mesh.
pub const COLLECT_INTERVAL_S: u32 = 1;

/// Seconds between anti-entropy rounds of every node in a mesh.
pub const ANTI_ENTROPY_INTERVAL_S: u32 = 2;

/// Query whose output must be the same on every node of a converged mesh.
pub const SNAPSHOT_SQL: &str = "SELECT n.hostname, n.site, p.name, p.arch, p.version \
     FROM packages p JOIN nodes n ON n.node_id = p.node_id \
     ORDER BY n.hostname, p.name, p.arch";

static SERIAL: Mutex<()> = Mutex::new(());

/// Namespaces, links and helper processes of one test, removed on drop.
pub struct Lab {
    tag: String,
    namespaces: Vec<String>,
    helpers: Vec<(String, Child)>,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// Creates a lab for the test `test`, or returns `None` after printing `SKIPPED: reason`
    /// when this machine cannot create network namespaces (or lacks `nft` and `needs_nft` is
    /// set). With `FLEETMESH_REQUIRE_NETNS=1` in the environment, that case is an error instead.
    pub fn create(test: &str, needs_nft: bool) -> Result<Option<Lab>> {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        remove_stale_namespaces();
        let mut lab = Lab {
            tag: format!("{NAMESPACE_PREFIX}{}-{test}", std::process::id()),
            namespaces: Vec::new(),
            helpers: Vec::new(),
            _serial: serial,
        };
        if let Some(reason) = lab.probe(needs_nft) {
            if std::env::var_os(REQUIRE_ENV).is_some_and(|value| value == "1") {
                bail!("{test} cannot run and {REQUIRE_ENV}=1 is set: {reason}");
            }
            // Written to the stderr handle, not with eprintln!, so cargo's output capture does
            // not hide it when the test is reported as passed.
            let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
            return Ok(None);
        }
        Ok(Some(lab))
    }

    /// Returns why this machine cannot run the lab, creating and deleting a probe namespace.
    fn probe(&mut self, needs_nft: bool) -> Option<String> {
        match Command::new("ip").arg("-V").output() {
            Ok(output) if output.status.success() => {}
            Ok(_) | Err(_) => {
                return Some("`ip` (iproute2) not found; install iproute2".to_string());
            }
        }
        let probe = match self.add_namespace("probe") {
            Ok(name) => name,
            Err(err) => {
                return Some(format!(
                    "cannot create a network namespace (root or CAP_SYS_ADMIN is needed): {err:#}"
                ));
            }
        };
        let result = if needs_nft {
            self.exec(&probe, "nft", &["list", "ruleset"])
                .err()
                .map(|err| format!("nft does not work in a namespace; install nftables: {err:#}"))
        } else {
            None
        };
        self.remove_namespace(&probe);
        result
    }

    /// Creates the namespace `<tag>-<role>` with its loopback up and returns its name.
    pub fn add_namespace(&mut self, role: &str) -> Result<String> {
        let name = format!("{}-{role}", self.tag);
        run("ip", &["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        self.ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn remove_namespace(&mut self, name: &str) {
        let _ = run("ip", &["netns", "del", name]);
        self.namespaces.retain(|known| known != name);
    }

    /// Runs `ip -n NAMESPACE ARGS...`.
    pub fn ip(&self, namespace: &str, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", namespace];
        full.extend_from_slice(args);
        run("ip", &full).map(drop)
    }

    /// Creates a veth pair with one end in each namespace, both ends up.
    pub fn add_veth(&self, (ns_a, if_a): (&str, &str), (ns_b, if_b): (&str, &str)) -> Result<()> {
        run(
            "ip",
            &[
                "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns",
                ns_b,
            ],
        )?;
        self.ip(ns_a, &["link", "set", if_a, "up"])?;
        self.ip(ns_b, &["link", "set", if_b, "up"])
    }

    /// Runs a program inside a namespace and returns its standard output.
    pub fn exec(&self, namespace: &str, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", namespace, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Loads an nftables ruleset (the text `nft -f` reads) into a namespace.
    pub fn nft(&self, namespace: &str, ruleset: &str) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", namespace, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft failed")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(ruleset.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "nft -f in {namespace} failed: {}\nruleset:\n{ruleset}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Returns the packets counted by the named nftables counter `counter` of table
    /// `inet TABLE` in a namespace.
    pub fn nft_counter_packets(&self, namespace: &str, table: &str, counter: &str) -> Result<u64> {
        let text = self.exec(
            namespace,
            "nft",
            &["-j", "list", "counter", "inet", table, counter],
        )?;
        let listing: Value = serde_json::from_str(&text)
            .with_context(|| format!("nft -j output is not JSON: {text}"))?;
        listing["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|item| item["counter"]["packets"].as_u64())
            .with_context(|| format!("nft lists no counter {counter} in table {table}: {text}"))
    }

    /// Starts a helper process inside a namespace, with its output in `log`. The lab kills it
    /// on drop.
    pub fn spawn(
        &mut self,
        namespace: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<()> {
        let log_file =
            fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", namespace])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {} in {namespace} failed", program.display()))?;
        self.helpers.push((program.display().to_string(), child));
        Ok(())
    }

    /// Fails if a helper process exited, naming it.
    pub fn check_helpers(&mut self) -> Result<()> {
        for (name, child) in &mut self.helpers {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("helper {name} exited with {status}");
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.helpers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in self.namespaces.drain(..).rev() {
            kill_namespace_processes(&name);
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// Runs a command and returns its standard output, or an error with its standard error.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} failed"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed with {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Kills the processes left in one of the lab's namespaces. Only processes that a lab started
/// live there.
fn kill_namespace_processes(namespace: &str) {
    let Ok(pids) = run("ip", &["netns", "pids", namespace]) else {
        return;
    };
    for pid in pids.split_whitespace() {
        if pid.parse::<u32>().is_err() {
            continue;
        }
        // The shell's built-in kill, because /bin/kill comes from procps, which minimal
        // images lack.
        let _ = run("sh", &["-c", &format!("kill -KILL {pid}")]);
    }
}

/// Deletes the namespaces of labs whose test process no longer runs, with what runs in them.
fn remove_stale_namespaces() {
    let Ok(listing) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in listing.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NAMESPACE_PREFIX) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_namespace_processes(name);
        let _ = run("ip", &["netns", "del", name]);
    }
}
