//! Reading systemd unit files and links, shared by the services and scheduled-task collectors.
//!
//! Unit directories are searched in systemd's order of precedence (`/etc`, `/run`,
//! `/usr/local/lib`, `/lib`, `/usr/lib`), and the first file of a name wins. Links in
//! `*.wants/` and `*.requires/` under `/etc` and `/run` are what `systemctl enable` creates, so
//! they decide the enabled state. A link may also be stored as a small file holding the target
//! path (see [`Context::read_link_like`]).
//!
//! NOTE: drop-in files (`unit.d/*.conf`) are not read, so a description or schedule changed by
//! a drop-in is reported as the main file has it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use fleetmesh_model::Facts;

use super::context::Context;
use super::Parsed;

/// Unit directories, highest precedence first. The flag is true where links enable units
/// (administrator and runtime directories) and false where they are vendor dependencies.
pub const UNIT_DIRS: [(&str, bool); 5] = [
    ("/etc/systemd/system", true),
    ("/run/systemd/system", true),
    ("/usr/local/lib/systemd/system", false),
    ("/lib/systemd/system", false),
    ("/usr/lib/systemd/system", false),
];

/// Unit types recorded as services; devices, scopes and slices exist only at run time.
pub const UNIT_SUFFIXES: [&str; 8] = [
    ".service",
    ".socket",
    ".timer",
    ".path",
    ".target",
    ".mount",
    ".automount",
    ".swap",
];

/// Largest unit file read (1 MiB); real ones are a few KiB.
const UNIT_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// Kind of entry found under a unit name in a unit directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitSource {
    /// A unit file, parsed.
    File(UnitFile),
    /// A link to `/dev/null` or an empty file: the unit is masked.
    Masked,
    /// A link to another name (`sshd.service -> ssh.service`).
    Alias(String),
    /// A link to a unit file of the same name kept elsewhere (`systemctl link`).
    Linked(String),
}

/// A unit found in the unit directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitEntry {
    /// Path of the file or link on the machine (not the host path under the root).
    pub path: String,
    /// Kind of entry at the path.
    pub source: UnitSource,
}

/// Units and enabling links found under the root.
#[derive(Clone, Debug, Default)]
pub struct UnitScan {
    /// Units by name; the entry from the directory with the highest precedence.
    pub units: BTreeMap<String, UnitEntry>,
    /// Names linked from `*.wants/` or `*.requires/` in `/etc/systemd/system`.
    pub enabled: BTreeSet<String>,
    /// Names linked only from such directories under `/run/systemd/system`.
    pub enabled_runtime: BTreeSet<String>,
    /// Whether any unit directory exists.
    pub any_dir: bool,
}

/// A parsed unit file: sections in file order, each with its assignments in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitFile {
    /// `(section name, [(key, value)])` pairs.
    pub sections: Vec<(String, Vec<(String, String)>)>,
}

impl UnitFile {
    /// Returns the last value of `key` in `section`, as systemd applies for single-value keys.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.get_all(section, key).last().copied()
    }

    /// Returns every value of `key` in `section`, in file order.
    pub fn get_all(&self, section: &str, key: &str) -> Vec<&str> {
        self.sections
            .iter()
            .filter(|(name, _)| name == section)
            .flat_map(|(_, entries)| entries.iter())
            .filter(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// Returns whether the `[Install]` section names a way to enable the unit.
    pub fn has_install_info(&self) -> bool {
        [
            "WantedBy",
            "RequiredBy",
            "UpheldBy",
            "Alias",
            "Also",
            "DefaultInstance",
        ]
        .iter()
        .any(|key| {
            self.get_all("Install", key)
                .iter()
                .any(|value| !value.trim().is_empty())
        })
    }
}

/// Parses a unit file in systemd's INI dialect: `[Section]` headers, `Key=Value` lines, `#`
/// and `;` comments, and lines continued with a trailing backslash.
pub fn parse_unit_file(text: &str) -> Parsed<UnitFile> {
    let mut parsed = Parsed::<UnitFile>::default();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let mut line = line.trim().to_string();
        while line.ends_with('\\') {
            line.pop();
            line.truncate(line.trim_end().len());
            match lines.next() {
                Some((_, next)) => {
                    line.push(' ');
                    line.push_str(next.trim());
                }
                None => break,
            }
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            parsed.value.sections.push((name.to_string(), Vec::new()));
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            parsed.problems.push(format!(
                "line {}: expected Key=Value or [Section]",
                index + 1
            ));
            continue;
        };
        let Some((_, entries)) = parsed.value.sections.last_mut() else {
            parsed.problems.push(format!(
                "line {}: assignment before the first section",
                index + 1
            ));
            continue;
        };
        entries.push((key.trim().to_string(), value.trim().to_string()));
    }
    parsed
}

/// Returns whether `name` is a unit name of a recorded type.
pub fn is_unit_name(name: &str) -> bool {
    !name.starts_with('.')
        && UNIT_SUFFIXES
            .iter()
            .any(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
}

/// Returns the template of an instance name (`getty@tty1.service` -> `getty@.service`).
pub fn template_of(name: &str) -> Option<String> {
    let (prefix, rest) = name.split_once('@')?;
    let (instance, suffix) = rest.rsplit_once('.')?;
    (!instance.is_empty()).then(|| format!("{prefix}@.{suffix}"))
}

/// Scans the unit directories under the root. `collector` names the error facts.
pub fn scan_units(ctx: &Context, facts: &mut Facts, collector: &str) -> UnitScan {
    let mut scan = UnitScan::default();
    let mut seen_dirs = BTreeSet::new();
    for (dir, enables) in UNIT_DIRS {
        // `/lib` is a link to `/usr/lib` on merged-/usr systems: read each directory once.
        let host_dir = ctx.resolve(dir);
        let Ok(real_dir) = fs::canonicalize(&host_dir) else {
            continue;
        };
        if !real_dir.is_dir() || !seen_dirs.insert(real_dir) {
            continue;
        }
        scan.any_dir = true;

        for name in ctx.list_dir(facts, collector, dir) {
            let path = format!("{dir}/{name}");
            if name.ends_with(".wants") || name.ends_with(".requires") {
                if enables {
                    for linked in ctx.list_dir(facts, collector, &path) {
                        if !is_unit_name(&linked) {
                            continue;
                        }
                        if dir.starts_with("/etc") {
                            scan.enabled.insert(linked);
                        } else if !scan.enabled.contains(&linked) {
                            scan.enabled_runtime.insert(linked);
                        }
                    }
                }
                continue;
            }
            if !is_unit_name(&name) || scan.units.contains_key(&name) {
                continue;
            }
            if let Some(source) = read_unit_source(ctx, facts, collector, &path, &name) {
                scan.units.insert(name, UnitEntry { path, source });
            }
        }
    }
    scan.enabled_runtime
        .retain(|name| !scan.enabled.contains(name));
    scan
}

fn read_unit_source(
    ctx: &Context,
    facts: &mut Facts,
    collector: &str,
    path: &str,
    name: &str,
) -> Option<UnitSource> {
    if let Some(target) = ctx.read_link_like(path) {
        if target == "/dev/null" {
            return Some(UnitSource::Masked);
        }
        let target_name = target.rsplit('/').next().unwrap_or("");
        if target_name == name {
            return Some(UnitSource::Linked(target));
        }
        return Some(UnitSource::Alias(target_name.to_string()));
    }
    let text = ctx.read_text_limited(facts, collector, path, UNIT_FILE_MAX_BYTES)?;
    if text.trim().is_empty() {
        return Some(UnitSource::Masked);
    }
    let unit = parse_unit_file(&text).into_value(facts, collector, path);
    Some(UnitSource::File(unit))
}

/// Reads the unit file that a [`UnitSource::Linked`] entry points to.
pub fn read_linked_unit(
    ctx: &Context,
    facts: &mut Facts,
    collector: &str,
    target: &str,
) -> Option<UnitFile> {
    let text = ctx.read_text_limited(facts, collector, target, UNIT_FILE_MAX_BYTES)?;
    Some(parse_unit_file(&text).into_value(facts, collector, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_file_sections_and_continuations() {
        let text = "[Unit]\nDescription=Test \\\n  service\n# comment\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n";
        let parsed = parse_unit_file(text);
        assert!(parsed.problems.is_empty());
        assert_eq!(
            parsed.value.get("Unit", "Description"),
            Some("Test service")
        );
        assert!(parsed.value.has_install_info());
    }

    #[test]
    fn unit_file_problems() {
        let parsed = parse_unit_file("Key=before\n[Unit]\nno equals\n");
        assert_eq!(parsed.problems.len(), 2);
    }

    #[test]
    fn unit_names_and_templates() {
        assert!(is_unit_name("ssh.service"));
        assert!(!is_unit_name("ssh.service.d"));
        assert!(!is_unit_name(".service"));
        assert_eq!(
            template_of("getty@tty1.service").as_deref(),
            Some("getty@.service")
        );
        assert_eq!(template_of("getty@.service"), None);
        assert_eq!(template_of("ssh.service"), None);
    }
}
