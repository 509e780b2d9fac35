//! pacman (Arch Linux): one `desc` file per package in `/var/lib/pacman/local/<name>-<version>/`,
//! with `%FIELD%` headers each followed by value lines and a blank line.
//!
//! `%VERSION%` is `[epoch:]pkgver-pkgrel`; it is split into epoch, version and release so that
//! [`Package::full_version`] prints it as pacman does. `%BASE%` names the source package and
//! `%INSTALLDATE%` the install time.

use std::collections::BTreeMap;

use fleetmesh_model::facts::Package;
use fleetmesh_model::Facts;

use super::dpkg::split_epoch;
use super::insert_all;
use crate::collect::add_error;
use crate::collect::context::Context;

const NAME: &str = "packages.pacman";
const LOCAL: &str = "/var/lib/pacman/local";

/// Largest `desc` file read (1 MiB).
const DESC_MAX_BYTES: u64 = 1024 * 1024;

/// Adds the installed pacman packages to `packages`.
pub fn collect(ctx: &Context, facts: &mut Facts, packages: &mut BTreeMap<String, Package>) {
    for entry in ctx.list_dir(facts, NAME, LOCAL) {
        if ctx.expired() {
            ctx.record_expired(facts, NAME, Some(LOCAL));
            return;
        }
        let path = format!("{LOCAL}/{entry}/desc");
        if !ctx.resolve(&format!("{LOCAL}/{entry}")).is_dir() {
            continue;
        }
        let Some(text) = ctx.read_text_limited(facts, NAME, &path, DESC_MAX_BYTES) else {
            continue;
        };
        match parse_desc(&text) {
            Ok(package) => insert_all(packages, vec![package]),
            Err(reason) => add_error(facts, NAME, Some(&path), reason),
        }
    }
}

/// Parses one pacman `desc` file.
pub fn parse_desc(text: &str) -> Result<Package, String> {
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    let mut current: Option<&str> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            current = None;
            continue;
        }
        if line.len() > 2 && line.starts_with('%') && line.ends_with('%') {
            current = Some(&line[1..line.len() - 1]);
            continue;
        }
        // Only the first value line of a field is needed.
        if let Some(field) = current.take() {
            fields.entry(field).or_insert(line);
        }
    }

    let name = fields.get("NAME").copied().ok_or("no %NAME% field")?;
    let full_version = fields
        .get("VERSION")
        .copied()
        .ok_or_else(|| format!("package {name} has no %VERSION% field"))?;
    let (epoch, rest) = split_epoch(full_version);
    let (version, release) = match rest.rsplit_once('-') {
        Some((version, release)) => (version, Some(release.to_string())),
        None => (rest, None),
    };
    let source = fields
        .get("BASE")
        .filter(|base| **base != name)
        .map(|base| base.to_string());
    Ok(Package {
        name: name.to_string(),
        version: version.to_string(),
        release,
        epoch,
        arch: fields.get("ARCH").map(|arch| arch.to_string()),
        source,
        manager: "pacman".to_string(),
        install_time: fields.get("INSTALLDATE").and_then(|date| date.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desc_fields() {
        let text = "%NAME%\nopenssh\n\n%VERSION%\n1:9.6p1-1\n\n%BASE%\nopenssh\n\n%ARCH%\nx86_64\n\n%INSTALLDATE%\n1700000000\n\n%DEPENDS%\nglibc\nzlib\n";
        let package = parse_desc(text).expect("valid desc");
        assert_eq!(package.full_version(), "1:9.6p1-1");
        assert_eq!(package.release.as_deref(), Some("1"));
        assert_eq!(package.source, None);
        assert_eq!(package.install_time, Some(1_700_000_000));
        assert!(parse_desc("%VERSION%\n1\n").is_err());
    }
}
