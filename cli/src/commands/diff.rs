//! `fleetmesh diff`: how a node's facts differ between two times, or how two nodes differ.
//!
//! The states come from the node documents, rebuilt from the signed changes on a read-only
//! connection, so `diff` reaches back to a node's first change even where the history
//! retention deleted the rows of the `changes` table. Times map to the last change a node
//! committed at or before them, by that node's clock.
//!
//! Exit status as diff(1) has it: 0 when nothing differs, 1 when something does, 2 on error.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use fleetmesh_model::history::{diff_values, is_machine_specific};
use fleetmesh_model::membership::format_utc;
use fleetmesh_model::{ChangeHash, FactChange, Facts, NodeDocument};
use fleetmesh_node::daemon::unix_now;
use fleetmesh_node::query::NodeSummary;
use fleetmesh_node::store::{self, Store};
use serde_json::{json, Value as Json};

use super::history::{ignore_broken_pipe, node_label, past_time_option, write_fact};
use super::read::{find_node, open};

/// Options of `fleetmesh diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// Node id, a unique prefix of one, or a hostname.
    node: String,

    /// A second node to compare NODE with, named the same ways.
    other: Option<String>,

    /// Compare the state at this time with the state now (with a second node: compare both
    /// nodes as they were at this time). A duration back from now (7d, 12h, 30m) or a UTC time
    /// (2026-12-01, 2026-12-01T10:00:00Z).
    #[arg(long, value_name = "TIME", conflicts_with_all = ["from", "to"])]
    at: Option<String>,

    /// Compare the state at this time with the state at --to, in the same forms as --at.
    #[arg(long, value_name = "TIME", conflicts_with = "other")]
    from: Option<String>,

    /// Second time for --from [default: now].
    #[arg(long, value_name = "TIME", requires = "from")]
    to: Option<String>,

    /// Compare only these fact kinds, comma-separated, such as packages,services.
    #[arg(long, value_name = "KINDS", value_delimiter = ',')]
    kind: Vec<String>,

    /// With two nodes, also compare facts that differ between machines by nature: identity,
    /// host names, machine id, boot time, hardware serial, MAC and IP addresses, free space.
    #[arg(long, requires = "other")]
    all: bool,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// One side of a comparison: a node's document read at one state.
struct Side {
    summary: NodeSummary,
    /// The requested time; `None` means now.
    requested: Option<i64>,
    /// Sequence number and commit time of the last change in this state.
    last_change: Option<(u64, i64)>,
    facts: Json,
}

impl Side {
    /// Reads `doc` as it was at `requested` (Unix seconds), or as it is now for `None`.
    fn read(
        summary: &NodeSummary,
        doc: &mut NodeDocument,
        requested: Option<i64>,
    ) -> anyhow::Result<Side> {
        let label = node_label(&summary.node_id, summary.hostname.as_deref());
        let heads = match requested {
            Some(time) => doc.heads_at_time(time),
            None => doc.heads(),
        };
        if heads.is_empty() {
            let first = first_change_time(doc);
            match (requested, first) {
                (Some(time), Some(first)) => bail!(
                    "node {label} has no recorded state at {}: its first change is from {}; pass a later time",
                    format_utc(time),
                    format_utc(first)
                ),
                _ => bail!("node {label} has no recorded facts yet; wait for its first change to arrive"),
            }
        }
        let facts = doc.to_json(Some(&heads))?;
        Ok(Side {
            summary: summary.clone(),
            requested,
            last_change: last_change_of(doc, &heads),
            facts,
        })
    }

    fn describe(&self) -> String {
        let label = node_label(&self.summary.node_id, self.summary.hostname.as_deref());
        let when = match self.requested {
            Some(time) => format!("at {}", format_utc(time)),
            None => "now".to_string(),
        };
        match self.last_change {
            Some((seq, time)) => format!("{label} {when} (seq {seq} from {})", format_utc(time)),
            None => format!("{label} {when}"),
        }
    }

    fn to_json(&self) -> Json {
        json!({
            "node_id": self.summary.node_id,
            "hostname": self.summary.hostname,
            "at": self.requested,
            "seq": self.last_change.map(|(seq, _)| seq),
            "last_change": self.last_change.map(|(_, time)| time),
        })
    }
}

/// Returns the commit time of the document's first change.
pub(crate) fn first_change_time(doc: &mut NodeDocument) -> Option<i64> {
    doc.changes().iter().map(|change| change.timestamp()).min()
}

/// Returns the sequence number and commit time of the newest change among `heads`.
pub(crate) fn last_change_of(doc: &mut NodeDocument, heads: &[ChangeHash]) -> Option<(u64, i64)> {
    doc.changes()
        .iter()
        .filter(|change| heads.contains(&change.hash()))
        .map(|change| (change.seq(), change.timestamp()))
        .max()
}

/// Compares states of one node or of two nodes.
pub fn run(data_dir: &Path, args: DiffArgs) -> anyhow::Result<ExitCode> {
    let now = unix_now();
    let kinds = kind_filter(&args.kind)?;

    let (from_time, to_time) = match (&args.at, &args.from, &args.other) {
        (Some(at), _, Some(_)) => {
            let at = past_time_option("--at", at, now)?;
            (Some(at), Some(at))
        }
        (Some(at), _, None) => (Some(past_time_option("--at", at, now)?), None),
        (None, Some(from), _) => {
            let from = past_time_option("--from", from, now)?;
            let to = match &args.to {
                Some(to) => Some(past_time_option("--to", to, now)?),
                None => None,
            };
            if let Some(to) = to.filter(|&to| to < from) {
                bail!(
                    "--from {} is after --to {}; swap the two times",
                    format_utc(from),
                    format_utc(to)
                );
            }
            (Some(from), to)
        }
        (None, None, Some(_)) => (None, None),
        (None, None, None) => bail!(
            "nothing to compare {:?} with; pass --at TIME, --from TIME [--to TIME], or a second node",
            args.node
        ),
    };

    let conn = open(data_dir)?;
    let store_conn = Store::open_read_only(data_dir)?;
    let (summary, doc_id) = find_node(&conn, &args.node)?;
    let mut doc = store::read_document(&store_conn, &doc_id)?;
    let (old, new) = match &args.other {
        None => {
            let old = Side::read(&summary, &mut doc, from_time)?;
            let new = Side::read(&summary, &mut doc, to_time)?;
            (old, new)
        }
        Some(other) => {
            let (other_summary, other_id) = find_node(&conn, other)?;
            if other_summary.node_id == summary.node_id {
                bail!(
                    "{:?} and {other:?} name the same node {}; pass two different nodes",
                    args.node,
                    summary.node_id
                );
            }
            let mut other_doc = store::read_document(&store_conn, &other_id)?;
            let old = Side::read(&summary, &mut doc, from_time)?;
            let new = Side::read(&other_summary, &mut other_doc, to_time)?;
            (old, new)
        }
    };

    let two_nodes = args.other.is_some();
    let skip_machine_facts = two_nodes && !args.all;
    let skip = |path: &[String]| skip_machine_facts && is_machine_specific(path);
    let mut grouped: BTreeMap<String, Vec<FactChange>> = BTreeMap::new();
    for fact in diff_values(Some(&old.facts), Some(&new.facts), &skip) {
        if kinds
            .as_ref()
            .is_none_or(|kinds| kinds.contains(&fact.kind))
        {
            grouped.entry(fact.kind.clone()).or_default().push(fact);
        }
    }
    let count: usize = grouped.values().map(Vec::len).sum();

    let mut out = std::io::stdout().lock();
    let written = if args.json {
        let json = json!({
            "from": old.to_json(),
            "to": new.to_json(),
            "differences": grouped,
        });
        serde_json::to_string_pretty(&json)
            .map_err(io::Error::from)
            .and_then(|text| writeln!(out, "{text}"))
    } else {
        write_differences(&mut out, &old, &new, &grouped, count)
    };
    ignore_broken_pipe(written)?;
    Ok(if count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn write_differences(
    out: &mut impl Write,
    old: &Side,
    new: &Side,
    grouped: &BTreeMap<String, Vec<FactChange>>,
    count: usize,
) -> io::Result<()> {
    writeln!(out, "--- {}", old.describe())?;
    writeln!(out, "+++ {}", new.describe())?;
    for (kind, facts) in grouped {
        writeln!(out, "{kind}:")?;
        for fact in facts {
            write_fact(out, fact, false)?;
        }
    }
    match count {
        0 => writeln!(out, "no differences"),
        1 => writeln!(out, "1 difference"),
        n => writeln!(out, "{n} differences"),
    }
}

/// Returns the kinds `--kind` names, or `None` for every kind. An unknown kind is an error, so
/// a typo does not read as "no differences".
fn kind_filter(kinds: &[String]) -> anyhow::Result<Option<BTreeSet<String>>> {
    if kinds.is_empty() {
        return Ok(None);
    }
    let known = known_kinds()?;
    let mut out = BTreeSet::new();
    for kind in kinds {
        let kind = kind.trim();
        if !known.contains(kind) {
            let listed: Vec<&str> = known.iter().map(String::as_str).collect();
            bail!(
                "unknown fact kind {kind:?} in --kind; the kinds are {}",
                listed.join(", ")
            );
        }
        out.insert(kind.to_string());
    }
    Ok(Some(out))
}

/// Lists the fact kinds: the sections of the facts, block devices (reported apart from the
/// rest of the hardware), identity and compliance.
fn known_kinds() -> anyhow::Result<BTreeSet<String>> {
    let facts =
        serde_json::to_value(Facts::default()).context("describing the fact kinds failed")?;
    let mut kinds: BTreeSet<String> = facts
        .as_object()
        .map(|sections| sections.keys().cloned().collect())
        .unwrap_or_default();
    kinds.extend(["block_devices", "identity", "compliance"].map(String::from));
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_filter_accepts_known_kinds() {
        let kinds = kind_filter(&["packages".into(), "services".into()])
            .expect("known kinds")
            .expect("a filter");
        assert_eq!(kinds.len(), 2);
        assert!(kinds.contains("packages"));
        assert!(kind_filter(&[]).expect("no filter").is_none());
        assert!(kind_filter(&["block_devices".into()]).is_ok());
    }

    #[test]
    fn kind_filter_rejects_a_typo() {
        let err = kind_filter(&["package".into()]).unwrap_err().to_string();
        assert!(err.contains("\"package\""), "{err}");
        assert!(err.contains("packages"), "{err}");
    }
}
