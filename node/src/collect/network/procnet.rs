//! Parsers for the kernel's network tables in `/proc/net`.
//!
//! Two address notations appear there. `route`, `tcp` and `udp` print each 32-bit word of an
//! address as the host's `u32` in hex, so the bytes read back in the host's byte order.
//! `if_inet6` and `ipv6_route` print the bytes in network order. The `native_order` argument
//! is true when the machine reading the file also wrote it (live). A captured tree is assumed
//! to come from a little-endian machine (x86 or ARM).
//!
//! NOTE: a tree captured on a big-endian machine (s390x) and read elsewhere gets its IPv4 and
//! socket addresses byte-swapped.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::collect::Parsed;

/// Route flag: the route is usable.
const RTF_UP: u32 = 0x0001;
/// Route flag: the route goes through a gateway.
const RTF_GATEWAY: u32 = 0x0002;
/// Route flag: a reject route (`unreachable`).
const RTF_REJECT: u32 = 0x0200;
/// Route flag: a cached clone of a route.
const RTF_CACHE: u32 = 0x0100_0000;
/// Route flag: a route to a local address.
const RTF_LOCAL: u32 = 0x8000_0000;

/// `if_inet6` flag of a temporary (privacy) address, which the kernel rotates on its own.
pub const IFA_F_TEMPORARY: u32 = 0x01;

/// An IPv4 route from `/proc/net/route`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Route {
    /// Outgoing interface.
    pub interface: String,
    /// Destination network.
    pub destination: Ipv4Addr,
    /// Next hop; `0.0.0.0` for a directly connected network.
    pub gateway: Ipv4Addr,
    /// Route flags (`RTF_*`).
    pub flags: u32,
    /// Route metric.
    pub metric: u32,
    /// Network mask.
    pub mask: Ipv4Addr,
}

impl Ipv4Route {
    /// Prefix length of the mask.
    pub fn prefix_len(&self) -> u8 {
        u32::from(self.mask).count_ones() as u8
    }

    /// Returns whether the route goes through a gateway.
    pub fn has_gateway(&self) -> bool {
        self.flags & RTF_GATEWAY != 0 || !self.gateway.is_unspecified()
    }
}

/// An IPv6 route from `/proc/net/ipv6_route`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Route {
    /// Outgoing interface.
    pub interface: String,
    /// Destination network.
    pub destination: Ipv6Addr,
    /// Destination prefix length.
    pub prefix_len: u8,
    /// Next hop; `::` for a directly connected network.
    pub next_hop: Ipv6Addr,
    /// Route metric.
    pub metric: u32,
    /// Route flags (`RTF_*`).
    pub flags: u32,
}

/// An address from `/proc/net/if_inet6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inet6Address {
    /// Interface name.
    pub interface: String,
    /// The address.
    pub address: Ipv6Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Scope (`global`, `link`, `host`, `site`).
    pub scope: String,
    /// Address flags (`IFA_F_*`).
    pub flags: u32,
}

/// A socket from `/proc/net/{tcp,tcp6,udp,udp6}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    /// Local address.
    pub address: String,
    /// Local port.
    pub port: u16,
    /// Remote port; 0 for listening or unconnected sockets.
    pub remote_port: u16,
    /// Kernel socket state (`0A` is TCP listen, `07` an unconnected UDP socket).
    pub state: u8,
    /// Owning user id.
    pub uid: u32,
    /// Socket inode, which `/proc/<pid>/fd` links name as `socket:[inode]`.
    pub inode: u64,
}

/// Parses `/proc/net/route`.
pub fn parse_route(text: &str, native_order: bool) -> Parsed<Vec<Ipv4Route>> {
    let mut parsed = Parsed::<Vec<Ipv4Route>>::default();
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "Iface" {
            continue;
        }
        let route = (|| {
            Some(Ipv4Route {
                interface: fields.first()?.to_string(),
                destination: hex_ipv4(fields.get(1)?, native_order)?,
                gateway: hex_ipv4(fields.get(2)?, native_order)?,
                flags: u32::from_str_radix(fields.get(3)?, 16).ok()?,
                metric: fields.get(6)?.parse().ok()?,
                mask: hex_ipv4(fields.get(7)?, native_order)?,
            })
        })();
        match route {
            Some(route) => parsed.value.push(route),
            None => parsed
                .problems
                .push(format!("line {}: not a route table entry", index + 1)),
        }
    }
    parsed
}

/// Returns whether an IPv4 route belongs in the inventory (up, not a reject route).
pub fn is_recorded_ipv4_route(route: &Ipv4Route) -> bool {
    route.flags & RTF_UP != 0 && route.flags & RTF_REJECT == 0
}

/// Parses `/proc/net/ipv6_route`.
pub fn parse_ipv6_route(text: &str) -> Parsed<Vec<Ipv6Route>> {
    let mut parsed = Parsed::<Vec<Ipv6Route>>::default();
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let route = (|| {
            Some(Ipv6Route {
                destination: hex_ipv6_network_order(fields.first()?)?,
                prefix_len: u8::from_str_radix(fields.get(1)?, 16).ok()?,
                next_hop: hex_ipv6_network_order(fields.get(4)?)?,
                metric: u32::from_str_radix(fields.get(5)?, 16).ok()?,
                flags: u32::from_str_radix(fields.get(8)?, 16).ok()?,
                interface: fields.get(9)?.to_string(),
            })
        })();
        match route {
            Some(route) => parsed.value.push(route),
            None => parsed
                .problems
                .push(format!("line {}: not an IPv6 route table entry", index + 1)),
        }
    }
    parsed
}

/// Returns whether an IPv6 route belongs in the inventory. It must be up, and not a local,
/// reject, cache or multicast route, because those come and go with addresses and traffic.
pub fn is_recorded_ipv6_route(route: &Ipv6Route) -> bool {
    let skip = RTF_LOCAL | RTF_REJECT | RTF_CACHE;
    route.flags & RTF_UP != 0 && route.flags & skip == 0 && !route.destination.is_multicast()
}

/// Parses `/proc/net/if_inet6`.
pub fn parse_if_inet6(text: &str) -> Parsed<Vec<Inet6Address>> {
    let mut parsed = Parsed::<Vec<Inet6Address>>::default();
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let address = (|| {
            let scope = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            Some(Inet6Address {
                address: hex_ipv6_network_order(fields.first()?)?,
                prefix_len: u8::from_str_radix(fields.get(2)?, 16).ok()?,
                scope: ipv6_scope_name(scope).to_string(),
                flags: u32::from_str_radix(fields.get(4)?, 16).ok()?,
                interface: fields.get(5)?.to_string(),
            })
        })();
        match address {
            Some(address) => parsed.value.push(address),
            None => parsed
                .problems
                .push(format!("line {}: not an if_inet6 entry", index + 1)),
        }
    }
    parsed
}

fn ipv6_scope_name(scope: u32) -> &'static str {
    match scope & 0xf0 {
        0x00 => "global",
        0x10 => "host",
        0x20 => "link",
        0x40 => "site",
        _ => "other",
    }
}

/// Parses the `LOCAL` addresses of `/proc/net/fib_trie`: the addresses assigned to this
/// machine. Each appears as a `|-- address` line followed by `/32 host LOCAL`.
pub fn parse_fib_trie_local(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last_leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(address) = line.strip_prefix("|-- ") {
            last_leaf = address.trim().parse().ok();
            continue;
        }
        // `/8 host LOCAL` marks the local 127.0.0.0/8 network, not an address.
        if line.starts_with("/32 ") && line.ends_with("LOCAL") {
            if let Some(address) = last_leaf {
                if !out.contains(&address) {
                    out.push(address);
                }
            }
        }
    }
    out
}

/// Parses a socket table. `v6` selects the 32-hex-digit address form.
pub fn parse_sockets(text: &str, v6: bool, native_order: bool) -> Parsed<Vec<SocketEntry>> {
    let mut parsed = Parsed::<Vec<SocketEntry>>::default();
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "sl" {
            continue;
        }
        let entry = (|| {
            let (local, port) = fields.get(1)?.split_once(':')?;
            let (_, remote_port) = fields.get(2)?.split_once(':')?;
            let address = if v6 {
                hex_ipv6_words(local, native_order)?.to_string()
            } else {
                hex_ipv4(local, native_order)?.to_string()
            };
            Some(SocketEntry {
                address,
                port: u16::from_str_radix(port, 16).ok()?,
                remote_port: u16::from_str_radix(remote_port, 16).ok()?,
                state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
                uid: fields.get(7)?.parse().ok()?,
                inode: fields.get(9)?.parse().ok()?,
            })
        })();
        match entry {
            Some(entry) => parsed.value.push(entry),
            None => parsed
                .problems
                .push(format!("line {}: not a socket table entry", index + 1)),
        }
    }
    parsed
}

fn word_bytes(hex: &str, native_order: bool) -> Option<[u8; 4]> {
    if hex.len() != 8 {
        return None;
    }
    let word = u32::from_str_radix(hex, 16).ok()?;
    Some(if native_order {
        word.to_ne_bytes()
    } else {
        word.to_le_bytes()
    })
}

/// Decodes an IPv4 address printed as one host-order word.
pub fn hex_ipv4(hex: &str, native_order: bool) -> Option<Ipv4Addr> {
    word_bytes(hex, native_order).map(Ipv4Addr::from)
}

/// Decodes an IPv6 address printed as four host-order words (socket tables).
pub fn hex_ipv6_words(hex: &str, native_order: bool) -> Option<Ipv6Addr> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 16];
    for word in 0..4 {
        let chunk = word_bytes(&hex[word * 8..word * 8 + 8], native_order)?;
        bytes[word * 4..word * 4 + 4].copy_from_slice(&chunk);
    }
    Some(Ipv6Addr::from(bytes))
}

/// Decodes an IPv6 address printed as 16 bytes in network order (`if_inet6`, `ipv6_route`).
pub fn hex_ipv6_network_order(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let value = u128::from_str_radix(hex, 16).ok()?;
    Some(Ipv6Addr::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table_little_endian() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\neth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\neth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let routes = parse_route(text, false).value;
        assert_eq!(routes[0].gateway, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(routes[0].metric, 100);
        assert!(routes[0].has_gateway());
        assert_eq!(routes[1].destination, Ipv4Addr::new(192, 0, 2, 0));
        assert_eq!(routes[1].prefix_len(), 24);
    }

    #[test]
    fn socket_table_entries() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 214 1 0 100 0 0 10 0\n";
        let entries = parse_sockets(tcp, false, false).value;
        assert_eq!(entries[0].address, "127.0.0.1");
        assert_eq!(entries[0].port, 22);
        assert_eq!(entries[0].state, 0x0a);
        assert_eq!(entries[0].inode, 214);

        let tcp6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   33        0 999 1\n";
        let entries = parse_sockets(tcp6, true, false).value;
        assert_eq!(entries[0].address, "::1");
        assert_eq!(entries[0].port, 80);
        assert_eq!(entries[0].uid, 33);
    }

    #[test]
    fn if_inet6_entries() {
        let text = "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n";
        let entries = parse_if_inet6(text).value;
        assert_eq!(entries[0].address.to_string(), "fe80::fc:ff:fe00:1");
        assert_eq!(entries[0].prefix_len, 64);
        assert_eq!(entries[0].scope, "link");
        assert_eq!(entries[0].interface, "eth0");
    }

    #[test]
    fn fib_trie_local_addresses() {
        let text = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     |-- 127.0.0.0\n        /8 host LOCAL\n     |-- 192.0.2.10\n        /32 host LOCAL\nLocal:\n     |-- 192.0.2.10\n        /32 host LOCAL\n     |-- 192.0.2.255\n        /32 link BROADCAST\n";
        assert_eq!(
            parse_fib_trie_local(text),
            vec![Ipv4Addr::new(192, 0, 2, 10)]
        );
    }
}
