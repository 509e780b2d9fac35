//! The three-site topology of the fault tests: namespaces, addresses, enrollment, and
//! starting, killing and moving nodes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{Lab, ANTI_ENTROPY_INTERVAL_S, COLLECT_INTERVAL_S, NODE_PORT};
use crate::{binary, mini_root, test_dir, TestNode};

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
        // The joins run at once, because one took about 0.6 s of wall time but 0.01 s of CPU.
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

/// Sites of nodes joined by a router, each node in its own namespace, as the
/// [`netns`](super) module docs draw it.
pub struct Mesh {
    /// Nodes in site order: site 1's nodes, then site 2's, and so on.
    pub nodes: Vec<NetNode>,
    /// The namespaces; declared after `nodes` so the nodes stop before it is dropped.
    pub lab: Lab,
    /// Directory holding the nodes' data, roots and logs, and helper logs.
    pub dir: PathBuf,
    /// Namespace of the router.
    pub router: String,
    pub(super) sites: usize,
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
}

/// Returns the last octet of node `index`'s first address (node 1 is .11).
pub(super) fn host_number(index: usize) -> u8 {
    u8::try_from(10 + index).unwrap_or(u8::MAX)
}

pub(super) fn set_address(
    lab: &Lab,
    namespace: &str,
    address: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<()> {
    lab.ip(
        namespace,
        &["addr", "add", &format!("{address}/24"), "dev", "eth0"],
    )?;
    lab.ip(
        namespace,
        &["route", "add", "default", "via", &gateway.to_string()],
    )
}
