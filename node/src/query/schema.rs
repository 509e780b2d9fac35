//! Description of every fact table and column, for `fleetmesh schema` and docs/schema.md.
//!
//! A test compares this description with the tables that `store::materialize::create_tables`
//! creates, column by column, and with docs/schema.md, so the three cannot drift apart.

use serde::Serialize;

/// One fact table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableDoc {
    /// Table name.
    pub name: &'static str,
    /// Meaning of one row.
    pub description: &'static str,
    /// Columns in table order.
    pub columns: Vec<ColumnDoc>,
}

/// One column of a fact table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ColumnDoc {
    /// Column name.
    pub name: &'static str,
    /// Declared SQLite type: `TEXT` or `INTEGER`.
    pub sql_type: &'static str,
    /// Meaning, unit and where the value comes from.
    pub description: &'static str,
}

const NODE_ID: (&str, &str, &str) = (
    "node_id",
    "TEXT",
    "Node id: the libp2p peer id of the node's ed25519 key (starts with 12D3KooW).",
);

fn table(
    name: &'static str,
    description: &'static str,
    columns: &[(&'static str, &'static str, &'static str)],
) -> TableDoc {
    TableDoc {
        name,
        description,
        columns: columns
            .iter()
            .map(|&(name, sql_type, description)| ColumnDoc {
                name,
                sql_type,
                description,
            })
            .collect(),
    }
}

/// Returns the description of every fact table, in a stable order.
pub fn schema() -> Vec<TableDoc> {
    vec![
        table(
            "nodes",
            "One row per known node: identity, operating system, hardware summary and how \
             current its facts are. A node heard from before any of its facts arrived has NULL in \
             every fact column and a package_count of 0.",
            &[
                NODE_ID,
                ("tenant", "TEXT", "Tenant (customer) the node belongs to."),
                ("site", "TEXT", "Site (location) of the node within its tenant."),
                ("hostname", "TEXT", "Short host name."),
                ("fqdn", "TEXT", "Fully qualified domain name, where configured."),
                ("machine_id", "TEXT", "Contents of /etc/machine-id."),
                ("boot_time", "INTEGER", "Boot time, Unix seconds."),
                ("timezone", "TEXT", "IANA time zone name, for example Europe/London."),
                ("architecture", "TEXT", "Machine architecture as `uname -m` prints it."),
                ("virtualization", "TEXT", "Hypervisor if the machine is virtual (kvm, vmware, ...)."),
                ("container", "TEXT", "Container runtime if the agent runs in a container."),
                ("os_id", "TEXT", "os-release ID, for example debian."),
                ("os_id_like", "TEXT", "os-release ID_LIKE, space-separated."),
                ("os_name", "TEXT", "os-release NAME."),
                ("os_version", "TEXT", "os-release VERSION."),
                ("os_version_id", "TEXT", "os-release VERSION_ID, for example 12."),
                ("os_version_codename", "TEXT", "os-release VERSION_CODENAME, for example bookworm."),
                ("os_pretty_name", "TEXT", "os-release PRETTY_NAME."),
                ("os_release_source", "TEXT", "File the release data was read from."),
                ("os_release_fields", "TEXT", "Every os-release field as a JSON object; use json_extract()."),
                ("kernel_release", "TEXT", "Kernel release as `uname -r` prints it."),
                ("kernel_version", "TEXT", "Kernel build version as `uname -v` prints it."),
                ("cpu_model", "TEXT", "CPU model name."),
                ("cpu_vendor", "TEXT", "CPU vendor id (GenuineIntel, AuthenticAMD, ...)."),
                ("cpu_sockets", "INTEGER", "Number of CPU packages."),
                ("cpu_cores", "INTEGER", "Number of physical cores over all sockets."),
                ("cpu_threads", "INTEGER", "Number of hardware threads (logical CPUs)."),
                ("memory_total_kib", "INTEGER", "Total memory, KiB."),
                ("swap_total_kib", "INTEGER", "Total swap, KiB."),
                ("hardware_vendor", "TEXT", "System vendor from DMI."),
                ("hardware_product", "TEXT", "Product name from DMI."),
                ("hardware_serial", "TEXT", "Serial number from DMI."),
                ("firmware_version", "TEXT", "BIOS or firmware version from DMI."),
                ("dmi_status", "TEXT", "Why DMI data is missing, if it is."),
                ("service_manager", "TEXT", "Service manager that runs (systemd, none)."),
                ("package_count", "INTEGER", "Number of rows of this node in packages."),
                ("agent_version", "TEXT", "fleetmesh version that wrote the node's last change."),
                ("last_change", "INTEGER", "Commit time of the newest change applied from this node, Unix seconds, by the node's clock."),
                ("last_heard", "INTEGER", "When this node was last heard from directly, Unix seconds, by the local clock; NULL if never."),
                ("connected", "INTEGER", "1 if the node is connected to the local node now, else 0."),
            ],
        ),
        table(
            "packages",
            "One row per installed package of each node.",
            &[
                NODE_ID,
                ("key", "TEXT", "Item key: name:arch, or name when the architecture is unknown."),
                ("name", "TEXT", "Package name."),
                ("version", "TEXT", "Version without epoch; for dpkg it includes the Debian revision."),
                ("release", "TEXT", "RPM release, where the format has one."),
                ("epoch", "INTEGER", "Epoch, where set."),
                ("arch", "TEXT", "Architecture (amd64, x86_64, noarch, all)."),
                ("source", "TEXT", "Source package, where different from the name."),
                ("manager", "TEXT", "Package manager that installed it (dpkg, rpm, apk, pacman)."),
                ("full_version", "TEXT", "Version as the package manager prints it, epoch:version-release; compare with deb_version_cmp(), rpm_version_cmp() or version_cmp()."),
                ("install_time", "INTEGER", "Install time, Unix seconds, where the format records it."),
            ],
        ),
        table(
            "services",
            "One row per service manager unit of each node.",
            &[
                NODE_ID,
                ("name", "TEXT", "Unit name, for example ssh.service."),
                ("enabled", "TEXT", "Enabled state from unit files (enabled, disabled, static, masked)."),
                ("active", "TEXT", "Active state from the running manager (active, inactive, failed)."),
                ("unit_file", "TEXT", "Unit file path."),
                ("description", "TEXT", "Description from the unit file."),
            ],
        ),
        table(
            "interfaces",
            "One row per network interface of each node.",
            &[
                NODE_ID,
                ("name", "TEXT", "Interface name, for example eth0."),
                ("mac", "TEXT", "Hardware address, lower-case colon form."),
                ("mtu", "INTEGER", "Maximum transmission unit, bytes."),
                ("state", "TEXT", "Operational state (up, down, unknown)."),
            ],
        ),
        table(
            "addresses",
            "One row per address on a network interface.",
            &[
                NODE_ID,
                ("interface", "TEXT", "Interface name; joins interfaces.name."),
                ("key", "TEXT", "Item key: address/prefix length."),
                ("family", "TEXT", "inet or inet6."),
                ("address", "TEXT", "The address without prefix length."),
                ("prefix_len", "INTEGER", "Prefix length, bits."),
                ("scope", "TEXT", "Scope (global, link, host)."),
            ],
        ),
        table(
            "routes",
            "One row per route of each node.",
            &[
                NODE_ID,
                ("key", "TEXT", "Item key: destination via gateway dev interface."),
                ("destination", "TEXT", "Destination network in CIDR form, or default."),
                ("gateway", "TEXT", "Next hop, if any."),
                ("interface", "TEXT", "Outgoing interface."),
                ("metric", "INTEGER", "Route metric."),
            ],
        ),
        table(
            "listening_ports",
            "One row per listening socket of each node.",
            &[
                NODE_ID,
                ("key", "TEXT", "Item key: protocol/address:port."),
                ("protocol", "TEXT", "tcp, tcp6, udp or udp6."),
                ("address", "TEXT", "Local address."),
                ("port", "INTEGER", "Local port."),
                ("process", "TEXT", "Owning process name, where the agent may read it."),
                ("uid", "INTEGER", "Owning user id."),
            ],
        ),
        table(
            "users",
            "One row per local user account. Password hashes are never collected.",
            &[
                NODE_ID,
                ("name", "TEXT", "User name."),
                ("uid", "INTEGER", "Numeric user id."),
                ("gid", "INTEGER", "Primary group id."),
                ("gecos", "TEXT", "GECOS field (full name and contact data)."),
                ("home", "TEXT", "Home directory."),
                ("shell", "TEXT", "Login shell."),
                ("admin", "INTEGER", "1 if the user is in an administrative group (sudo, wheel, admin), else 0."),
            ],
        ),
        table(
            "authorized_keys",
            "One row per SSH key a local user authorizes.",
            &[
                NODE_ID,
                ("user", "TEXT", "User name; joins users.name."),
                ("position", "INTEGER", "Position in the user's authorized_keys file, from 1."),
                ("fingerprint", "TEXT", "Key fingerprint in OpenSSH SHA256: form."),
            ],
        ),
        table(
            "groups",
            "One row per local group.",
            &[
                NODE_ID,
                ("name", "TEXT", "Group name."),
                ("gid", "INTEGER", "Numeric group id."),
            ],
        ),
        table(
            "group_members",
            "One row per member listed for a local group.",
            &[
                NODE_ID,
                ("group_name", "TEXT", "Group name; joins groups.name."),
                ("position", "INTEGER", "Position in the group's member list, from 1."),
                ("member", "TEXT", "Member user name."),
            ],
        ),
        table(
            "mounts",
            "One row per mounted file system.",
            &[
                NODE_ID,
                ("mount_point", "TEXT", "Mount point."),
                ("device", "TEXT", "Source device or remote (/dev/sda1, server:/export)."),
                ("fs_type", "TEXT", "File system type (ext4, xfs, nfs4)."),
                ("options", "TEXT", "Mount options as listed in the mount table."),
                ("total_bytes", "INTEGER", "Size, bytes."),
                ("free_bytes", "INTEGER", "Free space, bytes, rounded down to 1/1000 of the size."),
            ],
        ),
        table(
            "block_devices",
            "One row per block device.",
            &[
                NODE_ID,
                ("name", "TEXT", "Kernel name (sda, nvme0n1)."),
                ("size_bytes", "INTEGER", "Size, bytes."),
                ("model", "TEXT", "Device model."),
                ("rotational", "INTEGER", "1 for a spinning disk, 0 for solid state."),
                ("removable", "INTEGER", "1 if the device is removable, else 0."),
            ],
        ),
        table(
            "dns_servers",
            "One row per name server in a node's resolver configuration.",
            &[
                NODE_ID,
                ("position", "INTEGER", "Order of use, from 1."),
                ("address", "TEXT", "Name server address."),
            ],
        ),
        table(
            "dns_search_domains",
            "One row per search domain in a node's resolver configuration.",
            &[
                NODE_ID,
                ("position", "INTEGER", "Order of use, from 1."),
                ("domain", "TEXT", "Search domain."),
            ],
        ),
        table(
            "scheduled_tasks",
            "One row per cron entry or systemd timer.",
            &[
                NODE_ID,
                ("key", "TEXT", "Item key: source:identity."),
                ("kind", "TEXT", "cron or systemd-timer."),
                ("schedule", "TEXT", "Schedule expression as written."),
                ("command", "TEXT", "Command or unit to run."),
                ("user", "TEXT", "User the task runs as."),
                ("source", "TEXT", "File the task is defined in."),
            ],
        ),
        table(
            "tracked_files",
            "One row per tracked configuration file.",
            &[
                NODE_ID,
                ("path", "TEXT", "Absolute path."),
                ("file_exists", "INTEGER", "1 if the file exists, else 0."),
                ("sha256", "TEXT", "SHA-256 of the contents, lower-case hex."),
                ("size", "INTEGER", "Size, bytes."),
                ("mode", "TEXT", "Permission bits in octal, for example 0644."),
                ("uid", "INTEGER", "Owner user id."),
                ("gid", "INTEGER", "Owner group id."),
                ("mtime", "INTEGER", "Modification time, Unix seconds."),
                ("content", "TEXT", "Text contents with secret values redacted, for text files up to 64 KiB."),
            ],
        ),
        table(
            "collector_errors",
            "One row per problem a collector met on a node at its last collection.",
            &[
                NODE_ID,
                ("key", "TEXT", "Item key: collector:path."),
                ("collector", "TEXT", "Collector name (packages.dpkg, os, ...)."),
                ("path", "TEXT", "Path that was being read, if any."),
                ("message", "TEXT", "What went wrong."),
            ],
        ),
        table(
            "compliance",
            "One row per policy check a node evaluated, as the node recorded it. Each node evaluates its tenant's policies against its own facts after every collection and whenever the policies change.",
            &[
                NODE_ID,
                ("policy", "TEXT", "Policy name."),
                ("check_name", "TEXT", "Check name within the policy."),
                ("severity", "TEXT", "low, medium, high or critical."),
                ("status", "TEXT", "pass, fail, or error when the query could not run."),
                ("failing_count", "INTEGER", "Rows the check's query returned."),
                ("failing_rows", "TEXT", "JSON array of the first 50 failing rows, each an object of column to value."),
                ("error", "TEXT", "Why the query could not run, for error."),
            ],
        ),
        table(
            "changes",
            "One row per fact that one change of a node added, removed or changed: the node's \
             history, as `fleetmesh history` prints it. Within one change, rowid order is the \
             order of its facts. Values are JSON text; use json_extract(old_value, '$') for the \
             plain value. Tracked file contents are stored as line edits only: a changed \
             `content` field has NULL old_value and new_value, and a tracked file that appears \
             or disappears is stored without its content, which is in lines. \
             `fleetmesh up --history-retention` deletes rows older than its window.",
            &[
                NODE_ID,
                ("seq", "INTEGER", "The node's sequence number of the change, from 1."),
                ("time", "INTEGER", "Commit time of the change, Unix seconds, by the node's clock."),
                ("change_hash", "TEXT", "Automerge hash of the change, lower-case hex."),
                ("kind", "TEXT", "Fact kind: a section of the facts (packages, os, tracked_files, block_devices, ...), identity or compliance."),
                ("item", "TEXT", "Item within the kind: a collection key (openssl:amd64, /etc/ssh/sshd_config) or a field of a single-valued section (kernel_release)."),
                ("field", "TEXT", "Field within the item, dotted for nested fields; NULL when the whole item was added or removed."),
                ("action", "TEXT", "added, removed or changed."),
                ("old_value", "TEXT", "Value before the change as JSON; NULL for added facts and for tracked file contents."),
                ("new_value", "TEXT", "Value after the change as JSON; NULL for removed facts and for tracked file contents."),
                ("lines", "TEXT", "For text that changed, the differing lines as a JSON array of {op, line, text}: op is - for a line of the old text and + for a line of the new text, line counts from 1 in that text; NULL otherwise."),
            ],
        ),
    ]
}

/// Renders [`schema`] as the Markdown page docs/schema.md.
pub fn schema_markdown() -> String {
    let mut out = String::from(
        "# Fact tables\n\n\
         `fleetmesh query` runs one read-only SQL statement (SQLite dialect) over these tables. \
         Every node keeps them for its whole tenant, so the same query gives the same rows on \
         any node once changes have spread. Times are Unix seconds. A row's facts are the last \
         ones received from its node: compare `nodes.last_heard` and `nodes.last_change` with \
         the current time, or use `fleetmesh nodes --stale-after`, to tell current facts from \
         old ones.\n\n\
         Version functions: `deb_version_cmp(a, b)`, `rpm_version_cmp(a, b)` and \
         `version_cmp(a, b)` return -1, 0 or 1 as `a` is older than, equal to or newer than \
         `b`, and NULL if either is NULL. `deb_version_cmp` follows dpkg's rules, \
         `rpm_version_cmp` follows rpm's rules (a missing release sorts before any release), \
         and `version_cmp` follows dpkg's rules with `^` sorting as in rpm.\n\n\
         ```sql\n\
         SELECT n.hostname, p.full_version\n\
         FROM packages p JOIN nodes n USING (node_id)\n\
         WHERE p.name = 'openssl' AND deb_version_cmp(p.full_version, '3.0.13') < 0;\n\
         ```\n\n\
         This page is generated from `fleetmesh_node::query::schema()`; a test fails when \
         they differ.\n",
    );
    for table in schema() {
        out.push_str(&format!("\n## {}\n\n{}\n\n", table.name, table.description));
        out.push_str("| column | type | meaning |\n| --- | --- | --- |\n");
        for column in &table.columns {
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                column.name,
                column.sql_type,
                column.description.replace('|', "\\|")
            ));
        }
    }
    out
}
