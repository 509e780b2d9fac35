//! Network interfaces and addresses, routes, resolver settings and listening sockets.
//!
//! Everything is read from files:
//! - interfaces from `/sys/class/net`, or only their names from `/proc/net/dev`;
//! - IPv4 addresses from the `LOCAL` entries of `/proc/net/fib_trie`, matched to the connected
//!   routes in `/proc/net/route` for the interface and prefix length;
//! - IPv6 addresses from `/proc/net/if_inet6`;
//! - routes from `/proc/net/route` and `/proc/net/ipv6_route`;
//! - sockets from `/proc/net/{tcp,udp}{,6}`.
//!
//! On a live system `ip -j addr` is used when `fib_trie` is missing, and socket owners are
//! found by matching socket inodes with the `/proc/<pid>/fd` links.
//!
//! Left out because they change on their own: `veth*` interfaces (created per container),
//! temporary IPv6 privacy addresses, and local, multicast and cached IPv6 routes.

pub mod procnet;

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::time::Duration;

use fleetmesh_model::facts::{Address, Dns, Interface, ListeningSocket, Route};
use fleetmesh_model::Facts;

use super::context::Context;
use crate::collect::add_error;
use procnet::{Ipv4Route, SocketEntry};

const NAME: &str = "network";

/// Kernel state of a listening TCP socket.
const TCP_LISTEN: u8 = 0x0a;
/// Kernel state of an unconnected UDP socket, which `ss -l` lists as listening.
const UDP_UNCONNECTED: u8 = 0x07;

/// How long `ip -j addr` may take.
const IP_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Collects interfaces, routes, DNS and listening sockets.
pub fn collect(ctx: &Context, facts: &mut Facts) {
    let native_order = ctx.live();

    let ipv4_routes = match ctx.read_text(facts, NAME, "/proc/net/route") {
        Some(text) => {
            procnet::parse_route(&text, native_order).into_value(facts, NAME, "/proc/net/route")
        }
        None => Vec::new(),
    };

    let mut interfaces = read_interfaces(ctx, facts);
    add_ipv4_addresses(ctx, facts, &ipv4_routes, &mut interfaces);
    add_ipv6_addresses(ctx, facts, &mut interfaces);
    interfaces.retain(|name, _| !name.starts_with("veth"));
    facts.interfaces = interfaces;

    facts.routes = read_routes(ctx, facts, &ipv4_routes);
    facts.dns = read_dns(ctx, facts);
    facts.listening = read_listening(ctx, facts, native_order);
}

fn read_interfaces(ctx: &Context, facts: &mut Facts) -> BTreeMap<String, Interface> {
    let mut interfaces = BTreeMap::new();
    let names = ctx.list_dir(facts, NAME, "/sys/class/net");
    for name in &names {
        let base = format!("/sys/class/net/{name}");
        if !ctx.resolve(&base).is_dir() {
            continue;
        }
        let mac = ctx
            .read_attribute(&format!("{base}/address"))
            .map(|mac| mac.to_lowercase())
            .filter(|mac| mac.chars().any(|c| c != '0' && c != ':'));
        let interface = Interface {
            mac,
            mtu: ctx
                .read_attribute(&format!("{base}/mtu"))
                .and_then(|mtu| mtu.parse().ok()),
            state: ctx.read_attribute(&format!("{base}/operstate")),
            addresses: BTreeMap::new(),
        };
        interfaces.insert(name.clone(), interface);
    }
    if !interfaces.is_empty() {
        return interfaces;
    }

    // Without sysfs (a captured tree), the names in /proc/net/dev still list the interfaces.
    if let Some(text) = ctx.read_text(facts, NAME, "/proc/net/dev") {
        for name in parse_net_dev_names(&text) {
            interfaces.insert(name, Interface::default());
        }
    }
    interfaces
}

/// Returns the interface names listed in `/proc/net/dev`.
pub fn parse_net_dev_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let (name, _) = line.split_once(':')?;
            let name = name.trim();
            let valid = !name.is_empty() && !name.contains(['|', ' ']);
            valid.then(|| name.to_string())
        })
        .collect()
}

fn add_ipv4_addresses(
    ctx: &Context,
    facts: &mut Facts,
    routes: &[Ipv4Route],
    interfaces: &mut BTreeMap<String, Interface>,
) {
    if let Some(text) = ctx.read_text(facts, NAME, "/proc/net/fib_trie") {
        for address in procnet::parse_fib_trie_local(&text) {
            // NOTE: an address without a connected route (a /32 without a subnet route) has
            // no interface in these files and is left out.
            let Some((interface, prefix_len)) = interface_of_ipv4(address, routes) else {
                continue;
            };
            let entry = interfaces.entry(interface).or_default();
            insert_address(
                entry,
                "inet",
                address.to_string(),
                prefix_len,
                ipv4_scope(address),
            );
        }
        return;
    }
    if ctx.live() {
        match ctx.run_command("ip", &["-j", "-4", "addr", "show"], IP_COMMAND_TIMEOUT) {
            Ok(output) => add_ip_json_addresses(facts, &output, interfaces),
            Err(message) => add_error(facts, NAME, None, message),
        }
    }
}

/// Finds the interface and prefix length of a local IPv4 address: loopback addresses belong to
/// `lo`, others to the most specific connected route that contains them.
fn interface_of_ipv4(address: Ipv4Addr, routes: &[Ipv4Route]) -> Option<(String, u8)> {
    if address.is_loopback() {
        return Some(("lo".to_string(), 8));
    }
    routes
        .iter()
        .filter(|route| !route.has_gateway() && procnet::is_recorded_ipv4_route(route))
        .filter(|route| u32::from(address) & u32::from(route.mask) == u32::from(route.destination))
        .filter(|route| !route.mask.is_unspecified())
        .max_by_key(|route| route.prefix_len())
        .map(|route| (route.interface.clone(), route.prefix_len()))
}

fn ipv4_scope(address: Ipv4Addr) -> &'static str {
    if address.is_loopback() {
        "host"
    } else if address.is_link_local() {
        "link"
    } else {
        "global"
    }
}

fn insert_address(
    interface: &mut Interface,
    family: &str,
    address: String,
    prefix_len: u8,
    scope: &str,
) {
    interface.addresses.insert(
        format!("{address}/{prefix_len}"),
        Address {
            family: family.to_string(),
            address,
            prefix_len,
            scope: Some(scope.to_string()),
        },
    );
}

/// Adds the IPv4 addresses of `ip -j addr` output.
fn add_ip_json_addresses(
    facts: &mut Facts,
    output: &str,
    interfaces: &mut BTreeMap<String, Interface>,
) {
    let links: Vec<serde_json::Value> = match serde_json::from_str(output) {
        Ok(links) => links,
        Err(err) => {
            add_error(
                facts,
                NAME,
                None,
                format!("ip -j addr printed invalid JSON: {err}"),
            );
            return;
        }
    };
    for link in &links {
        let Some(name) = link.get("ifname").and_then(|v| v.as_str()) else {
            continue;
        };
        let infos = link
            .get("addr_info")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        for info in infos {
            let family = info.get("family").and_then(|v| v.as_str());
            let local = info.get("local").and_then(|v| v.as_str());
            let prefix_len = info.get("prefixlen").and_then(|v| v.as_u64());
            let scope = info
                .get("scope")
                .and_then(|v| v.as_str())
                .unwrap_or("global");
            if let (Some("inet"), Some(local), Some(prefix_len)) = (family, local, prefix_len) {
                let prefix_len = u8::try_from(prefix_len).unwrap_or(32);
                let entry = interfaces.entry(name.to_string()).or_default();
                insert_address(entry, "inet", local.to_string(), prefix_len, scope);
            }
        }
    }
}

fn add_ipv6_addresses(
    ctx: &Context,
    facts: &mut Facts,
    interfaces: &mut BTreeMap<String, Interface>,
) {
    let path = "/proc/net/if_inet6";
    let Some(text) = ctx.read_text(facts, NAME, path) else {
        return;
    };
    for entry in procnet::parse_if_inet6(&text).into_value(facts, NAME, path) {
        if entry.flags & procnet::IFA_F_TEMPORARY != 0 {
            continue;
        }
        let interface = interfaces.entry(entry.interface).or_default();
        insert_address(
            interface,
            "inet6",
            entry.address.to_string(),
            entry.prefix_len,
            &entry.scope,
        );
    }
}

fn read_routes(
    ctx: &Context,
    facts: &mut Facts,
    ipv4_routes: &[Ipv4Route],
) -> BTreeMap<String, Route> {
    let mut routes = BTreeMap::new();
    for route in ipv4_routes
        .iter()
        .filter(|route| procnet::is_recorded_ipv4_route(route))
    {
        let destination = if route.destination.is_unspecified() && route.mask.is_unspecified() {
            "default".to_string()
        } else {
            format!("{}/{}", route.destination, route.prefix_len())
        };
        let gateway = route.has_gateway().then(|| route.gateway.to_string());
        insert_route(
            &mut routes,
            destination,
            gateway,
            &route.interface,
            route.metric,
        );
    }

    let path = "/proc/net/ipv6_route";
    if let Some(text) = ctx.read_text(facts, NAME, path) {
        for route in procnet::parse_ipv6_route(&text).into_value(facts, NAME, path) {
            if !procnet::is_recorded_ipv6_route(&route) {
                continue;
            }
            let destination = if route.prefix_len == 0 && route.destination.is_unspecified() {
                "default".to_string()
            } else {
                format!("{}/{}", route.destination, route.prefix_len)
            };
            let gateway = (!route.next_hop.is_unspecified()).then(|| route.next_hop.to_string());
            insert_route(
                &mut routes,
                destination,
                gateway,
                &route.interface,
                route.metric,
            );
        }
    }
    routes
}

fn insert_route(
    routes: &mut BTreeMap<String, Route>,
    destination: String,
    gateway: Option<String>,
    interface: &str,
    metric: u32,
) {
    let key = match &gateway {
        Some(gateway) => format!("{destination} via {gateway} dev {interface}"),
        None => format!("{destination} dev {interface}"),
    };
    routes.insert(
        key,
        Route {
            destination,
            gateway,
            interface: (!interface.is_empty()).then(|| interface.to_string()),
            metric: Some(metric),
        },
    );
}

/// Reads `/etc/resolv.conf`. When it points only at systemd-resolved's local stub
/// (`127.0.0.53`), the upstream servers from `/run/systemd/resolve/resolv.conf` are recorded
/// instead, because those are what an administrator needs to see.
fn read_dns(ctx: &Context, facts: &mut Facts) -> Dns {
    let Some(text) = ctx.read_text(facts, NAME, "/etc/resolv.conf") else {
        return Dns::default();
    };
    let mut dns = parse_resolv_conf(&text);
    if dns.servers == ["127.0.0.53"] {
        if let Some(upstream) = ctx.read_text(facts, NAME, "/run/systemd/resolve/resolv.conf") {
            let upstream = parse_resolv_conf(&upstream);
            if !upstream.servers.is_empty() {
                dns.servers = upstream.servers;
            }
        }
    }
    dns
}

/// Parses resolv.conf: `nameserver` lines in order; the last `search` or `domain` line sets
/// the search list, as the resolver applies them.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(server) = words.next() {
                    dns.servers.push(server.to_string());
                }
            }
            Some("search") => dns.search = words.map(str::to_string).collect(),
            Some("domain") => dns.search = words.take(1).map(str::to_string).collect(),
            _ => {}
        }
    }
    dns
}

fn read_listening(
    ctx: &Context,
    facts: &mut Facts,
    native_order: bool,
) -> BTreeMap<String, ListeningSocket> {
    let tables = [
        ("tcp", "/proc/net/tcp", false, TCP_LISTEN),
        ("tcp6", "/proc/net/tcp6", true, TCP_LISTEN),
        ("udp", "/proc/net/udp", false, UDP_UNCONNECTED),
        ("udp6", "/proc/net/udp6", true, UDP_UNCONNECTED),
    ];
    let mut found: Vec<(&str, SocketEntry)> = Vec::new();
    for (protocol, path, v6, listen_state) in tables {
        let Some(text) = ctx.read_text(facts, NAME, path) else {
            continue;
        };
        let entries = procnet::parse_sockets(&text, v6, native_order).into_value(facts, NAME, path);
        found.extend(
            entries
                .into_iter()
                .filter(|entry| entry.state == listen_state && entry.remote_port == 0)
                .map(|entry| (protocol, entry)),
        );
    }

    let owners = if ctx.live() && !found.is_empty() {
        socket_owners(ctx, facts)
    } else {
        BTreeMap::new()
    };

    let mut listening = BTreeMap::new();
    for (protocol, entry) in found {
        let key = if protocol.ends_with('6') {
            format!("{protocol}/[{}]:{}", entry.address, entry.port)
        } else {
            format!("{protocol}/{}:{}", entry.address, entry.port)
        };
        // Several sockets may share an address with SO_REUSEPORT; the first one is recorded.
        listening.entry(key).or_insert_with(|| ListeningSocket {
            protocol: protocol.to_string(),
            address: entry.address,
            port: entry.port,
            process: owners.get(&entry.inode).cloned(),
            uid: Some(entry.uid),
        });
    }
    listening
}

/// Maps socket inodes to the name of the process with the lowest pid that has them open. Processes
/// of other users are skipped quietly when their `fd` directory is not readable.
fn socket_owners(ctx: &Context, facts: &mut Facts) -> BTreeMap<u64, String> {
    let mut owners = BTreeMap::new();
    let mut pids: Vec<u32> = ctx
        .list_dir(facts, NAME, "/proc")
        .iter()
        .filter_map(|name| name.parse().ok())
        .collect();
    pids.sort_unstable();

    for pid in pids {
        if ctx.expired() {
            ctx.record_expired(facts, NAME, Some("/proc"));
            break;
        }
        let Ok(fds) = fs::read_dir(ctx.host_path(&format!("/proc/{pid}/fd"))) else {
            continue;
        };
        let mut name: Option<String> = None;
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if owners.contains_key(&inode) {
                continue;
            }
            let process = name
                .get_or_insert_with(|| {
                    ctx.read_attribute(&format!("/proc/{pid}/comm"))
                        .unwrap_or_default()
                })
                .clone();
            owners.insert(inode, process);
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_servers_and_search() {
        let dns = parse_resolv_conf("# generated\nnameserver 192.0.2.53\nnameserver 2001:db8::53 # v6\nsearch a.example b.example\ndomain c.example\noptions edns0\n");
        assert_eq!(dns.servers, vec!["192.0.2.53", "2001:db8::53"]);
        assert_eq!(dns.search, vec!["c.example"]);
    }

    #[test]
    fn net_dev_names() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes\n    lo:    3193      29\n  eth0: 80059777    3569\n";
        assert_eq!(parse_net_dev_names(text), vec!["lo", "eth0"]);
    }
}
