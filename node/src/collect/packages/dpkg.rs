//! dpkg: `/var/lib/dpkg/status` and the per-package files in `/var/lib/dpkg/status.d/` that
//! distroless images use instead.
//!
//! Only packages whose `Status` ends in `installed` are recorded (`dpkg -l` shows them as `ii`
//! or `hi`); removed packages that left configuration files behind are not. Files in
//! `status.d/` often carry no `Status` field, and there every stanza counts as installed.

use std::collections::BTreeMap;

use fleetmesh_model::facts::Package;
use fleetmesh_model::Facts;

use super::insert_all;
use crate::collect::context::Context;
use crate::collect::Parsed;

const NAME: &str = "packages.dpkg";
const STATUS: &str = "/var/lib/dpkg/status";
const STATUS_DIR: &str = "/var/lib/dpkg/status.d";

/// Adds the installed dpkg packages to `packages`.
pub fn collect(ctx: &Context, facts: &mut Facts, packages: &mut BTreeMap<String, Package>) {
    if let Some(text) = ctx.read_text(facts, NAME, STATUS) {
        let parsed = parse_status(&text, true).into_value(facts, NAME, STATUS);
        insert_all(packages, parsed);
    }
    for name in ctx.list_dir(facts, NAME, STATUS_DIR) {
        if name.starts_with('.') || name.ends_with(".md5sums") {
            continue;
        }
        let path = format!("{STATUS_DIR}/{name}");
        if let Some(text) = ctx.read_text(facts, NAME, &path) {
            let parsed = parse_status(&text, false).into_value(facts, NAME, &path);
            insert_all(packages, parsed);
        }
    }
}

/// Fields of one stanza that the inventory uses.
#[derive(Default)]
struct Stanza<'a> {
    first_line: usize,
    package: Option<&'a str>,
    status: Option<&'a str>,
    version: Option<&'a str>,
    architecture: Option<&'a str>,
    source: Option<&'a str>,
}

/// Parses a dpkg status file into its installed packages. With `require_status`, a stanza
/// without a `Status` field is a problem; without it, such a stanza counts as installed.
pub fn parse_status(text: &str, require_status: bool) -> Parsed<Vec<Package>> {
    let mut parsed = Parsed::<Vec<Package>>::default();
    let mut stanza: Option<Stanza> = None;

    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if let Some(done) = stanza.take() {
                finish_stanza(done, require_status, &mut parsed);
            }
            continue;
        }
        let current = stanza.get_or_insert_with(|| Stanza {
            first_line: index + 1,
            ..Stanza::default()
        });
        // Continuation lines (multi-line fields such as Description) start with white space.
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            parsed
                .problems
                .push(format!("line {}: expected Field: value", index + 1));
            continue;
        };
        let value = value.trim();
        match key {
            "Package" => current.package = Some(value),
            "Status" => current.status = Some(value),
            "Version" => current.version = Some(value),
            "Architecture" => current.architecture = Some(value),
            "Source" => current.source = Some(value),
            _ => {}
        }
    }
    if let Some(done) = stanza.take() {
        finish_stanza(done, require_status, &mut parsed);
    }
    parsed
}

fn finish_stanza(stanza: Stanza, require_status: bool, parsed: &mut Parsed<Vec<Package>>) {
    let line = stanza.first_line;
    let Some(name) = stanza.package.filter(|name| !name.is_empty()) else {
        parsed
            .problems
            .push(format!("stanza at line {line} has no Package field"));
        return;
    };
    let installed = match stanza.status {
        Some(status) => status.split_whitespace().nth(2) == Some("installed"),
        None if require_status => {
            parsed
                .problems
                .push(format!("package {name} at line {line} has no Status field"));
            return;
        }
        None => true,
    };
    if !installed {
        return;
    }
    let Some(full_version) = stanza.version.filter(|version| !version.is_empty()) else {
        parsed.problems.push(format!(
            "package {name} at line {line} has no Version field"
        ));
        return;
    };

    let (epoch, version) = split_epoch(full_version);
    // `Source: name (version)` names the source package and, when it differs, its version.
    let source = stanza
        .source
        .and_then(|source| source.split_whitespace().next())
        .filter(|source| *source != name)
        .map(str::to_string);
    parsed.value.push(Package {
        name: name.to_string(),
        version: version.to_string(),
        release: None,
        epoch,
        arch: stanza.architecture.map(str::to_string),
        source,
        manager: "dpkg".to_string(),
        install_time: None,
    });
}

/// Splits `epoch:version` into the numeric epoch and the rest. A prefix that is not a number
/// is left in the version.
pub fn split_epoch(version: &str) -> (Option<u64>, &str) {
    match version.split_once(':') {
        Some((epoch, rest)) => match epoch.parse() {
            Ok(epoch) => (Some(epoch), rest),
            Err(_) => (None, version),
        },
        None => (None, version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_stanzas() {
        let text = "Package: openssl\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl (3.0.11-1)\nVersion: 1:3.0.11-1~deb12u2\nDescription: x\n more\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nStatus: install ok installed\nVersion: 2\n";
        let parsed = parse_status(text, true);
        assert_eq!(parsed.value.len(), 1);
        let package = &parsed.value[0];
        assert_eq!(package.name, "openssl");
        assert_eq!(package.epoch, Some(1));
        assert_eq!(package.version, "3.0.11-1~deb12u2");
        assert_eq!(package.source, None);
        assert_eq!(package.key(), "openssl:amd64");
        assert_eq!(
            parsed.problems,
            vec!["stanza at line 13 has no Package field"]
        );
    }

    #[test]
    fn status_d_without_status_field() {
        let parsed = parse_status(
            "Package: base-files\nVersion: 12.4\nArchitecture: amd64\nSource: base\n",
            false,
        );
        assert_eq!(parsed.value.len(), 1);
        assert_eq!(parsed.value[0].source.as_deref(), Some("base"));
    }
}
