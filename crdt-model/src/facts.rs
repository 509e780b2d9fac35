//! Typed facts: the configuration state that collectors read from a machine.
//!
//! Every collection of items is a `BTreeMap` keyed by the item's stable identity (package name and
//! architecture, interface name, mount point, unit name, file path), so the node document stores
//! them as automerge maps and one package upgrade is one small change. Values that drift on their
//! own (uptime, free bytes to the byte) are either derived at read time or rounded by the
//! collector, so that collecting an unchanged machine writes nothing.
//!
//! All fields have serde defaults, so documents written by newer agents with extra fields still
//! load, and fields missing from older documents read as empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything collected from one machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Facts {
    /// Host-level facts: names, boot time, architecture, virtualization.
    pub system: System,
    /// Operating system release and kernel.
    pub os: Os,
    /// CPU, memory, firmware identity and block devices.
    pub hardware: Hardware,
    /// Mounted file systems keyed by mount point.
    pub mounts: BTreeMap<String, Mount>,
    /// Network interfaces keyed by interface name.
    pub interfaces: BTreeMap<String, Interface>,
    /// Routes keyed by `destination via gateway dev interface`.
    pub routes: BTreeMap<String, Route>,
    /// Resolver configuration.
    pub dns: Dns,
    /// Listening sockets keyed by `protocol/address:port`.
    pub listening: BTreeMap<String, ListeningSocket>,
    /// Installed packages keyed by [`Package::key`].
    pub packages: BTreeMap<String, Package>,
    /// Service manager units keyed by unit name.
    pub services: BTreeMap<String, Service>,
    /// Which service manager runs, if any (`systemd`, `none`).
    pub service_manager: Option<String>,
    /// Local user accounts keyed by user name. Password hashes are never recorded.
    pub users: BTreeMap<String, User>,
    /// Local groups keyed by group name.
    pub groups: BTreeMap<String, Group>,
    /// Cron entries and timers keyed by `source:identity`.
    pub scheduled_tasks: BTreeMap<String, ScheduledTask>,
    /// Tracked configuration files keyed by absolute path.
    pub tracked_files: BTreeMap<String, TrackedFile>,
    /// Problems met while collecting, keyed by `collector:path`.
    pub collector_errors: BTreeMap<String, CollectorError>,
}

/// Host-level facts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct System {
    /// Short host name.
    pub hostname: String,
    /// Fully qualified domain name when one is configured.
    pub fqdn: Option<String>,
    /// Contents of `/etc/machine-id`.
    pub machine_id: Option<String>,
    /// Boot time in seconds since the Unix epoch; uptime is derived from it when read.
    pub boot_time: Option<i64>,
    /// IANA time zone name, for example `Europe/London`.
    pub timezone: Option<String>,
    /// Machine architecture as `uname -m` prints it, for example `x86_64`.
    pub architecture: Option<String>,
    /// Hypervisor, if the machine is a virtual machine (`kvm`, `vmware`, ...).
    pub virtualization: Option<String>,
    /// Container runtime, if the collector runs in a container (`docker`, `lxc`, ...).
    pub container: Option<String>,
}

/// Operating system release and kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Os {
    /// os-release `ID`, for example `debian`.
    pub id: Option<String>,
    /// os-release `ID_LIKE`, split on spaces.
    pub id_like: Vec<String>,
    /// os-release `NAME`.
    pub name: Option<String>,
    /// os-release `VERSION`.
    pub version: Option<String>,
    /// os-release `VERSION_ID`.
    pub version_id: Option<String>,
    /// os-release `VERSION_CODENAME`.
    pub version_codename: Option<String>,
    /// os-release `PRETTY_NAME`.
    pub pretty_name: Option<String>,
    /// Every os-release field as read, keyed by field name.
    pub release_fields: BTreeMap<String, String>,
    /// The file the release data came from (`/etc/os-release`, `/etc/redhat-release`, ...).
    pub release_source: Option<String>,
    /// Kernel release, as `uname -r` prints it.
    pub kernel_release: Option<String>,
    /// Kernel build version, as `uname -v` prints it.
    pub kernel_version: Option<String>,
}

/// CPU, memory and firmware identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hardware {
    /// CPU model name.
    pub cpu_model: Option<String>,
    /// CPU vendor id (`GenuineIntel`, `AuthenticAMD`, ARM implementer).
    pub cpu_vendor: Option<String>,
    /// Number of physical CPU packages.
    pub cpu_sockets: Option<u32>,
    /// Number of physical cores over all sockets.
    pub cpu_cores: Option<u32>,
    /// Number of hardware threads (logical CPUs).
    pub cpu_threads: Option<u32>,
    /// Total memory in KiB.
    pub memory_total_kib: Option<u64>,
    /// Total swap in KiB.
    pub swap_total_kib: Option<u64>,
    /// System vendor from DMI.
    pub vendor: Option<String>,
    /// Product name from DMI.
    pub product: Option<String>,
    /// Serial number from DMI.
    pub serial: Option<String>,
    /// BIOS or firmware version from DMI.
    pub firmware_version: Option<String>,
    /// Why DMI data is missing, if it is (`unavailable: permission denied`, ...).
    pub dmi_status: Option<String>,
    /// Block devices keyed by kernel name (`sda`, `nvme0n1`).
    pub block_devices: BTreeMap<String, BlockDevice>,
}

/// A block device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockDevice {
    /// Size in bytes.
    pub size_bytes: Option<u64>,
    /// Device model.
    pub model: Option<String>,
    /// Whether the device spins (`true`) or is solid state.
    pub rotational: Option<bool>,
    /// Whether the device is removable.
    pub removable: Option<bool>,
}

/// A mounted file system.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mount {
    /// Source device or remote (`/dev/sda1`, `server:/export`).
    pub device: String,
    /// File system type (`ext4`, `xfs`, `nfs4`).
    pub fs_type: String,
    /// Mount options as listed in the mount table.
    pub options: String,
    /// Size in bytes.
    pub total_bytes: Option<u64>,
    /// Free bytes, rounded down to 1/100 of the total so that ordinary churn writes no change.
    pub free_bytes: Option<u64>,
}

/// A network interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Interface {
    /// Hardware address in lower-case colon form.
    pub mac: Option<String>,
    /// Maximum transmission unit in bytes.
    pub mtu: Option<u32>,
    /// Operational state (`up`, `down`, `unknown`).
    pub state: Option<String>,
    /// Addresses keyed by `address/prefix length`.
    pub addresses: BTreeMap<String, Address>,
}

/// An address on an interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Address {
    /// `inet` or `inet6`.
    pub family: String,
    /// The address without prefix length.
    pub address: String,
    /// Prefix length in bits.
    pub prefix_len: u8,
    /// Scope (`global`, `link`, `host`).
    pub scope: Option<String>,
}

/// A route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Route {
    /// Destination network in CIDR form; `default` for default routes.
    pub destination: String,
    /// Next hop, if any.
    pub gateway: Option<String>,
    /// Outgoing interface.
    pub interface: Option<String>,
    /// Route metric.
    pub metric: Option<u32>,
}

/// Resolver configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    /// Name servers in order.
    pub servers: Vec<String>,
    /// Search domains in order.
    pub search: Vec<String>,
}

/// A listening socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListeningSocket {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    pub protocol: String,
    /// Local address.
    pub address: String,
    /// Local port.
    pub port: u16,
    /// Owning process name, where permitted.
    pub process: Option<String>,
    /// Owning user id.
    pub uid: Option<u32>,
}

/// An installed package.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Upstream version; for dpkg the whole version string without the epoch.
    pub version: String,
    /// RPM release, where the format has one.
    pub release: Option<String>,
    /// Epoch, where set.
    pub epoch: Option<u64>,
    /// Architecture (`amd64`, `x86_64`, `noarch`, `all`).
    pub arch: Option<String>,
    /// Source package, where different from the name.
    pub source: Option<String>,
    /// Package manager that installed it (`dpkg`, `rpm`, `apk`, `pacman`).
    pub manager: String,
    /// Install time in seconds since the Unix epoch, where the format records it.
    pub install_time: Option<i64>,
}

impl Package {
    /// Returns the map key: `name` or `name:arch` when the architecture is known.
    pub fn key(&self) -> String {
        match &self.arch {
            Some(arch) if !arch.is_empty() => format!("{}:{}", self.name, arch),
            _ => self.name.clone(),
        }
    }

    /// Returns the full version as the package manager prints it (`epoch:version-release`).
    pub fn full_version(&self) -> String {
        let mut out = String::new();
        if let Some(epoch) = self.epoch {
            out.push_str(&format!("{epoch}:"));
        }
        out.push_str(&self.version);
        if let Some(release) = &self.release {
            out.push('-');
            out.push_str(release);
        }
        out
    }
}

/// A service manager unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Service {
    /// Enabled state from unit files (`enabled`, `disabled`, `static`, `masked`).
    pub enabled: Option<String>,
    /// Active state from the running manager (`active`, `inactive`, `failed`), when it runs.
    pub active: Option<String>,
    /// Unit file path.
    pub unit_file: Option<String>,
    /// Description from the unit file.
    pub description: Option<String>,
}

/// A local user account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct User {
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// GECOS field.
    pub gecos: Option<String>,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
    /// Whether the user belongs to an administrative group (sudo, wheel, admin).
    pub admin: bool,
    /// SHA256 fingerprints of `authorized_keys` entries, in the OpenSSH `SHA256:` form.
    pub authorized_keys: Vec<String>,
}

/// A local group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Group {
    /// Numeric group id.
    pub gid: u32,
    /// Member user names in file order.
    pub members: Vec<String>,
}

/// A cron entry or systemd timer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduledTask {
    /// `cron` or `systemd-timer`.
    pub kind: String,
    /// Schedule expression as written.
    pub schedule: String,
    /// Command or unit to run.
    pub command: String,
    /// User the task runs as.
    pub user: Option<String>,
    /// File the task is defined in.
    pub source: String,
}

/// A tracked configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrackedFile {
    /// Whether the file exists.
    pub exists: bool,
    /// SHA-256 of the contents, in lower-case hex.
    pub sha256: Option<String>,
    /// Size in bytes.
    pub size: Option<u64>,
    /// Permission bits in octal (`0644`).
    pub mode: Option<String>,
    /// Owner user id.
    pub uid: Option<u32>,
    /// Owner group id.
    pub gid: Option<u32>,
    /// Modification time in seconds since the Unix epoch.
    pub mtime: Option<i64>,
    /// Text contents with secret values redacted, for text files up to 64 KiB.
    pub content: Option<String>,
}

/// A problem met by a collector. The rest of the collection goes on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CollectorError {
    /// Collector name (`packages.dpkg`, `os`, ...).
    pub collector: String,
    /// Path that was being read, if any.
    pub path: Option<String>,
    /// What went wrong.
    pub message: String,
}

impl Facts {
    /// Records a collector problem under the key `collector:path`.
    pub fn add_error(&mut self, collector: &str, path: Option<&str>, message: impl Into<String>) {
        let key = format!("{}:{}", collector, path.unwrap_or(""));
        self.collector_errors.insert(
            key,
            CollectorError {
                collector: collector.to_string(),
                path: path.map(str::to_string),
                message: message.into(),
            },
        );
    }
}
