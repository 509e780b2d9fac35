//! Host-level facts: host name and FQDN, machine id, boot time, time zone, architecture,
//! virtualization and container.
//!
//! Boot time comes from `btime` in `/proc/stat`, which stays put while the machine runs;
//! uptime is never recorded because it changes every second. The FQDN comes from `/etc/hosts`
//! or a dotted host name, never from a DNS query.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;

use fleetmesh_model::facts::{Package, System};
use fleetmesh_model::Facts;

use super::context::Context;

const NAME: &str = "system";

/// Collects host-level facts into `facts.system`.
pub fn collect(ctx: &Context, facts: &mut Facts) {
    let mut system = System::default();

    // Names.
    if let Some(name) = read_hostname(ctx, facts) {
        match name.split_once('.') {
            Some((short, _)) => {
                system.fqdn = Some(name.clone());
                system.hostname = short.to_string();
            }
            None => system.hostname = name,
        }
    }
    if system.fqdn.is_none() && !system.hostname.is_empty() {
        if let Some(hosts) = ctx.read_text(facts, NAME, "/etc/hosts") {
            system.fqdn = fqdn_from_hosts(&hosts, &system.hostname);
        }
    }
    system.machine_id = ctx
        .read_attribute("/etc/machine-id")
        .or_else(|| ctx.read_attribute("/var/lib/dbus/machine-id"));

    // Boot time.
    if let Some(stat) = ctx.read_text(facts, NAME, "/proc/stat") {
        system.boot_time = parse_boot_time(&stat);
    }

    // Time zone.
    system.timezone = read_timezone(ctx, facts);

    // Architecture: the running kernel when live, else the ELF header of a system binary.
    system.architecture = if ctx.live() {
        Some(
            rustix::system::uname()
                .machine()
                .to_string_lossy()
                .into_owned(),
        )
    } else {
        architecture_from_binaries(ctx)
    };

    // Virtualization and container.
    let cpuinfo = ctx
        .read_text(facts, NAME, "/proc/cpuinfo")
        .unwrap_or_default();
    system.virtualization = detect_virtualization(ctx, &cpuinfo);
    system.container = detect_container(ctx);

    facts.system = system;
}

fn read_hostname(ctx: &Context, facts: &mut Facts) -> Option<String> {
    for path in ["/etc/hostname", "/etc/HOSTNAME"] {
        if let Some(text) = ctx.read_text(facts, NAME, path) {
            let name = text
                .lines()
                .map(|line| line.split('#').next().unwrap_or("").trim())
                .find(|line| !line.is_empty());
            if let Some(name) = name {
                return Some(name.to_string());
            }
        }
    }
    ctx.read_attribute("/proc/sys/kernel/hostname")
}

/// Finds the FQDN of `hostname` in an `/etc/hosts` file: the first dotted name, on a line that
/// lists the host name, whose first label is the host name.
pub fn fqdn_from_hosts(hosts: &str, hostname: &str) -> Option<String> {
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let names: Vec<&str> = line.split_whitespace().skip(1).collect();
        if !names
            .iter()
            .any(|name| *name == hostname || name.split('.').next() == Some(hostname))
        {
            continue;
        }
        let dotted = names
            .iter()
            .find(|name| name.contains('.') && name.split('.').next() == Some(hostname));
        if let Some(name) = dotted {
            return Some((*name).to_string());
        }
    }
    None
}

/// Reads `btime` (boot time in seconds since the Unix epoch) from `/proc/stat` contents.
pub fn parse_boot_time(stat: &str) -> Option<i64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

fn read_timezone(ctx: &Context, facts: &mut Facts) -> Option<String> {
    if let Some(zone) = ctx.read_attribute("/etc/timezone") {
        return Some(zone);
    }
    if let Some(target) = ctx.read_link_like("/etc/localtime") {
        if let Some((_, zone)) = target.split_once("zoneinfo/") {
            let zone = zone
                .trim_start_matches("posix/")
                .trim_start_matches("right/");
            if !zone.is_empty() {
                return Some(zone.to_string());
            }
        }
    }
    let clock = ctx.read_text(facts, NAME, "/etc/sysconfig/clock")?;
    clock.lines().find_map(|line| {
        let value = line.trim().strip_prefix("ZONE=")?;
        let value = value.trim().trim_matches('"');
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// Reads the architecture from the ELF header of the first system binary found under the root.
fn architecture_from_binaries(ctx: &Context) -> Option<String> {
    for path in [
        "/bin/sh",
        "/usr/bin/sh",
        "/bin/busybox",
        "/usr/bin/env",
        "/sbin/init",
    ] {
        let Ok(mut file) = fs::File::open(ctx.resolve(path)) else {
            continue;
        };
        let mut header = [0u8; 20];
        if file.read_exact(&mut header).is_ok() {
            if let Some(arch) = elf_architecture(&header) {
                return Some(arch.to_string());
            }
        }
    }
    None
}

/// Maps the first 20 bytes of an ELF file to the name `uname -m` prints for that machine.
pub fn elf_architecture(header: &[u8]) -> Option<&'static str> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return None;
    }
    let is_64 = header[4] == 2;
    let little_endian = header[5] == 1;
    let machine = if little_endian {
        u16::from_le_bytes([header[18], header[19]])
    } else {
        u16::from_be_bytes([header[18], header[19]])
    };
    let arch = match (machine, is_64, little_endian) {
        (0x03, _, _) => "i686",
        (0x3e, _, _) => "x86_64",
        (0x28, _, _) => "armv7l",
        (0xb7, _, _) => "aarch64",
        (0x15, true, true) => "ppc64le",
        (0x15, true, false) => "ppc64",
        (0x14, _, _) => "ppc",
        (0x16, true, _) => "s390x",
        (0xf3, true, _) => "riscv64",
        (0x102, _, _) => "loongarch64",
        (0x08, true, _) => "mips64",
        (0x08, false, _) => "mips",
        _ => return None,
    };
    Some(arch)
}

/// Derives the architecture from the package manager's own package, for trees without
/// readable binaries. Returns the name `uname -m` prints.
pub fn architecture_from_packages(packages: &BTreeMap<String, Package>) -> Option<String> {
    let manager_package = packages
        .values()
        .find(|package| ["dpkg", "rpm", "apk-tools", "pacman"].contains(&package.name.as_str()))?;
    let arch = manager_package.arch.as_deref()?;
    let uname = match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "i386" | "x86" => "i686",
        "armhf" | "armv7" => "armv7l",
        "ppc64el" => "ppc64le",
        "all" | "noarch" | "any" | "" => return None,
        other => other,
    };
    Some(uname.to_string())
}

/// Names the hypervisor the way `systemd-detect-virt` does, from DMI, `/sys/hypervisor` and
/// the `hypervisor` CPU flag (`vm-other` when only the flag is there).
fn detect_virtualization(ctx: &Context, cpuinfo: &str) -> Option<String> {
    let dmi: Vec<String> = ["sys_vendor", "product_name", "bios_vendor", "board_vendor"]
        .iter()
        .filter_map(|name| ctx.read_attribute(&format!("/sys/class/dmi/id/{name}")))
        .collect();
    if let Some(name) = virtualization_from_dmi(&dmi) {
        return Some(name.to_string());
    }
    if ctx.read_attribute("/sys/hypervisor/type").as_deref() == Some("xen") {
        return Some("xen".to_string());
    }
    let flagged = cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| line.split_whitespace().any(|flag| flag == "hypervisor"));
    flagged.then(|| "vm-other".to_string())
}

/// Maps DMI vendor and product strings to a hypervisor name.
pub fn virtualization_from_dmi(values: &[String]) -> Option<&'static str> {
    const KNOWN: [(&str, &str); 12] = [
        ("KVM", "kvm"),
        ("Amazon EC2", "amazon"),
        ("Google Compute Engine", "google"),
        ("QEMU", "qemu"),
        ("VMware", "vmware"),
        ("VMW", "vmware"),
        ("innotek GmbH", "oracle"),
        ("VirtualBox", "oracle"),
        ("Xen", "xen"),
        ("Bochs", "bochs"),
        ("Parallels", "parallels"),
        ("BHYVE", "bhyve"),
    ];
    for value in values {
        for (needle, name) in KNOWN {
            if value.contains(needle) {
                return Some(name);
            }
        }
    }
    let hyperv = values.iter().any(|value| value == "Microsoft Corporation")
        && values.iter().any(|value| value == "Virtual Machine");
    hyperv.then_some("microsoft")
}

/// Names the container runtime from marker files, `container=` of process 1, and cgroups.
fn detect_container(ctx: &Context) -> Option<String> {
    if ctx.host_path("/.dockerenv").exists() {
        return Some("docker".to_string());
    }
    if ctx.host_path("/run/.containerenv").exists() {
        return Some("podman".to_string());
    }
    if let Some(name) = ctx.read_attribute("/run/systemd/container") {
        return Some(name);
    }
    if let Ok(environ) = ctx.read("/proc/1/environ", 1024 * 1024) {
        let found = environ
            .split(|byte| *byte == 0)
            .find_map(|entry| entry.strip_prefix(b"container="));
        if let Some(value) = found.filter(|value| !value.is_empty()) {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    if let Ok(cgroup) = ctx.read("/proc/1/cgroup", 1024 * 1024) {
        let cgroup = String::from_utf8_lossy(&cgroup);
        for (needle, name) in [
            ("/docker", "docker"),
            ("/lxc", "lxc"),
            ("kubepods", "kubernetes"),
        ] {
            if cgroup.contains(needle) {
                return Some(name.to_string());
            }
        }
    }
    let kernel = ctx
        .read_attribute("/proc/sys/kernel/osrelease")
        .unwrap_or_default();
    kernel
        .to_lowercase()
        .contains("microsoft")
        .then(|| "wsl".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_from_proc_stat() {
        let stat = "cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(parse_boot_time(stat), Some(1_700_000_000));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn fqdn_from_hosts_line() {
        let hosts = "127.0.0.1 localhost\n192.0.2.10 web01.example.com web01 # app\n";
        assert_eq!(
            fqdn_from_hosts(hosts, "web01").as_deref(),
            Some("web01.example.com")
        );
        assert_eq!(fqdn_from_hosts(hosts, "db01"), None);
    }

    #[test]
    fn elf_header_machines() {
        let mut header = [0u8; 20];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 2;
        header[5] = 1;
        header[18] = 0x3e;
        assert_eq!(elf_architecture(&header), Some("x86_64"));
        header[18] = 0xb7;
        assert_eq!(elf_architecture(&header), Some("aarch64"));
        assert_eq!(elf_architecture(b"#!/bin/sh"), None);
    }

    #[test]
    fn dmi_hyperv_needs_both_strings() {
        let both = [
            "Microsoft Corporation".to_string(),
            "Virtual Machine".to_string(),
        ];
        assert_eq!(virtualization_from_dmi(&both), Some("microsoft"));
        assert_eq!(virtualization_from_dmi(&both[..1]), None);
        assert_eq!(virtualization_from_dmi(&["QEMU".to_string()]), Some("qemu"));
    }
}
