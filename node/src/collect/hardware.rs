//! CPU, memory, firmware identity and block devices.
//!
//! CPU topology comes from `/proc/cpuinfo`, which lists one block per logical CPU. x86 blocks
//! carry `physical id` and `core id`; ARM blocks carry only the implementer and part numbers,
//! so there the topology comes from `/sys/devices/system/cpu/cpu*/topology` when it exists.
//! DMI strings come from `/sys/class/dmi/id`; the serial number is readable by root only, and
//! `dmi_status` records why anything is missing.

use std::collections::{BTreeMap, BTreeSet};

use fleetmesh_model::facts::{BlockDevice, Hardware};
use fleetmesh_model::Facts;

use super::context::Context;

const NAME: &str = "hardware";

/// Collects CPU, memory, DMI and block devices into `facts.hardware`.
pub fn collect(ctx: &Context, facts: &mut Facts) {
    let mut hardware = Hardware::default();

    // CPU.
    if let Some(cpuinfo) = ctx.read_text(facts, NAME, "/proc/cpuinfo") {
        let mut cpu = parse_cpuinfo(&cpuinfo);
        if cpu.sockets.is_none() {
            fill_topology_from_sysfs(ctx, facts, &mut cpu);
        }
        hardware.cpu_model = cpu.model;
        hardware.cpu_vendor = cpu.vendor;
        hardware.cpu_sockets = cpu.sockets;
        hardware.cpu_cores = cpu.cores;
        hardware.cpu_threads = cpu.threads;
    }

    // Memory.
    if let Some(meminfo) = ctx.read_text(facts, NAME, "/proc/meminfo") {
        let memory = parse_meminfo(&meminfo);
        hardware.memory_total_kib = memory.get("MemTotal").copied();
        hardware.swap_total_kib = memory.get("SwapTotal").copied();
    }

    // Firmware identity.
    read_dmi(ctx, &mut hardware);

    // Block devices.
    hardware.block_devices = read_block_devices(ctx, facts);

    facts.hardware = hardware;
}

/// CPU facts read from `/proc/cpuinfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// Model name.
    pub model: Option<String>,
    /// Vendor id or ARM implementer name.
    pub vendor: Option<String>,
    /// Physical packages, when the file lists `physical id`.
    pub sockets: Option<u32>,
    /// Physical cores, when the file lists `core id` or `cpu cores`.
    pub cores: Option<u32>,
    /// Logical CPUs.
    pub threads: Option<u32>,
}

/// Parses `/proc/cpuinfo` of x86, ARM, POWER and s390x kernels.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut threads: u32 = 0;
    let mut packages: BTreeSet<String> = BTreeSet::new();
    let mut cores: BTreeSet<(String, String)> = BTreeSet::new();
    let mut current_package = String::new();
    let mut implementer: Option<String> = None;
    let mut part: Option<String> = None;
    let mut hardware_line: Option<String> = None;

    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        match key {
            "processor" if value.parse::<u32>().is_ok() => {
                threads += 1;
                current_package.clear();
            }
            "vendor_id" if info.vendor.is_none() && !value.is_empty() => {
                info.vendor = Some(value.to_string());
            }
            "model name" | "cpu model" | "cpu" | "Processor"
                if info.model.is_none() && !value.is_empty() =>
            {
                info.model = Some(value.to_string());
            }
            "physical id" => {
                current_package = value.to_string();
                packages.insert(current_package.clone());
            }
            "core id" => {
                cores.insert((current_package.clone(), value.to_string()));
            }
            "CPU implementer" if implementer.is_none() => implementer = Some(value.to_string()),
            "CPU part" if part.is_none() => part = Some(value.to_string()),
            "Hardware" | "Model" if hardware_line.is_none() && !value.is_empty() => {
                hardware_line = Some(value.to_string());
            }
            _ => {}
        }
    }

    // s390x prints one summary block instead of one block per CPU.
    if threads == 0 {
        threads = text
            .lines()
            .find_map(|line| line.strip_prefix("# processors"))
            .and_then(|rest| {
                rest.trim_start_matches([' ', ':', '\t'])
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
    }

    if let Some(code) = &implementer {
        let (vendor, model) = arm_names(code, part.as_deref());
        info.vendor = info.vendor.take().or(vendor.map(str::to_string));
        if let Some(model) = model {
            info.model = Some(model);
        }
    }
    if info.model.is_none() {
        info.model = hardware_line;
    }
    if threads > 0 {
        info.threads = Some(threads);
    }
    if !packages.is_empty() {
        info.sockets = Some(packages.len() as u32);
        if !cores.is_empty() {
            info.cores = Some(cores.len() as u32);
        }
    }
    info
}

/// Names an ARM CPU from its implementer and part codes (`0x41`, `0xd0c`).
fn arm_names(implementer: &str, part: Option<&str>) -> (Option<&'static str>, Option<String>) {
    let vendor = match implementer.to_ascii_lowercase().as_str() {
        "0x41" => Some("ARM"),
        "0x42" => Some("Broadcom"),
        "0x43" => Some("Cavium"),
        "0x48" => Some("HiSilicon"),
        "0x4e" => Some("NVIDIA"),
        "0x50" => Some("APM"),
        "0x51" => Some("Qualcomm"),
        "0x61" => Some("Apple"),
        "0xc0" => Some("Ampere"),
        _ => None,
    };
    let core = match (
        implementer.to_ascii_lowercase().as_str(),
        part.map(str::to_ascii_lowercase).as_deref(),
    ) {
        ("0x41", Some("0xd03")) => Some("Cortex-A53"),
        ("0x41", Some("0xd04")) => Some("Cortex-A35"),
        ("0x41", Some("0xd05")) => Some("Cortex-A55"),
        ("0x41", Some("0xd07")) => Some("Cortex-A57"),
        ("0x41", Some("0xd08")) => Some("Cortex-A72"),
        ("0x41", Some("0xd09")) => Some("Cortex-A73"),
        ("0x41", Some("0xd0a")) => Some("Cortex-A75"),
        ("0x41", Some("0xd0b")) => Some("Cortex-A76"),
        ("0x41", Some("0xd0c")) => Some("Neoverse-N1"),
        ("0x41", Some("0xd0d")) => Some("Cortex-A77"),
        ("0x41", Some("0xd40")) => Some("Neoverse-V1"),
        ("0x41", Some("0xd41")) => Some("Cortex-A78"),
        ("0x41", Some("0xd49")) => Some("Neoverse-N2"),
        ("0x41", Some("0xd4f")) => Some("Neoverse-V2"),
        ("0x41", Some("0xd8e")) => Some("Neoverse-N3"),
        ("0xc0", Some("0xac3")) => Some("Ampere-1"),
        _ => None,
    };
    let model = match (vendor, core) {
        (Some(vendor), Some(core)) => Some(format!("{vendor} {core}")),
        (Some(vendor), None) => part.map(|part| format!("{vendor} part {part}")),
        _ => None,
    };
    (vendor, model)
}

/// Counts packages and cores from sysfs topology, for CPUs whose cpuinfo lacks them (ARM).
fn fill_topology_from_sysfs(ctx: &Context, facts: &mut Facts, cpu: &mut CpuInfo) {
    let mut packages = BTreeSet::new();
    let mut cores = BTreeSet::new();
    for name in ctx.list_dir(facts, NAME, "/sys/devices/system/cpu") {
        let is_cpu = name
            .strip_prefix("cpu")
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()));
        if !is_cpu {
            continue;
        }
        let base = format!("/sys/devices/system/cpu/{name}/topology");
        let package = ctx.read_attribute(&format!("{base}/physical_package_id"));
        let core = ctx.read_attribute(&format!("{base}/core_id"));
        if let (Some(package), Some(core)) = (package, core) {
            packages.insert(package.clone());
            cores.insert((package, core));
        }
    }
    if !packages.is_empty() {
        cpu.sockets = Some(packages.len() as u32);
        cpu.cores = Some(cores.len() as u32);
    }
}

/// Parses `/proc/meminfo` into values in KiB keyed by field name.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let number = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.trim().to_string(), number))
        })
        .collect()
}

fn read_dmi(ctx: &Context, hardware: &mut Hardware) {
    const DMI: &str = "/sys/class/dmi/id";
    if !ctx.resolve(DMI).is_dir() {
        hardware.dmi_status = Some(format!("unavailable: {DMI} not found"));
        return;
    }
    hardware.vendor = dmi_value(ctx.read_attribute(&format!("{DMI}/sys_vendor")));
    hardware.product = dmi_value(ctx.read_attribute(&format!("{DMI}/product_name")));
    hardware.firmware_version = dmi_value(ctx.read_attribute(&format!("{DMI}/bios_version")));

    let serial_path = format!("{DMI}/product_serial");
    match ctx.read(&serial_path, 4096) {
        Ok(bytes) => {
            let serial = String::from_utf8_lossy(&bytes).trim().to_string();
            hardware.serial = dmi_value(Some(serial));
        }
        Err(super::context::ReadError::NotFound) => {
            hardware.dmi_status = Some("serial unavailable: product_serial not found".to_string());
        }
        Err(super::context::ReadError::Failed(message)) => {
            hardware.dmi_status = Some(format!("serial unavailable: {message}"));
        }
    }
}

/// Drops the placeholder strings that firmware vendors leave in unset DMI fields.
fn dmi_value(value: Option<String>) -> Option<String> {
    const PLACEHOLDERS: [&str; 7] = [
        "",
        "To Be Filled By O.E.M.",
        "Default string",
        "System Serial Number",
        "Not Specified",
        "None",
        "0",
    ];
    value.filter(|value| !PLACEHOLDERS.contains(&value.as_str()))
}

/// Reads whole disks from `/sys/block`. Loop and RAM disks are left out because they come and go
/// with snaps and images and are not storage an administrator manages.
fn read_block_devices(ctx: &Context, facts: &mut Facts) -> BTreeMap<String, BlockDevice> {
    let mut devices = BTreeMap::new();
    for name in ctx.list_dir(facts, NAME, "/sys/block") {
        if name.starts_with("loop") || name.starts_with("ram") {
            continue;
        }
        let base = format!("/sys/block/{name}");
        let flag = |attribute: &str| {
            ctx.read_attribute(&format!("{base}/{attribute}"))
                .map(|value| value == "1")
        };
        let device = BlockDevice {
            // The kernel reports the size in 512-byte sectors whatever the logical block size.
            size_bytes: ctx
                .read_attribute(&format!("{base}/size"))
                .and_then(|sectors| sectors.parse::<u64>().ok())
                .map(|sectors| sectors.saturating_mul(512)),
            model: ctx.read_attribute(&format!("{base}/device/model")),
            rotational: flag("queue/rotational"),
            removable: flag("removable"),
        };
        devices.insert(name, device);
    }
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_x86_two_sockets() {
        let mut text = String::new();
        for (cpu, package, core) in [
            (0, 0, 0),
            (1, 0, 0),
            (2, 0, 1),
            (3, 0, 1),
            (4, 1, 0),
            (5, 1, 0),
            (6, 1, 1),
            (7, 1, 1),
        ] {
            text.push_str(&format!(
                "processor\t: {cpu}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel Xeon\nphysical id\t: {package}\ncore id\t\t: {core}\n\n"
            ));
        }
        let info = parse_cpuinfo(&text);
        assert_eq!(info.threads, Some(8));
        assert_eq!(info.sockets, Some(2));
        assert_eq!(info.cores, Some(4));
        assert_eq!(info.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(info.model.as_deref(), Some("Intel Xeon"));
    }

    #[test]
    fn cpuinfo_arm64() {
        let block = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd0c\n\n";
        let text = format!("{block}{}", block.replace(": 0\n", ": 1\n"));
        let info = parse_cpuinfo(&text);
        assert_eq!(info.threads, Some(2));
        assert_eq!(info.vendor.as_deref(), Some("ARM"));
        assert_eq!(info.model.as_deref(), Some("ARM Neoverse-N1"));
        assert_eq!(info.sockets, None);
    }

    #[test]
    fn meminfo_values() {
        let memory = parse_meminfo(
            "MemTotal:       24683792 kB\nSwapTotal:             0 kB\nHugePages_Total:       0\n",
        );
        assert_eq!(memory["MemTotal"], 24_683_792);
        assert_eq!(memory["SwapTotal"], 0);
    }
}
