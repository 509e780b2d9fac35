//! Faults a test injects into a [`Mesh`]: a WAN link down, random loss, delay through a
//! relay, and blocked UDP.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::mesh::{host_number, node_multiaddrs, site_address, site_network, Mesh};
use super::NODE_PORT;
use crate::wait_for;

impl Mesh {
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
