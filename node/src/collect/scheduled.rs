//! Scheduled tasks: cron tables and systemd timers.
//!
//! System tables (`/etc/crontab`, `/etc/cron.d/*`) name the user in the sixth field. User
//! tables run as the user the file is named after. They are in `/var/spool/cron/crontabs` on
//! Debian, `/var/spool/cron` on Red Hat, `/var/spool/cron/tabs` on SUSE and `/etc/crontabs` on
//! Alpine. Scripts in
//! `/etc/cron.{hourly,daily,weekly,monthly}` are listed with the matching `@` schedule, because
//! run-parts runs them from the system table or anacron.
//!
//! Tasks are keyed by `source:schedule command`, so an edit elsewhere in a file does not rename
//! the other tasks in it. Every timer unit is listed with the calendar and monotonic settings
//! of its `[Timer]` section; whether it is enabled is in the services facts.

use std::collections::BTreeMap;

use fleetmesh_model::facts::ScheduledTask;
use fleetmesh_model::Facts;

use super::context::Context;
use super::systemd::{self, UnitSource};
use super::Parsed;

const NAME: &str = "scheduled";

/// Largest cron table read (1 MiB).
const CRONTAB_MAX_BYTES: u64 = 1024 * 1024;

/// Directories of per-user cron tables, by distribution.
const USER_SPOOLS: [&str; 4] = [
    "/var/spool/cron/crontabs",
    "/var/spool/cron/tabs",
    "/var/spool/cron",
    "/etc/crontabs",
];

/// `[Timer]` settings that define when a timer fires.
const TIMER_SETTINGS: [&str; 6] = [
    "OnCalendar",
    "OnBootSec",
    "OnStartupSec",
    "OnActiveSec",
    "OnUnitActiveSec",
    "OnUnitInactiveSec",
];

/// One entry of a cron table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CronEntry {
    /// The five time fields or an `@` keyword, as written.
    pub schedule: String,
    /// User to run as; system tables only.
    pub user: Option<String>,
    /// Command line.
    pub command: String,
}

/// Collects cron entries and timers into `facts.scheduled_tasks`.
pub fn collect(ctx: &Context, facts: &mut Facts) {
    let mut tasks = BTreeMap::new();

    // System tables with a user field.
    let mut system_tables = vec!["/etc/crontab".to_string()];
    for name in ctx.list_dir(facts, NAME, "/etc/cron.d") {
        if is_cron_file_name(&name) {
            system_tables.push(format!("/etc/cron.d/{name}"));
        }
    }
    for path in &system_tables {
        if let Some(text) = ctx.read_text_limited(facts, NAME, path, CRONTAB_MAX_BYTES) {
            let entries = parse_crontab(&text, true).into_value(facts, NAME, path);
            insert_cron_entries(&mut tasks, path, entries, None);
        }
    }

    // Per-user tables.
    for spool in USER_SPOOLS {
        for user in ctx.list_dir(facts, NAME, spool) {
            let path = format!("{spool}/{user}");
            if !is_cron_file_name(&user) || !ctx.resolve(&path).is_file() {
                continue;
            }
            if let Some(text) = ctx.read_text_limited(facts, NAME, &path, CRONTAB_MAX_BYTES) {
                let entries = parse_crontab(&text, false).into_value(facts, NAME, &path);
                insert_cron_entries(&mut tasks, &path, entries, Some(&user));
            }
        }
    }

    // run-parts directories.
    for period in ["hourly", "daily", "weekly", "monthly"] {
        let dir = format!("/etc/cron.{period}");
        for script in ctx.list_dir(facts, NAME, &dir) {
            if !is_cron_file_name(&script) || script == "placeholder" {
                continue;
            }
            let path = format!("{dir}/{script}");
            let task = ScheduledTask {
                kind: "cron".to_string(),
                schedule: format!("@{period}"),
                command: path.clone(),
                user: Some("root".to_string()),
                source: dir.clone(),
            };
            tasks.insert(format!("{path}:@{period}"), task);
        }
    }

    // systemd timers.
    let scan = systemd::scan_units(ctx, facts, NAME);
    for (name, entry) in &scan.units {
        if !name.ends_with(".timer") {
            continue;
        }
        let UnitSource::File(unit) = &entry.source else {
            continue;
        };
        let schedule: Vec<String> = TIMER_SETTINGS
            .iter()
            .flat_map(|key| {
                unit.get_all("Timer", key)
                    .into_iter()
                    .filter(|value| !value.is_empty())
                    .map(move |value| format!("{key}={value}"))
            })
            .collect();
        let target = unit
            .get("Timer", "Unit")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}.service", name.trim_end_matches(".timer")));
        let user = match scan.units.get(&target).map(|entry| &entry.source) {
            Some(UnitSource::File(service)) => service.get("Service", "User").map(str::to_string),
            _ => None,
        };
        let task = ScheduledTask {
            kind: "systemd-timer".to_string(),
            schedule: schedule.join("; "),
            command: target,
            user,
            source: entry.path.clone(),
        };
        tasks.insert(format!("{}:{name}", entry.path), task);
    }

    facts.scheduled_tasks = tasks;
}

fn insert_cron_entries(
    tasks: &mut BTreeMap<String, ScheduledTask>,
    source: &str,
    entries: Vec<CronEntry>,
    file_user: Option<&str>,
) {
    for entry in entries {
        let base = format!("{source}:{} {}", entry.schedule, entry.command);
        // The same line twice in one file is two tasks.
        let mut key = base.clone();
        let mut copy = 1;
        while tasks.contains_key(&key) {
            copy += 1;
            key = format!("{base} #{copy}");
        }
        let task = ScheduledTask {
            kind: "cron".to_string(),
            schedule: entry.schedule,
            command: entry.command,
            user: entry.user.or_else(|| file_user.map(str::to_string)),
            source: source.to_string(),
        };
        tasks.insert(key, task);
    }
}

/// Returns whether cron reads a file of this name. Editor backups, package manager leftovers
/// and hidden files are skipped, as cron and run-parts skip them.
fn is_cron_file_name(name: &str) -> bool {
    !name.starts_with('.')
        && !name.ends_with('~')
        && !name.contains(".dpkg-")
        && !name.ends_with(".rpmsave")
        && !name.ends_with(".rpmnew")
        && !name.ends_with(".rpmorig")
        && !name.ends_with(".swp")
}

/// Parses a cron table. `system` tables have a user field after the schedule. Environment
/// assignments and comments are skipped; lines too short to hold a schedule and command are
/// problems.
pub fn parse_crontab(text: &str, system: bool) -> Parsed<Vec<CronEntry>> {
    let mut parsed = Parsed::<Vec<CronEntry>>::default();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || is_assignment(line) {
            continue;
        }
        let schedule_fields = if line.starts_with('@') { 1 } else { 5 };
        let needed = schedule_fields + usize::from(system) + 1;
        let (fields, rest) = split_fields(line, needed - 1);
        if fields.len() < needed - 1 || rest.is_empty() {
            parsed.problems.push(format!(
                "line {number}: expected a schedule{} and a command",
                if system { ", a user" } else { "" }
            ));
            continue;
        }
        let schedule = fields[..schedule_fields].join(" ");
        let user = system.then(|| fields[schedule_fields].to_string());
        parsed.value.push(CronEntry {
            schedule,
            user,
            command: rest.to_string(),
        });
    }
    parsed
}

/// Returns whether a cron line sets an environment variable (`NAME=value`).
fn is_assignment(line: &str) -> bool {
    let Some((name, _)) = line.split_once('=') else {
        return false;
    };
    let name = name.trim();
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Takes `count` white-space separated fields and returns them with the rest of the line.
fn split_fields(line: &str, count: usize) -> (Vec<&str>, &str) {
    let mut fields = Vec::with_capacity(count);
    let mut rest = line;
    while fields.len() < count {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    (fields, rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_crontab_lines() {
        let text = "SHELL=/bin/sh\n# m h dom mon dow user command\n17 * * * * root cd / && run-parts --report /etc/cron.hourly\n@reboot root /usr/local/bin/start\nbad line\n";
        let parsed = parse_crontab(text, true);
        assert_eq!(parsed.value.len(), 2);
        assert_eq!(parsed.value[0].schedule, "17 * * * *");
        assert_eq!(parsed.value[0].user.as_deref(), Some("root"));
        assert_eq!(
            parsed.value[0].command,
            "cd / && run-parts --report /etc/cron.hourly"
        );
        assert_eq!(parsed.value[1].schedule, "@reboot");
        assert_eq!(parsed.problems.len(), 1);
    }

    #[test]
    fn user_crontab_lines() {
        let parsed = parse_crontab("*/5 * * * * /home/a/bin/sync --all\n", false);
        assert_eq!(parsed.value[0].schedule, "*/5 * * * *");
        assert_eq!(parsed.value[0].user, None);
        assert_eq!(parsed.value[0].command, "/home/a/bin/sync --all");
    }
}
