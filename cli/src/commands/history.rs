//! `fleetmesh history`: what each change of one node did, newest first, read from the
//! `changes` table. It opens the store read-only, so it works while the daemon runs.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use fleetmesh_model::membership::format_utc;
use fleetmesh_model::{Action, ChangeRecord, FactChange};
use fleetmesh_node::daemon::unix_now;
use fleetmesh_node::query;
use serde_json::Value as Json;

use super::read::{find_node, open};
use crate::times::parse_time;

/// Values longer than this many characters are cut in text output; `--json` prints them whole.
const VALUE_CHARS_MAX: usize = 200;

/// Characters of a change hash that text output prints.
const HASH_CHARS_PRINTED: usize = 12;

/// Options of `fleetmesh history`.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Node id, a unique prefix of one, or a hostname.
    node: String,

    /// Show changes committed at or after this time: a duration back from now (7d, 12h, 30m)
    /// or a UTC time (2026-12-01, 2026-12-01T10:00:00Z).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,

    /// Show changes committed at or before this time, in the same forms as --since.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,

    /// Show only facts under this path: a kind, then optionally an item and a field, such as
    /// packages/openssl or tracked_files/etc/ssh/sshd_config.
    #[arg(long, value_name = "PATH")]
    path: Option<String>,

    /// Print a JSON array of change records instead of text.
    #[arg(long)]
    json: bool,
}

/// Parses the value of a time option, naming the option in the error.
pub(crate) fn time_option(option: &str, text: &str, now: i64) -> anyhow::Result<i64> {
    parse_time(text, now).map_err(|err| anyhow::anyhow!("{option}: {err}"))
}

/// Parses the time of a state to read, which cannot lie in the future: a future time would
/// silently read the current state, and is most likely a typo.
pub(crate) fn past_time_option(option: &str, text: &str, now: i64) -> anyhow::Result<i64> {
    let time = time_option(option, text, now)?;
    if time > now {
        bail!(
            "{option} {text:?} is {}, in the future; pass a time up to now ({})",
            format_utc(time),
            format_utc(now)
        );
    }
    Ok(time)
}

/// Prints the changes of one node.
pub fn run(data_dir: &Path, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let now = unix_now();
    let since = match &args.since {
        Some(text) => Some(time_option("--since", text, now)?),
        None => None,
    };
    let until = match &args.until {
        Some(text) => Some(time_option("--until", text, now)?),
        None => None,
    };
    if let (Some(since), Some(until)) = (since, until) {
        if since > until {
            bail!(
                "--since {} is after --until {}; pass the earlier time to --since",
                format_utc(since),
                format_utc(until)
            );
        }
    }
    let path = args
        .path
        .as_deref()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty());

    let conn = open(data_dir)?;
    let has_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'changes'",
        [],
        |row| row.get(0),
    )?;
    if !has_table {
        bail!(
            "the store in {} has no changes table yet; start `fleetmesh up` once with this \
             version to build it",
            data_dir.display()
        );
    }
    let (summary, _) = find_node(&conn, &args.node)?;
    let records = query::node_history(&conn, &summary.node_id, since, until, path)?;

    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::to_string_pretty(&records)?;
        ignore_broken_pipe(writeln!(out, "{json}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() {
        let label = node_label(&summary.node_id, summary.hostname.as_deref());
        if args.since.is_some() || args.until.is_some() || path.is_some() {
            eprintln!(
                "no recorded change of {label} matches the given --since, --until and --path; \
                 with --history-retention, changes older than the window are no longer listed"
            );
        } else {
            eprintln!(
                "no change of {label} is recorded; the history retention may have deleted older ones"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    ignore_broken_pipe(write_records(&mut out, &records))?;
    Ok(ExitCode::SUCCESS)
}

/// Treats a closed standard output (`fleetmesh history NODE | head`) as a normal end.
pub(crate) fn ignore_broken_pipe(result: io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(err).context("writing to standard output failed"))
        }
        _ => Ok(()),
    }
}

fn write_records(out: &mut impl Write, records: &[ChangeRecord]) -> io::Result<()> {
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            writeln!(out)?;
        }
        let hash: String = record.hash.chars().take(HASH_CHARS_PRINTED).collect();
        let time = format_utc(record.time);
        writeln!(out, "{time}  seq {}  change {hash}", record.seq)?;
        for fact in &record.facts {
            write_fact(out, fact, true)?;
        }
    }
    Ok(())
}

/// Text naming a node in output: `hostname (node id)`, or the node id alone.
pub(crate) fn node_label(node_id: &str, hostname: Option<&str>) -> String {
    match hostname {
        Some(hostname) => format!("{hostname} ({node_id})"),
        None => node_id.to_string(),
    }
}

/// Writes one fact: its sign, name and values, then its changed lines, indented. With
/// `with_kind` false the kind is left out, for output already grouped by kind.
pub(crate) fn write_fact(
    out: &mut impl Write,
    fact: &FactChange,
    with_kind: bool,
) -> io::Result<()> {
    let mut name: Vec<&str> = Vec::new();
    if with_kind {
        name.push(&fact.kind);
    }
    name.extend(fact.item.as_deref());
    name.extend(fact.field.as_deref());
    let name = name.join(" ");
    let sign = fact.action.sign();

    // Changed text is shown by its lines, not as two whole texts.
    let values = if !fact.lines.is_empty() && fact.action == Action::Changed {
        String::new()
    } else {
        match (&fact.old, &fact.new) {
            (Some(old), Some(new)) => format!(" {} -> {}", render_value(old), render_value(new)),
            (Some(value), None) | (None, Some(value)) => format!(" {}", render_value(value)),
            (None, None) => String::new(),
        }
    };
    writeln!(out, "  {sign} {name}:{values}")?;
    for edit in &fact.lines {
        writeln!(out, "      {} line {}: {}", edit.op, edit.line, edit.text)?;
    }
    Ok(())
}

/// Renders a value for text output: a one-line string as it is, anything else as compact
/// JSON, cut after [`VALUE_CHARS_MAX`] characters.
fn render_value(value: &Json) -> String {
    let text = match value {
        Json::String(text) if !text.contains('\n') => text.clone(),
        other => other.to_string(),
    };
    if text.chars().count() <= VALUE_CHARS_MAX {
        return text;
    }
    let cut: String = text.chars().take(VALUE_CHARS_MAX).collect();
    format!("{cut}... (--json prints it whole)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn render_value_cuts_long_values() {
        assert_eq!(render_value(&json!("3.0.13-1")), "3.0.13-1");
        assert_eq!(render_value(&json!(1500)), "1500");
        assert_eq!(render_value(&json!("a\nb")), "\"a\\nb\"");
        let long = render_value(&json!("x".repeat(500)));
        assert!(long.starts_with(&"x".repeat(VALUE_CHARS_MAX)), "{long}");
        assert!(long.ends_with("(--json prints it whole)"), "{long}");
    }
}
