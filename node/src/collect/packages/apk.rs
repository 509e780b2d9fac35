//! apk (Alpine): `/lib/apk/db/installed`, one blank-line separated record per package with
//! single-letter fields (`P:` name, `V:` version, `A:` architecture, `o:` origin package).
//!
//! The version is kept whole (`1.36.1-r5`) because apk treats the `-rN` package release as
//! part of it; the format records no install time.

use std::collections::BTreeMap;

use fleetmesh_model::facts::Package;
use fleetmesh_model::Facts;

use super::insert_all;
use crate::collect::context::Context;
use crate::collect::Parsed;

const NAME: &str = "packages.apk";
const INSTALLED: &str = "/lib/apk/db/installed";

/// Adds the installed apk packages to `packages`.
pub fn collect(ctx: &Context, facts: &mut Facts, packages: &mut BTreeMap<String, Package>) {
    if let Some(text) = ctx.read_text(facts, NAME, INSTALLED) {
        insert_all(
            packages,
            parse_installed(&text).into_value(facts, NAME, INSTALLED),
        );
    }
}

/// Parses an apk `installed` database.
pub fn parse_installed(text: &str) -> Parsed<Vec<Package>> {
    let mut parsed = Parsed::<Vec<Package>>::default();
    let mut current: Option<(usize, Package)> = None;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if let Some((first_line, package)) = current.take() {
                finish(first_line, package, &mut parsed);
            }
            continue;
        }
        let (_, package) = current.get_or_insert_with(|| {
            let package = Package {
                manager: "apk".to_string(),
                ..Package::default()
            };
            (index + 1, package)
        });
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "P" => package.name = value.to_string(),
            "V" => package.version = value.to_string(),
            "A" => package.arch = Some(value.to_string()).filter(|arch| !arch.is_empty()),
            "o" => package.source = Some(value.to_string()).filter(|origin| !origin.is_empty()),
            _ => {}
        }
    }
    if let Some((first_line, package)) = current.take() {
        finish(first_line, package, &mut parsed);
    }
    parsed
}

fn finish(first_line: usize, mut package: Package, parsed: &mut Parsed<Vec<Package>>) {
    if package.name.is_empty() || package.version.is_empty() {
        parsed.problems.push(format!(
            "record at line {first_line} has no P: name or V: version"
        ));
        return;
    }
    if package.source.as_deref() == Some(package.name.as_str()) {
        package.source = None;
    }
    parsed.value.push(package);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_records() {
        let text = "C:Q1abc=\nP:busybox\nV:1.36.1-r5\nA:x86_64\no:busybox\nF:bin\nR:busybox\n\nP:ssl_client\nV:1.36.1-r5\nA:x86_64\no:busybox\n\nV:1\n";
        let parsed = parse_installed(text);
        assert_eq!(parsed.value.len(), 2);
        assert_eq!(parsed.value[0].key(), "busybox:x86_64");
        assert_eq!(parsed.value[0].source, None);
        assert_eq!(parsed.value[1].source.as_deref(), Some("busybox"));
        assert_eq!(parsed.problems.len(), 1);
    }
}
