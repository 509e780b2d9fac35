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

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{add_dpkg_package, binary, mini_root, test_dir, wait_for, TestNode};

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

/// One node of a [`Mesh`]: a [`TestNode`] in its own namespace.
pub struct NetNode {
    /// The node's directories and process.
    pub node: TestNode,
    /// Site number, from 1.
    pub site: usize,
    /// Namespace the node runs in.
    pub namespace: String,
    /// Address of the node's `eth0`.
    pub address: Ipv4Addr,
    /// `--peer` addresses passed on the next start.
    pub peers: Vec<String>,
}

impl NetNode {
    /// Host name, also the node's name in messages.
    pub fn name(&self) -> &str {
        &self.node.name
    }
}

/// Returns the address of host `host` on site `site`'s LAN.
pub fn site_address(site: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, u8::try_from(site).unwrap_or(u8::MAX), host)
}

/// Returns the `/24` network of site `site`, in nftables syntax.
pub fn site_network(site: usize) -> String {
    format!("{}/24", site_address(site, 0))
}

/// Returns the QUIC and the TCP multiaddr of a node address.
pub fn node_multiaddrs(address: Ipv4Addr, port: u16) -> [String; 2] {
    [
        format!("/ip4/{address}/udp/{port}/quic-v1"),
        format!("/ip4/{address}/tcp/{port}"),
    ]
}

/// Makes every node a member of one new test fleet, as an MSP would: `fleet init` creates a
/// root key in `dir`, `fleet token` creates one node token per site, and each node runs
/// `fleetmesh join` with its site's token. This is the only code that sets up membership.
pub fn enroll_nodes(nodes: &[NetNode], dir: &Path) -> Result<()> {
    let key_file = dir.join("fleet.key");
    let key_file = key_file.to_string_lossy();
    // The key file is a test fixture that lives as long as the test directory.
    let passphrase = format!("netns test fleet {}", std::process::id());
    let fleet = |args: &[&str]| -> Result<String> {
        let output = Command::new(binary()?)
            .arg("fleet")
            .args(args)
            .args(["--key-file", &key_file])
            .env("FLEETMESH_FLEET_PASSPHRASE", &passphrase)
            .stdin(Stdio::null())
            .output()
            .context("running fleetmesh fleet failed")?;
        if !output.status.success() {
            bail!(
                "fleetmesh fleet {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };

    fleet(&["init"])?;
    let sites: BTreeSet<usize> = nodes.iter().map(|net| net.site).collect();
    let mut joins = Vec::new();
    for site in sites {
        let site_name = format!("site{site}");
        let token = fleet(&[
            "token",
            "--tenant",
            "default",
            "--site",
            &site_name,
            "--role",
            "node",
            "--expires",
            "1h",
        ])?;
        // The joins run at once; each spends most of its time waiting for disk writes.
        for net in nodes.iter().filter(|net| net.site == site) {
            let child = Command::new(binary()?)
                .arg("--data-dir")
                .arg(&net.node.data_dir)
                .args(["join", &token])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("running fleetmesh join failed")?;
            joins.push((net.name(), child));
        }
    }
    for (name, child) in joins {
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "fleetmesh join on {name} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Sites of nodes joined by a router, each node in its own namespace. See the module docs.
pub struct Mesh {
    /// Nodes in site order: site 1's nodes, then site 2's, and so on.
    pub nodes: Vec<NetNode>,
    /// The namespaces; declared after `nodes` so the nodes stop before it is dropped.
    pub lab: Lab,
    /// Directory holding the nodes' data, roots and logs, and helper logs.
    pub dir: PathBuf,
    /// Namespace of the router.
    pub router: String,
    sites: usize,
    _dir_guard: Option<tempfile::TempDir>,
}

impl Mesh {
    /// Builds `sites` sites of `nodes_per_site` nodes each, and enrolls the nodes in one fleet
    /// with [`enroll_nodes`].
    /// Nodes get a copy of [`mini_root`] and do not start yet.
    pub fn build(mut lab: Lab, sites: usize, nodes_per_site: usize) -> Result<Mesh> {
        // The faults under test are in the network. With the 700-package Debian root, the first
        // collection of nine debug-build nodes at once took about 10 s in one run on a loaded
        // 2-core machine.
        let root_source = mini_root();
        let (dir_guard, dir) = test_dir()?;

        // The router: one interface on every site's LAN, forwarding between them.
        let router = lab.add_namespace("router")?;
        lab.exec(
            &router,
            "sh",
            &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        )?;

        let mut nodes = Vec::new();
        for site in 1..=sites {
            // A namespace per site contains its bridge, so the site's nodes share one LAN.
            let bridge = lab.add_namespace(&format!("s{site}"))?;
            lab.ip(
                &bridge,
                &[
                    "link",
                    "add",
                    "br0",
                    "type",
                    "bridge",
                    "mcast_snooping",
                    "0",
                ],
            )?;
            lab.ip(&bridge, &["link", "set", "br0", "up"])?;
            let lan = format!("lan{site}");
            lab.add_veth((&router, &lan), (&bridge, "wan"))?;
            lab.ip(&bridge, &["link", "set", "wan", "master", "br0"])?;
            let gateway = site_address(site, 1);
            lab.ip(
                &router,
                &["addr", "add", &format!("{gateway}/24"), "dev", &lan],
            )?;

            for index in 1..=nodes_per_site {
                let name = format!("s{site}n{index}");
                let namespace = lab.add_namespace(&name)?;
                let port = format!("n{index}");
                lab.add_veth((&namespace, "eth0"), (&bridge, &port))?;
                lab.ip(&bridge, &["link", "set", &port, "master", "br0"])?;
                let address = site_address(site, host_number(index));
                set_address(&lab, &namespace, address, gateway)?;

                let mut node = TestNode::new(&dir, &name, &root_source)?;
                node.set_namespace(Some(namespace.clone()));
                nodes.push(NetNode {
                    node,
                    site,
                    namespace,
                    address,
                    peers: Vec::new(),
                });
            }
        }

        let mut mesh = Mesh {
            nodes,
            lab,
            dir,
            router,
            sites,
            _dir_guard: dir_guard,
        };
        for index in 0..mesh.nodes.len() {
            let site = mesh.nodes[index].site;
            mesh.nodes[index].peers = mesh.hub_peers(site);
        }
        let enroll_started = Instant::now();
        enroll_nodes(&mesh.nodes, &mesh.dir)?;
        println!(
            "enrolled {} nodes in {:?}",
            mesh.nodes.len(),
            enroll_started.elapsed()
        );
        Ok(mesh)
    }

    /// Returns the `--peer` addresses of the hubs of every site but `site`, QUIC and TCP.
    pub fn hub_peers(&self, site: usize) -> Vec<String> {
        (1..=self.sites)
            .filter(|other| *other != site)
            .flat_map(|other| node_multiaddrs(site_address(other, host_number(1)), NODE_PORT))
            .collect()
    }

    /// Returns the index in [`Mesh::nodes`] of node `index` (from 1) of site `site`.
    pub fn index_of(&self, site: usize, index: usize) -> Result<usize> {
        let position = self
            .nodes
            .iter()
            .position(|node| node.name() == format!("s{site}n{index}"));
        position.with_context(|| format!("the mesh has no node s{site}n{index}"))
    }

    /// Returns the indexes of the nodes of `site`.
    pub fn site_nodes(&self, site: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|index| self.nodes[*index].site == site)
            .collect()
    }

    /// Returns the indexes of every node.
    pub fn all_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// Starts node `index` with its address, site and peers, and waits until it listens.
    pub fn start(&mut self, index: usize) -> Result<()> {
        self.spawn(index)?;
        self.nodes[index].node.wait_status().map(drop)
    }

    /// Starts every node, then waits until each listens.
    pub fn start_all(&mut self) -> Result<()> {
        for index in 0..self.nodes.len() {
            self.spawn(index)?;
        }
        for net in &mut self.nodes {
            net.node.wait_status()?;
        }
        Ok(())
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let net = &mut self.nodes[index];
        let mut args: Vec<String> = Vec::new();
        for listen in node_multiaddrs(net.address, NODE_PORT) {
            args.push("--listen".to_string());
            args.push(listen);
        }
        args.extend([
            "--site".to_string(),
            format!("site{}", net.site),
            "--interval".to_string(),
            COLLECT_INTERVAL_S.to_string(),
            "--anti-entropy-interval".to_string(),
            ANTI_ENTROPY_INTERVAL_S.to_string(),
        ]);
        for peer in &net.peers {
            args.push("--peer".to_string());
            args.push(peer.clone());
        }
        net.node.start_up(&args)
    }

    /// Kills node `index` with SIGKILL.
    pub fn kill(&mut self, index: usize) -> Result<()> {
        self.nodes[index].node.kill()
    }

    /// Gives the stopped node `index` the new address `host` on its site's LAN; the next
    /// [`Mesh::start`] listens there.
    pub fn move_node(&mut self, index: usize, host: u8) -> Result<()> {
        let net = &self.nodes[index];
        if host == net.address.octets()[3] {
            bail!("{} already has address {}", net.name(), net.address);
        }
        let address = site_address(net.site, host);
        self.lab
            .ip(&net.namespace, &["addr", "flush", "dev", "eth0"])?;
        set_address(
            &self.lab,
            &net.namespace,
            address,
            site_address(net.site, 1),
        )?;
        self.nodes[index].address = address;
        Ok(())
    }

    /// Takes site `site`'s WAN link down, in the router.
    pub fn wan_down(&self, site: usize) -> Result<()> {
        self.lab.ip(
            &self.router,
            &["link", "set", &format!("lan{site}"), "down"],
        )
    }

    /// Brings site `site`'s WAN link back up.
    pub fn wan_up(&self, site: usize) -> Result<()> {
        self.lab
            .ip(&self.router, &["link", "set", &format!("lan{site}"), "up"])
    }

    /// Sends all traffic between site `site` and the other sites through a relay in the router
    /// that delays each UDP datagram and TCP chunk for `delay` in each direction, and returns the
    /// relay's log file. Call it before the nodes start: it points their cross-site `--peer`
    /// addresses at the relay, and the router stops forwarding to and from the site directly.
    pub fn delay_wan(
        &mut self,
        site: usize,
        delay: Duration,
        relay_program: &Path,
    ) -> Result<PathBuf> {
        let mut mappings = Vec::new();
        let hub = host_number(1);
        // Nodes of `site` reach the hub of site t at the router's LAN address, port 74t1.
        let mut outbound_peers = Vec::new();
        for other in (1..=self.sites).filter(|other| *other != site) {
            let port = 7401 + 10 * u16::try_from(other).unwrap_or(0);
            let listen = format!("{}:{port}", site_address(site, 1));
            let target = format!("{}:{NODE_PORT}", site_address(other, hub));
            mappings.push(("--udp", format!("{listen}={target}")));
            mappings.push(("--tcp", format!("{listen}={target}")));
            outbound_peers.extend(node_multiaddrs(site_address(site, 1), port));
        }
        // Nodes of the other sites reach the hub of `site` at the router's address in their LAN.
        for other in (1..=self.sites).filter(|other| *other != site) {
            let listen = format!("{}:{NODE_PORT}", site_address(other, 1));
            let target = format!("{}:{NODE_PORT}", site_address(site, hub));
            mappings.push(("--udp", format!("{listen}={target}")));
            mappings.push(("--tcp", format!("{listen}={target}")));
        }
        for index in 0..self.nodes.len() {
            let node_site = self.nodes[index].site;
            self.nodes[index].peers = if node_site == site {
                outbound_peers.clone()
            } else {
                (1..=self.sites)
                    .filter(|other| *other != node_site)
                    .flat_map(|other| {
                        let address = if other == site {
                            site_address(node_site, 1)
                        } else {
                            site_address(other, hub)
                        };
                        node_multiaddrs(address, NODE_PORT)
                    })
                    .collect()
            };
        }

        self.lab.nft(
            &self.router,
            &format!(
                "table inet fleetmesh_relay_only {{
                     chain forward {{
                         type filter hook forward priority 0; policy accept;
                         iifname \"lan{site}\" drop
                         oifname \"lan{site}\" drop
                     }}
                 }}\n"
            ),
        )?;
        let mut args = vec!["--delay-ms".to_string(), delay.as_millis().to_string()];
        for (flag, mapping) in mappings {
            args.push(flag.to_string());
            args.push(mapping);
        }
        let log = self.dir.join("delay-relay.log");
        self.lab
            .spawn(&self.router.clone(), relay_program, &args, &log)?;
        wait_for("the relay to listen", Duration::from_secs(10), || {
            self.lab.check_helpers()?;
            Ok(fs::read_to_string(&log)?.contains("relaying").then_some(()))
        })?;
        Ok(log)
    }

    /// Drops `percent` of the packets in each direction on site `site`'s WAN link, at random,
    /// with nftables in the router. The counters `loss_in` and `loss_out` of table
    /// `inet fleetmesh_wan_loss` count the drops.
    pub fn lose_on_wan(&self, site: usize, percent: u32) -> Result<()> {
        self.lab.nft(
            &self.router,
            &format!(
                "table inet fleetmesh_wan_loss {{
                     counter loss_in {{}}
                     counter loss_out {{}}
                     chain prerouting {{
                         type filter hook prerouting priority -150; policy accept;
                         iifname \"lan{site}\" numgen random mod 100 < {percent} counter name \"loss_in\" drop
                     }}
                     chain postrouting {{
                         type filter hook postrouting priority 150; policy accept;
                         oifname \"lan{site}\" numgen random mod 100 < {percent} counter name \"loss_out\" drop
                     }}
                 }}\n"
            ),
        )
    }

    /// Drops every UDP packet that the router would forward between sites `a` and `b`. The
    /// counter `dropped` of table `inet fleetmesh_udp_block` counts them.
    pub fn block_udp(&self, a: usize, b: usize) -> Result<()> {
        let (net_a, net_b) = (site_network(a), site_network(b));
        self.lab.nft(
            &self.router,
            &format!(
                "table inet fleetmesh_udp_block {{
                     counter dropped {{}}
                     chain forward {{
                         type filter hook forward priority 0; policy accept;
                         ip saddr {net_a} ip daddr {net_b} meta l4proto udp counter name \"dropped\" drop
                         ip saddr {net_b} ip daddr {net_a} meta l4proto udp counter name \"dropped\" drop
                     }}
                 }}\n"
            ),
        )
    }

    /// Runs [`SNAPSHOT_SQL`] on node `index`.
    pub fn snapshot(&self, index: usize) -> Result<Vec<Value>> {
        self.nodes[index].node.query(SNAPSHOT_SQL)
    }

    /// Returns the host names in node `index`'s replica that have packages, sorted.
    pub fn hostnames_seen(&self, index: usize) -> Result<BTreeSet<String>> {
        let rows = self.nodes[index].node.query(
            "SELECT DISTINCT n.hostname FROM nodes n JOIN packages p ON p.node_id = n.node_id",
        )?;
        Ok(rows
            .iter()
            .filter_map(|row| row["hostname"].as_str().map(str::to_string))
            .collect())
    }

    /// Returns the host names that node `index` lists as connected now, from `nodes --json`.
    pub fn connected_hostnames(&self, index: usize) -> Result<BTreeSet<String>> {
        Ok(self
            .node_summaries(index)?
            .iter()
            .filter(|node| node["connected"].as_bool() == Some(true))
            .filter_map(|node| node["hostname"].as_str().map(str::to_string))
            .collect())
    }

    /// Returns the output of `fleetmesh nodes --json` on node `index`.
    pub fn node_summaries(&self, index: usize) -> Result<Vec<Value>> {
        let net = &self.nodes[index];
        let output = net.node.cli(&["nodes", "--json"])?;
        if !output.status.success() {
            bail!(
                "nodes on {} failed: {}",
                net.name(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let nodes: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("nodes output of {} is not JSON", net.name()))?;
        Ok(nodes.as_array().cloned().unwrap_or_default())
    }

    /// Installs a new package on node `index` and records it as a change in `ledger`.
    pub fn install(&self, index: usize, ledger: &mut Ledger) -> Result<Change> {
        let author = self.nodes[index].name().to_string();
        let number = ledger.changes.len();
        let change = Change {
            package: format!("fmtest-{author}-{number}"),
            version: format!("1.0-{number}"),
            author,
        };
        add_dpkg_package(
            &self.nodes[index].node.root,
            &change.package,
            &change.version,
        )?;
        ledger.changes.push(change.clone());
        Ok(change)
    }

    /// Returns the changes of `ledger` that the packages on node `index` show.
    pub fn changes_seen(&self, index: usize, ledger: &Ledger) -> Result<BTreeSet<Change>> {
        let rows = self.nodes[index].node.query(
            "SELECT n.hostname, p.name, p.version FROM packages p \
             JOIN nodes n ON n.node_id = p.node_id WHERE p.name LIKE 'fmtest-%'",
        )?;
        let seen: BTreeSet<Change> = rows
            .iter()
            .filter_map(|row| {
                Some(Change {
                    author: row["hostname"].as_str()?.to_string(),
                    package: row["name"].as_str()?.to_string(),
                    version: row["version"].as_str()?.to_string(),
                })
            })
            .collect();
        Ok(ledger
            .changes
            .iter()
            .filter(|change| seen.contains(change))
            .cloned()
            .collect())
    }

    /// Counts, over the nodes `indexes`, the changes of `ledger` that a node does not show.
    pub fn count_lost(&self, indexes: &[usize], ledger: &Ledger) -> Result<usize> {
        let mut lost = 0;
        for &index in indexes {
            lost += ledger.changes.len() - self.changes_seen(index, ledger)?.len();
        }
        Ok(lost)
    }

    /// Waits until the nodes `indexes` all return the same [`SNAPSHOT_SQL`] output, which lists
    /// every node of the mesh and every change of `ledger`. Returns the time it took.
    pub fn wait_converged(
        &self,
        indexes: &[usize],
        ledger: &Ledger,
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        let everyone: BTreeSet<String> = self.nodes.iter().map(|n| n.name().to_string()).collect();
        let waited = wait_for("the nodes to converge", timeout, || {
            let Some((&first, rest)) = indexes.split_first() else {
                return Ok(Some(()));
            };
            if self.hostnames_seen(first)? != everyone
                || self.changes_seen(first, ledger)?.len() != ledger.changes.len()
            {
                return Ok(None);
            }
            let reference = self.snapshot(first)?;
            for &index in rest {
                if self.snapshot(index)? != reference {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        });
        if let Err(err) = waited {
            return Err(err.context(self.describe_state(indexes, ledger)));
        }
        Ok(started.elapsed())
    }

    /// Waits until every node of `indexes` shows every change of `changes`. Returns the time
    /// it took.
    pub fn wait_shown(
        &self,
        indexes: &[usize],
        changes: &[Change],
        ledger: &Ledger,
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        let description = format!("{} changes to reach {} nodes", changes.len(), indexes.len());
        let waited = wait_for(&description, timeout, || {
            for &index in indexes {
                let seen = self.changes_seen(index, ledger)?;
                if !changes.iter().all(|change| seen.contains(change)) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        });
        if let Err(err) = waited {
            return Err(err.context(self.describe_state(indexes, ledger)));
        }
        Ok(started.elapsed())
    }

    /// Fails if a node of `indexes` shows one of `changes`, naming the node and the change.
    pub fn ensure_not_shown(
        &self,
        indexes: &[usize],
        changes: &[Change],
        ledger: &Ledger,
    ) -> Result<()> {
        for &index in indexes {
            let seen = self.changes_seen(index, ledger)?;
            if let Some(change) = changes.iter().find(|change| seen.contains(change)) {
                bail!(
                    "{} shows {} of {}, which it cannot reach",
                    self.nodes[index].name(),
                    change.package,
                    change.author
                );
            }
        }
        Ok(())
    }

    /// Describes what each node's replica shows and the tail of its log, for failure messages.
    pub fn describe_state(&self, indexes: &[usize], ledger: &Ledger) -> String {
        let mut text = String::new();
        for &index in indexes {
            let net = &self.nodes[index];
            let hosts = self
                .hostnames_seen(index)
                .map(|h| h.into_iter().collect::<Vec<_>>().join(" "));
            let seen = self.changes_seen(index, ledger).map(|seen| seen.len());
            text.push_str(&format!(
                "\n== {} ({}): hosts with packages: {hosts:?}; changes shown: {seen:?} of {}\n{}\n",
                net.name(),
                net.address,
                ledger.changes.len(),
                net.node.log_tail(15)
            ));
        }
        text
    }
}

/// Returns the last octet of node `index`'s first address (node 1 is .11).
fn host_number(index: usize) -> u8 {
    u8::try_from(10 + index).unwrap_or(u8::MAX)
}

fn set_address(lab: &Lab, namespace: &str, address: Ipv4Addr, gateway: Ipv4Addr) -> Result<()> {
    lab.ip(
        namespace,
        &["addr", "add", &format!("{address}/24"), "dev", "eth0"],
    )?;
    lab.ip(
        namespace,
        &["route", "add", "default", "via", &gateway.to_string()],
    )
}

/// One package installed by a test: a change its author must record and every node must show.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// Host name of the node whose root changed.
    pub author: String,
    /// Package name, unique in the test.
    pub package: String,
    /// Package version.
    pub version: String,
}

/// The changes a test made, in order.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every change, oldest first.
    pub changes: Vec<Change>,
}

/// Returns the last counters a delay relay printed to its log: UDP datagrams and TCP bytes
/// forwarded.
pub fn relay_counts(log: &Path) -> Result<(u64, u64)> {
    let text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let Some(line) = text
        .lines()
        .rev()
        .find(|line| line.starts_with("forwarded "))
    else {
        return Ok((0, 0));
    };
    let field = |name: &str| -> Result<u64> {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name))
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("relay log line {line:?} has no {name}"))
    };
    Ok((field("udp_datagrams=")?, field("tcp_bytes=")?))
}
