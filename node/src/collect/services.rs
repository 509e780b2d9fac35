//! Service manager units with their enabled state and, when systemd runs, their active state.
//!
//! The enabled state follows `systemctl is-enabled`:
//! - `masked`: the unit name is a link to `/dev/null` or an empty file;
//! - `alias`: the unit name is a link to another unit;
//! - `enabled`: a `*.wants/` or `*.requires/` link under `/etc/systemd/system` names the unit
//!   (`enabled-runtime` when the link is under `/run/systemd/system`);
//! - `disabled`: the unit has an `[Install]` section but no such link;
//! - `indirect`: a template unit with enabled instances;
//! - `static`: none of the above.
//!
//! The active state is asked of `systemctl` only on a live system where systemd runs
//! (`/run/systemd/system` exists). `service_manager` is `systemd`, `systemd (not running)` when
//! unit files exist but systemd was not asked, or `none`.
//!
//! NOTE: OpenRC and SysV init scripts are not read, so Alpine and other systems without systemd
//! report `none` and no services.

use std::collections::BTreeMap;
use std::time::Duration;

use fleetmesh_model::facts::Service;
use fleetmesh_model::Facts;

use super::context::Context;
use super::systemd::{self, UnitScan, UnitSource};
use crate::collect::add_error;

const NAME: &str = "services";

/// How long `systemctl list-units` may take.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(5);

/// Collects units into `facts.services` and names the service manager.
pub fn collect(ctx: &Context, facts: &mut Facts) {
    let scan = systemd::scan_units(ctx, facts, NAME);
    if !scan.any_dir {
        facts.service_manager = Some("none".to_string());
        return;
    }

    let mut services = services_from_scan(ctx, facts, &scan);

    let running = ctx.live() && ctx.resolve("/run/systemd/system").is_dir();
    if running {
        facts.service_manager = Some("systemd".to_string());
        match ctx.run_command(
            "systemctl",
            &[
                "list-units",
                "--all",
                "--plain",
                "--no-legend",
                "--no-pager",
            ],
            SYSTEMCTL_TIMEOUT,
        ) {
            Ok(output) => {
                for (unit, active) in parse_list_units(&output) {
                    if let Some(service) = services.get_mut(&unit) {
                        service.active = Some(active);
                    }
                }
            }
            Err(message) => add_error(facts, NAME, None, message),
        }
    } else {
        facts.service_manager = Some("systemd (not running)".to_string());
    }

    facts.services = services;
}

/// Builds service facts from the unit files and links found.
fn services_from_scan(
    ctx: &Context,
    facts: &mut Facts,
    scan: &UnitScan,
) -> BTreeMap<String, Service> {
    let mut services = BTreeMap::new();

    for (name, entry) in &scan.units {
        let mut service = Service {
            unit_file: Some(entry.path.clone()),
            ..Service::default()
        };
        let unit = match &entry.source {
            UnitSource::File(unit) => Some(unit.clone()),
            UnitSource::Linked(target) => {
                service.unit_file = Some(target.clone());
                systemd::read_linked_unit(ctx, facts, NAME, target)
            }
            UnitSource::Masked => {
                service.enabled = Some("masked".to_string());
                None
            }
            UnitSource::Alias(target) => {
                service.enabled = Some("alias".to_string());
                service.description = Some(format!("alias of {target}"));
                None
            }
        };
        if let Some(unit) = unit {
            service.description = unit.get("Unit", "Description").map(str::to_string);
            service.enabled = Some(enabled_state(name, unit.has_install_info(), scan).to_string());
        }
        services.insert(name.clone(), service);
    }

    // Enabled instances of templates (`getty@tty1.service`) have no file of their own.
    let linked = scan.enabled.iter().chain(scan.enabled_runtime.iter());
    for name in linked {
        if services.contains_key(name) {
            continue;
        }
        let template =
            systemd::template_of(name).and_then(|template| services.get(&template).cloned());
        let mut service = template.unwrap_or_default();
        service.enabled = Some(
            if scan.enabled.contains(name) {
                "enabled"
            } else {
                "enabled-runtime"
            }
            .to_string(),
        );
        services.insert(name.clone(), service);
    }
    services
}

fn enabled_state(name: &str, has_install: bool, scan: &UnitScan) -> &'static str {
    if scan.enabled.contains(name) {
        return "enabled";
    }
    if scan.enabled_runtime.contains(name) {
        return "enabled-runtime";
    }
    let is_template = name.contains("@.");
    if is_template {
        let instance_enabled = scan
            .enabled
            .iter()
            .chain(scan.enabled_runtime.iter())
            .any(|linked| systemd::template_of(linked).as_deref() == Some(name));
        if instance_enabled {
            return "indirect";
        }
    }
    if has_install {
        "disabled"
    } else {
        "static"
    }
}

/// Parses `systemctl list-units --plain --no-legend` output into (unit, active state) pairs.
pub fn parse_list_units(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let mut unit = fields.next()?;
            // Older versions mark failed units with a bullet even in plain mode.
            if !unit.contains('.') {
                unit = fields.next()?;
            }
            let _load = fields.next()?;
            let active = fields.next()?;
            Some((unit.to_string(), active.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_units_lines() {
        let output = "ssh.service loaded active running OpenBSD Secure Shell server\n\u{25cf} nginx.service loaded failed failed A web server\n";
        let units = parse_list_units(output);
        assert_eq!(units[0], ("ssh.service".to_string(), "active".to_string()));
        assert_eq!(
            units[1],
            ("nginx.service".to_string(), "failed".to_string())
        );
    }
}
