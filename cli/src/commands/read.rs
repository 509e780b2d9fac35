//! Read commands: `nodes`, `show`, `query`, `schema`. They open the store read-only, so they
//! work while the daemon runs and while it is stopped.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use fleetmesh_model::{DocId, NodeId, TenantId};
use fleetmesh_node::daemon::unix_now;
use fleetmesh_node::query::{self, Format, NodeSummary, QueryOptions};
use fleetmesh_node::store::{self, Store};

use crate::times::parse_duration;

/// Options of `fleetmesh nodes`.
#[derive(Args, Debug)]
pub struct NodesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,

    /// Flag nodes not heard from within this time (for example 30m, 6h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    stale_after: Option<Duration>,
}

/// Options of `fleetmesh show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Node id, a unique prefix of one, or a hostname.
    node: String,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Output formats of `fleetmesh query`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// One JSON array of objects.
    Json,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

/// Options of `fleetmesh query`.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// One read-only SQL statement, for example "SELECT hostname FROM nodes".
    sql: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,

    /// Shorthand for --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,

    /// Time limit for the query (for example 10s, 2m).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,

    /// Maximum number of rows to print; a note says when the result was cut.
    #[arg(long, default_value_t = 10_000, value_name = "ROWS")]
    limit: usize,
}

/// Options of `fleetmesh schema`.
#[derive(Args, Debug)]
pub struct SchemaArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Opens the store's fact tables read-only, after checking that the data directory contains a
/// fleetmesh store.
pub(crate) fn open(data_dir: &Path) -> anyhow::Result<rusqlite::Connection> {
    // Checks that this is a fleetmesh store before the query layer opens it.
    drop(Store::open_read_only(data_dir)?);
    Ok(query::open_read_only(&data_dir.join(store::DB_FILE))?)
}

fn format_time(time: Option<i64>) -> String {
    match time {
        Some(t) if t > 0 => {
            let age = unix_now().saturating_sub(t);
            match age {
                a if a < 120 => format!("{a}s ago"),
                a if a < 7200 => format!("{}m ago", a / 60),
                a if a < 172_800 => format!("{}h ago", a / 3600),
                a => format!("{}d ago", a / 86_400),
            }
        }
        _ => "never".to_string(),
    }
}

/// Prints every node in the local replica.
pub fn nodes(data_dir: &Path, args: NodesArgs) -> anyhow::Result<ExitCode> {
    let conn = open(data_dir)?;
    let nodes = query::list_nodes(&conn, args.stale_after, unix_now())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "NODE".to_string(),
        "HOSTNAME".to_string(),
        "TENANT".to_string(),
        "SITE".to_string(),
        "OS".to_string(),
        "PACKAGES".to_string(),
        "LAST CHANGE".to_string(),
        "STATUS".to_string(),
    ]];
    for node in &nodes {
        let status = if node.connected {
            "connected"
        } else if node.stale == Some(true) {
            "stale"
        } else {
            "-"
        };
        rows.push([
            node.node_id.clone(),
            node.hostname.clone().unwrap_or_default(),
            node.tenant.clone().unwrap_or_default(),
            node.site.clone().unwrap_or_default(),
            node.os_pretty_name.clone().unwrap_or_default(),
            node.package_count.to_string(),
            format_time(node.last_change),
            status.to_string(),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Finds one node by node id, unique node id prefix or host name, and returns its summary and
/// the id of its document.
pub(crate) fn find_node(
    conn: &rusqlite::Connection,
    selector: &str,
) -> anyhow::Result<(NodeSummary, DocId)> {
    let summary = query::show_node(conn, selector)?;
    let node: NodeId = summary
        .node_id
        .parse()
        .with_context(|| format!("the store lists an invalid node id {}", summary.node_id))?;
    let tenant: TenantId = summary
        .tenant
        .clone()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("node {node} has an invalid tenant in the store"))?;
    Ok((summary, DocId::node(tenant, node)))
}

/// Prints one node's identity and facts.
pub fn show(data_dir: &Path, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let conn = open(data_dir)?;
    let (summary, doc_id) = find_node(&conn, &args.node)?;
    let data = store::Store::open_read_only(data_dir)?;
    let doc = store::read_document(&data, &doc_id)?;
    let document = doc.to_json(None)?;
    if args.json {
        let out = serde_json::json!({ "summary": summary, "document": document });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let facts = doc.facts(None)?;
    println!("node:        {}", summary.node_id);
    println!(
        "hostname:    {}",
        summary.hostname.clone().unwrap_or_default()
    );
    println!(
        "tenant/site: {}/{}",
        summary.tenant.clone().unwrap_or_default(),
        summary.site.clone().unwrap_or_default()
    );
    println!(
        "os:          {}",
        facts.os.pretty_name.clone().unwrap_or_default()
    );
    println!(
        "kernel:      {}",
        facts.os.kernel_release.clone().unwrap_or_default()
    );
    println!(
        "cpu:         {}",
        facts.hardware.cpu_model.clone().unwrap_or_default()
    );
    println!(
        "memory:      {} MiB",
        facts.hardware.memory_total_kib.unwrap_or(0) / 1024
    );
    println!("last change: {}", format_time(summary.last_change));
    println!("packages:    {}", facts.packages.len());
    println!("interfaces:");
    for (name, interface) in &facts.interfaces {
        let addresses: Vec<&str> = interface.addresses.keys().map(String::as_str).collect();
        println!(
            "  {name:<12} {:<18} {}",
            interface.mac.clone().unwrap_or_default(),
            addresses.join(" ")
        );
    }
    println!("services:    {}", facts.services.len());
    println!("users:       {}", facts.users.len());
    println!("(use --json for every fact)");
    Ok(ExitCode::SUCCESS)
}

/// Runs one read-only SQL statement.
pub fn query(data_dir: &Path, args: QueryArgs) -> anyhow::Result<ExitCode> {
    let conn = open(data_dir)?;
    let options = QueryOptions {
        timeout: args.timeout,
        row_limit: args.limit,
    };
    let result = query::run_query(&conn, &args.sql, &options)?;
    let format = if args.json {
        Format::Json
    } else {
        match args.format {
            OutputFormat::Table => Format::Table,
            OutputFormat::Json => Format::Json,
            OutputFormat::Csv => Format::Csv,
            OutputFormat::Ndjson => Format::Ndjson,
        }
    };
    print!("{}", query::format_result(&result, format));
    if result.truncated && !matches!(format, Format::Table) {
        eprintln!(
            "note: output cut at {} rows; raise --limit to see more",
            args.limit
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the query schema.
pub fn schema(args: SchemaArgs) -> anyhow::Result<ExitCode> {
    let tables = query::schema();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&tables)?);
        return Ok(ExitCode::SUCCESS);
    }
    for table in &tables {
        println!("{} — {}", table.name, table.description);
        for column in &table.columns {
            println!(
                "  {:<20} {:<8} {}",
                column.name, column.sql_type, column.description
            );
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}
