//! Policies, baselines and compliance: `policy apply|list|remove|test`, `baseline
//! set|assign|list|remove`, `drift` and `compliance`.
//!
//! The writing commands run on an operator node of the tenant. They sign a change to the tenant's
//! policy document and store it. The running daemon passes it on within a second, and every node
//! of the tenant then evaluates the policies against its own facts. The reading commands open
//! the store read-only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use fleetmesh_model::membership::format_utc;
use fleetmesh_model::policy::{
    Assignment, Baseline, CheckStatus, Policy, PolicyDocument, RecordKind,
};
use fleetmesh_model::{Action, DocId, DocKind, FactChange, NodeDocument, NodeId, TenantId};
use fleetmesh_node::keyfile;
use fleetmesh_node::policy::{self as evaluation};
use fleetmesh_node::query::{self, Format, QueryOptions, QueryResult};
use fleetmesh_node::store::{self, Store};
use rusqlite::Connection;
use serde_json::{json, Value as Json};

use super::diff::{first_change_time, last_change_of};
use super::history::past_time_option;
use super::{operator, read};

/// Options of `fleetmesh policy`.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Write a policy file's checks into the tenant's policy document (operator nodes).
    Apply(ApplyArgs),
    /// List the policies and their checks.
    List(ListArgs),
    /// Remove a policy from the tenant's policy document (operator nodes).
    Remove(RemoveArgs),
    /// Evaluate a policy file against one node's facts in the local replica, without writing.
    Test(TestArgs),
}

#[derive(Args, Debug)]
struct ApplyArgs {
    /// Policy file in TOML (see `fleetmesh policy apply --help` and docs/policies.md).
    file: PathBuf,
    /// Tenant whose policy document receives it [default: this operator's own tenant].
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Only this tenant [default: every tenant in the local replica].
    #[arg(long)]
    tenant: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RemoveArgs {
    /// Name of the policy or baseline.
    name: String,
    /// Tenant whose policy document contains it [default: this operator's own tenant].
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Args, Debug)]
struct TestArgs {
    /// Policy file in TOML.
    file: PathBuf,
    /// Node id, unique prefix or hostname [default: this node].
    #[arg(long)]
    node: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Options of `fleetmesh baseline`.
#[derive(Args, Debug)]
pub struct BaselineArgs {
    #[command(subcommand)]
    command: BaselineCommand,
}

#[derive(Subcommand, Debug)]
enum BaselineCommand {
    /// Record a node's configuration, now or at an earlier time, as a standard (operator nodes).
    Set(SetArgs),
    /// Assign a baseline to the nodes a SQL condition selects (operator nodes).
    Assign(AssignArgs),
    /// List baselines and their assignments.
    List(ListArgs),
    /// Remove a baseline and its assignment (operator nodes).
    Remove(RemoveArgs),
}

#[derive(Args, Debug)]
struct SetArgs {
    /// Baseline name: 1 to 64 characters from a-z, 0-9, '.', '_' and '-'.
    name: String,
    /// Node id, unique prefix or hostname whose configuration becomes the standard.
    #[arg(long = "from", value_name = "NODE")]
    from: String,
    /// Record the node's configuration as it was at this time: a duration back from now (7d,
    /// 12h) or a UTC time (2026-12-01, 2026-12-01T10:00:00Z) [default: its current state].
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Tenant whose policy document receives it [default: this operator's own tenant].
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Args, Debug)]
struct AssignArgs {
    /// Baseline name.
    name: String,
    /// Condition over the `nodes` table, for example "os_id = 'debian' AND site = 'york'".
    #[arg(long = "where", value_name = "SQL")]
    where_sql: String,
    /// Tenant whose policy document contains the baseline [default: this operator's own tenant].
    #[arg(long)]
    tenant: Option<String>,
}

/// Options of `fleetmesh drift`.
#[derive(Args, Debug)]
pub struct DriftArgs {
    /// Only this baseline.
    #[arg(long)]
    baseline: Option<String>,
    /// Only this tenant [default: every tenant in the local replica].
    #[arg(long)]
    tenant: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Output formats of `fleetmesh compliance`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ReportFormat {
    /// Aligned columns.
    Table,
    /// One JSON array of objects.
    Json,
    /// RFC 4180 CSV with a header row, for auditors.
    Csv,
}

/// Options of `fleetmesh compliance`.
#[derive(Args, Debug)]
pub struct ComplianceArgs {
    /// Only this tenant [default: every tenant in the local replica].
    #[arg(long)]
    tenant: Option<String>,
    /// Only this policy.
    #[arg(long)]
    policy: Option<String>,
    /// Only checks that do not pass.
    #[arg(long)]
    failing: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,
    /// Shorthand for --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
}

/// Runs `fleetmesh policy`.
pub fn policy(data_dir: &Path, args: PolicyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PolicyCommand::Apply(args) => apply(data_dir, args),
        PolicyCommand::List(args) => list_policies(data_dir, args),
        PolicyCommand::Remove(args) => remove(data_dir, args, RecordKind::Policy, "policy remove"),
        PolicyCommand::Test(args) => test(data_dir, args),
    }
}

/// Runs `fleetmesh baseline`.
pub fn baseline(data_dir: &Path, args: BaselineArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BaselineCommand::Set(args) => set_baseline(data_dir, args),
        BaselineCommand::Assign(args) => assign(data_dir, args),
        BaselineCommand::List(args) => list_baselines(data_dir, args),
        BaselineCommand::Remove(args) => {
            let name = args.name.clone();
            let tenant = args.tenant.clone();
            remove(data_dir, args, RecordKind::Baseline, "baseline remove")?;
            // The assignment goes with its baseline; a missing one is fine.
            remove(
                data_dir,
                RemoveArgs { name, tenant },
                RecordKind::Assignment,
                "baseline remove",
            )
        }
    }
}

fn apply(data_dir: &Path, args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let policy = evaluation::load_policy_file(&args.file)?;
    let mut op = operator::open(data_dir, args.tenant.as_deref(), "policy apply")?;
    let checks = policy.checks.len();
    match write_record(&mut op, RecordKind::Policy, &policy.name, &policy)? {
        written @ (Written::New | Written::Replaced) => {
            let replaced = match written {
                Written::Replaced => ", replacing the previous version",
                _ => "",
            };
            println!(
                "policy {} with {checks} {} written to tenant {}{replaced}",
                policy.name,
                plural(checks, "check", "checks"),
                op.tenant
            );
            eprintln!("A running node passes it on within a second; every node of the tenant then evaluates it.");
        }
        Written::Unchanged => println!(
            "policy {} is already in tenant {} as written",
            policy.name, op.tenant
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(
    data_dir: &Path,
    args: RemoveArgs,
    kind: RecordKind,
    command: &str,
) -> anyhow::Result<ExitCode> {
    let mut op = operator::open(data_dir, args.tenant.as_deref(), command)?;
    let mut doc = policy_document(&op.store, &op.tenant)?;
    match doc.remove(kind, &args.name, op.now, &op.key)? {
        Some(change) => {
            op.store.insert_local_tenant_change(&change)?;
            println!(
                "removed {} {} from tenant {}",
                kind_name(kind),
                args.name,
                op.tenant
            );
        }
        None if kind == RecordKind::Assignment => {}
        None => anyhow::bail!(
            "tenant {} has no {} named {:?}; `fleetmesh {} list` shows the names",
            op.tenant,
            kind_name(kind),
            args.name,
            kind_name(kind)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn set_baseline(data_dir: &Path, args: SetArgs) -> anyhow::Result<ExitCode> {
    let mut op = operator::open(data_dir, args.tenant.as_deref(), "baseline set")?;
    let conn = read::open(data_dir)?;
    let (node, mut doc) = node_document(&conn, &args.from)?;
    let (facts, taken_at) = match &args.at {
        None => (doc.facts(None)?, doc.last_change_time().unwrap_or(op.now)),
        Some(text) => {
            let time = past_time_option("--at", text, op.now)?;
            let heads = doc.heads_at_time(time);
            let Some((_, committed)) = last_change_of(&mut doc, &heads) else {
                match first_change_time(&mut doc) {
                    Some(first) => bail!(
                        "node {} has no recorded state at {}: its first change is from {}; pass a later --at",
                        args.from,
                        format_utc(time),
                        format_utc(first)
                    ),
                    None => bail!(
                        "node {} has no recorded facts yet; wait for its first change to arrive",
                        args.from
                    ),
                }
            };
            (doc.facts(Some(&heads))?, committed)
        }
    };
    let baseline = Baseline {
        name: args.name.clone(),
        source_node: node.to_string(),
        source_hostname: facts.system.hostname.clone(),
        taken_at,
        facts: Baseline::project(&facts),
    };
    let packages = facts.packages.len();
    match write_record(&mut op, RecordKind::Baseline, &args.name, &baseline)? {
        written @ (Written::New | Written::Replaced) => println!(
            "baseline {} {} from {} ({packages} packages, state of {}) in tenant {}",
            args.name,
            if written == Written::Replaced {
                "replaced, now recorded"
            } else {
                "recorded"
            },
            baseline.source_hostname,
            format_utc(taken_at),
            op.tenant
        ),
        Written::Unchanged => println!("baseline {} already holds this configuration", args.name),
    }
    Ok(ExitCode::SUCCESS)
}

fn assign(data_dir: &Path, args: AssignArgs) -> anyhow::Result<ExitCode> {
    let mut op = operator::open(data_dir, args.tenant.as_deref(), "baseline assign")?;
    let doc = policy_document(&op.store, &op.tenant)?;
    let (baselines, _) = doc.records::<Baseline>(RecordKind::Baseline);
    if !baselines.contains_key(&args.name) {
        anyhow::bail!(
            "tenant {} has no baseline named {:?}; record one with `fleetmesh baseline set {} --from NODE`",
            op.tenant,
            args.name,
            args.name
        );
    }
    let conn = read::open(data_dir)?;
    let selected = assigned_nodes(&conn, &op.tenant, &args.where_sql).with_context(|| {
        format!(
            "--where {:?} is not a valid condition on the nodes table",
            args.where_sql
        )
    })?;
    let assignment = Assignment {
        baseline: args.name.clone(),
        where_sql: args.where_sql.clone(),
    };
    match write_record(&mut op, RecordKind::Assignment, &args.name, &assignment)? {
        Written::New | Written::Replaced => println!(
            "baseline {} assigned to nodes where {} ({} in the local replica now)",
            args.name,
            args.where_sql,
            selected.len()
        ),
        Written::Unchanged => println!("baseline {} already has this assignment", args.name),
    }
    Ok(ExitCode::SUCCESS)
}

/// Outcome of [`write_record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    /// No record of that name existed.
    New,
    /// A different record of that name was replaced.
    Replaced,
    /// The document already contained exactly this record.
    Unchanged,
}

/// Writes one record and stores the change.
fn write_record<T: serde::Serialize>(
    op: &mut operator::Operator,
    kind: RecordKind,
    name: &str,
    record: &T,
) -> anyhow::Result<Written> {
    let mut doc = policy_document(&op.store, &op.tenant)?;
    let existed = doc.records::<Json>(kind).0.contains_key(name);
    match doc.put(kind, name, record, op.now, &op.key)? {
        Some(change) => {
            op.store.insert_local_tenant_change(&change)?;
            Ok(if existed {
                Written::Replaced
            } else {
                Written::New
            })
        }
        None => Ok(Written::Unchanged),
    }
}

/// Returns `singular` for a count of 1 and `several` otherwise.
fn plural(count: usize, singular: &'static str, several: &'static str) -> &'static str {
    if count == 1 {
        singular
    } else {
        several
    }
}

fn policy_document(store: &Store, tenant: &TenantId) -> anyhow::Result<PolicyDocument> {
    let id = DocId::tenant_doc(DocKind::Policy, tenant.clone());
    let changes = store.document_changes(&id)?;
    Ok(PolicyDocument::from_changes(
        tenant.clone(),
        changes.iter(),
    )?)
}

/// Reads the policy documents of every tenant in the replica, or of `only`.
fn read_policy_documents(
    data_dir: &Path,
    only: Option<&str>,
) -> anyhow::Result<Vec<(TenantId, PolicyDocument)>> {
    let conn = Store::open_read_only(data_dir)?;
    let only = only.map(TenantId::new).transpose()?;
    let mut out = Vec::new();
    for id in store::list_documents(&conn, DocKind::Policy)? {
        if only.as_ref().is_some_and(|tenant| tenant != &id.tenant) {
            continue;
        }
        let changes = store::read_changes(&conn, &id)?;
        out.push((
            id.tenant.clone(),
            PolicyDocument::from_changes(id.tenant.clone(), changes.iter())?,
        ));
    }
    Ok(out)
}

fn list_policies(data_dir: &Path, args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut listed = Vec::new();
    for (tenant, doc) in read_policy_documents(data_dir, args.tenant.as_deref())? {
        let (policies, bad) = doc.records::<Policy>(RecordKind::Policy);
        for record in bad {
            eprintln!(
                "warning: tenant {tenant}: record {} does not decode: {}",
                record.key, record.reason
            );
        }
        listed.extend(
            policies
                .into_values()
                .map(|policy| (tenant.clone(), policy)),
        );
    }
    if args.json {
        let out: Vec<Json> = listed
            .iter()
            .map(|(tenant, policy)| json!({"tenant": tenant.as_str(), "policy": policy}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if listed.is_empty() {
        println!("no policies; write one with `fleetmesh policy apply FILE`");
    }
    for (tenant, policy) in &listed {
        println!("{tenant}/{}: {}", policy.name, policy.description);
        for check in &policy.checks {
            println!(
                "  {:<8} {}: {}",
                check.severity.as_str(),
                check.name,
                check.description
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list_baselines(data_dir: &Path, args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut listed = Vec::new();
    for (tenant, doc) in read_policy_documents(data_dir, args.tenant.as_deref())? {
        let (baselines, _) = doc.records::<Baseline>(RecordKind::Baseline);
        let (assignments, _) = doc.records::<Assignment>(RecordKind::Assignment);
        for (name, baseline) in baselines {
            let assigned = assignments.get(&name).map(|a| a.where_sql.clone());
            listed.push((tenant.clone(), baseline, assigned));
        }
    }
    if args.json {
        let out: Vec<Json> = listed
            .iter()
            .map(|(tenant, baseline, assigned)| {
                json!({
                    "tenant": tenant.as_str(),
                    "name": baseline.name,
                    "source_node": baseline.source_node,
                    "source_hostname": baseline.source_hostname,
                    "taken_at": baseline.taken_at,
                    "assigned_where": assigned,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if listed.is_empty() {
        println!("no baselines; record one with `fleetmesh baseline set NAME --from NODE`");
    }
    for (tenant, baseline, assigned) in &listed {
        println!(
            "{tenant}/{}: from {} at {}; assigned to: {}",
            baseline.name,
            baseline.source_hostname,
            format_utc(baseline.taken_at),
            assigned.as_deref().unwrap_or("(no nodes)")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn test(data_dir: &Path, args: TestArgs) -> anyhow::Result<ExitCode> {
    let policy = evaluation::load_policy_file(&args.file)?;
    let conn = read::open(data_dir)?;
    let node = match &args.node {
        Some(selector) => query::show_node(&conn, selector)?.node_id,
        None => {
            let key = keyfile::load(&data_dir.join(keyfile::KEY_FILE))
                .context("this data directory has no node key; pass --node NODE")?;
            keyfile::node_id(&key).to_string()
        }
    };
    let facts = evaluation::node_fact_tables(&data_dir.join(store::DB_FILE), &node)?;
    let policies = BTreeMap::from([(policy.name.clone(), policy)]);
    let results = evaluation::evaluate(&facts, &policies);
    let failing = results.values().any(|r| r.status != CheckStatus::Pass);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for result in results.values() {
            println!(
                "{:<5} {:<8} {}/{} ({} failing rows){}",
                result.status.as_str(),
                result.severity.as_str(),
                result.policy,
                result.check,
                result.failing_count,
                result
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            for row in &result.failing_rows {
                println!("      {row}");
            }
        }
    }
    Ok(if failing {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `fleetmesh drift`: every assigned node's deviations from its baselines. Exits 1 when
/// any node deviates.
pub fn drift(data_dir: &Path, args: DriftArgs) -> anyhow::Result<ExitCode> {
    let conn = read::open(data_dir)?;
    let mut reports = Vec::new();
    let documents = read_policy_documents(data_dir, args.tenant.as_deref())?;
    if let Some(only) = &args.baseline {
        let known = documents.iter().any(|(_, doc)| {
            doc.records::<Baseline>(RecordKind::Baseline)
                .0
                .contains_key(only)
        });
        if !known {
            anyhow::bail!(
                "no baseline named {only:?} in the local replica; `fleetmesh baseline list` shows the names"
            );
        }
    }
    for (tenant, doc) in documents {
        let (baselines, _) = doc.records::<Baseline>(RecordKind::Baseline);
        let (assignments, _) = doc.records::<Assignment>(RecordKind::Assignment);
        for (name, assignment) in &assignments {
            if args.baseline.as_ref().is_some_and(|only| only != name) {
                continue;
            }
            let Some(baseline) = baselines.get(name) else {
                continue;
            };
            let nodes = assigned_nodes(&conn, &tenant, &assignment.where_sql).with_context(|| {
                format!("the assignment of baseline {name} in tenant {tenant} has an invalid condition; fix it with `fleetmesh baseline assign {name} --where SQL`")
            })?;
            for node in nodes {
                let (_, doc) = node_document(&conn, &node)?;
                let facts = doc.facts(None)?;
                let deviations = baseline.drift(&facts);
                reports.push(json!({
                    "tenant": tenant.as_str(),
                    "baseline": name,
                    "node_id": node,
                    "hostname": facts.system.hostname,
                    "deviations": deviations,
                }));
            }
        }
    }
    if let Some(only) = &args.baseline {
        if reports.is_empty() {
            eprintln!("note: baseline {only} is assigned to no node in the local replica");
        }
    }
    let deviating = reports
        .iter()
        .filter(|r| r["deviations"].as_array().is_some_and(|d| !d.is_empty()))
        .count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            let deviations: Vec<FactChange> =
                serde_json::from_value(report["deviations"].clone()).unwrap_or_default();
            let label = format!(
                "{} ({}) against baseline {}",
                report["hostname"].as_str().unwrap_or(""),
                report["node_id"].as_str().unwrap_or(""),
                report["baseline"].as_str().unwrap_or("")
            );
            if deviations.is_empty() {
                println!("{label}: matches");
                continue;
            }
            println!(
                "{label}: {} {}",
                deviations.len(),
                plural(deviations.len(), "deviation", "deviations")
            );
            for change in &deviations {
                print_deviation(change);
            }
        }
        println!(
            "{} {} checked, {deviating} {}",
            reports.len(),
            plural(reports.len(), "node", "nodes"),
            plural(deviating, "deviates", "deviate")
        );
    }
    Ok(if deviating > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_deviation(change: &FactChange) {
    let what = match change.action {
        Action::Removed => "missing",
        Action::Added => "extra",
        Action::Changed => "differs",
    };
    let value = |v: &Option<Json>| v.as_ref().map(short_value).unwrap_or_default();
    let detail = match change.action {
        Action::Removed => value(&change.old),
        Action::Added => value(&change.new),
        Action::Changed => format!("{} -> {}", value(&change.old), value(&change.new)),
    };
    println!("  {what:<8} {:<48} {detail}", change.path());
    for line in &change.lines {
        println!("      {}{}", line.op, line.text);
    }
}

/// Shows a value on one line: text without quotes, anything else as compact JSON, cut at 80
/// characters.
fn short_value(value: &Json) -> String {
    let text = match value {
        Json::String(text) if text.contains('\n') => format!("({} lines)", text.lines().count()),
        Json::String(text) => text.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(77).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// Runs `fleetmesh compliance`: the fleet's policy results. Exits 1 when a check fails or
/// cannot run on some node.
pub fn compliance(data_dir: &Path, args: ComplianceArgs) -> anyhow::Result<ExitCode> {
    let conn = read::open(data_dir)?;
    let documents = read_policy_documents(data_dir, args.tenant.as_deref())?;

    // Every check every node of the tenant should report, so that missing results show.
    let mut expected: BTreeMap<(String, String, String), (String, String)> = BTreeMap::new();
    for (tenant, doc) in &documents {
        let (policies, _) = doc.records::<Policy>(RecordKind::Policy);
        for policy in policies.values() {
            if args
                .policy
                .as_ref()
                .is_some_and(|only| only != &policy.name)
            {
                continue;
            }
            for check in &policy.checks {
                expected.insert(
                    (tenant.to_string(), policy.name.clone(), check.name.clone()),
                    (
                        check.severity.as_str().to_string(),
                        check.description.clone(),
                    ),
                );
            }
        }
    }
    if let Some(only) = &args.policy {
        if expected.is_empty() {
            anyhow::bail!(
                "no policy named {only:?} in the local replica; `fleetmesh policy list` shows the names"
            );
        }
    }
    let format = match (args.json, args.format) {
        (true, _) | (false, ReportFormat::Json) => Format::Json,
        (false, ReportFormat::Table) => Format::Table,
        (false, ReportFormat::Csv) => Format::Csv,
    };
    let nodes = tenant_nodes(&conn)?;
    let recorded = recorded_results(&conn)?;

    let columns = [
        "node_id",
        "hostname",
        "tenant",
        "site",
        "policy",
        "check",
        "severity",
        "status",
        "failing_count",
        "failing_rows",
        "error",
        "description",
    ];
    let mut rows: Vec<Vec<Json>> = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for ((tenant, policy, check), (severity, description)) in &expected {
        for node in nodes.iter().filter(|n| &n.tenant == tenant) {
            let result = recorded.get(&(node.node_id.clone(), policy.clone(), check.clone()));
            let (status, count, failing, error) = match result {
                Some(r) => (
                    r.status.as_str(),
                    json!(r.failing_count),
                    r.failing_rows.clone(),
                    json!(r.error),
                ),
                None => ("pending", Json::Null, Json::Array(Vec::new()), Json::Null),
            };
            *counts.entry(status).or_default() += 1;
            if args.failing && status == "pass" {
                continue;
            }
            rows.push(vec![
                json!(node.node_id),
                json!(node.hostname),
                json!(tenant),
                json!(node.site),
                json!(policy),
                json!(check),
                json!(severity),
                json!(status),
                count,
                if matches!(format, Format::Table) {
                    json!(short_value(&failing))
                } else {
                    failing
                },
                error,
                json!(description),
            ]);
        }
    }
    let result = QueryResult {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
        truncated: false,
    };
    print!("{}", query::format_result(&result, format));
    let summary: Vec<String> = ["pass", "fail", "error", "pending"]
        .iter()
        .map(|status| format!("{} {status}", counts.get(status).copied().unwrap_or(0)))
        .collect();
    eprintln!(
        "{} results: {}",
        counts.values().sum::<usize>(),
        summary.join(", ")
    );
    if expected.is_empty() {
        eprintln!(
            "note: no policies in the local replica; write one with `fleetmesh policy apply FILE`"
        );
    }
    let bad = counts.get("fail").copied().unwrap_or(0) + counts.get("error").copied().unwrap_or(0);
    Ok(if bad > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

struct TenantNode {
    node_id: String,
    hostname: Option<String>,
    tenant: String,
    site: Option<String>,
}

fn tenant_nodes(conn: &Connection) -> anyhow::Result<Vec<TenantNode>> {
    let mut stmt = conn.prepare(
        "SELECT node_id, hostname, tenant, site FROM nodes WHERE tenant IS NOT NULL
         ORDER BY tenant, hostname, node_id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(TenantNode {
            node_id: row.get(0)?,
            hostname: row.get(1)?,
            tenant: row.get(2)?,
            site: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

struct Recorded {
    status: CheckStatus,
    failing_count: i64,
    failing_rows: Json,
    error: Option<String>,
}

fn recorded_results(
    conn: &Connection,
) -> anyhow::Result<BTreeMap<(String, String, String), Recorded>> {
    let mut stmt = conn.prepare(
        "SELECT node_id, policy, check_name, status, failing_count, failing_rows, error
         FROM compliance",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            (
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ),
            row.get::<_, String>(3)?,
            row.get::<_, i64>(4)?,
            row.get::<_, String>(5)?,
            row.get::<_, Option<String>>(6)?,
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (key, status, failing_count, failing_rows, error) = row?;
        let status = match status.as_str() {
            "pass" => CheckStatus::Pass,
            "fail" => CheckStatus::Fail,
            _ => CheckStatus::Error,
        };
        let failing_rows = serde_json::from_str(&failing_rows).unwrap_or(Json::Array(Vec::new()));
        out.insert(
            key,
            Recorded {
                status,
                failing_count,
                failing_rows,
                error,
            },
        );
    }
    Ok(out)
}

/// Returns the node ids of `tenant` that `where_sql` selects from the `nodes` table.
fn assigned_nodes(
    conn: &Connection,
    tenant: &TenantId,
    where_sql: &str,
) -> anyhow::Result<Vec<String>> {
    // Tenant names are limited to [a-z0-9._-], so quoting them inline is safe.
    let sql = format!(
        "SELECT node_id FROM nodes WHERE tenant = '{}' AND ({where_sql}) ORDER BY hostname, node_id",
        tenant.as_str()
    );
    let result = query::run_query(conn, &sql, &QueryOptions::default())?;
    Ok(result
        .rows
        .into_iter()
        .filter_map(|row| row.first().and_then(|v| v.as_str().map(str::to_string)))
        .collect())
}

/// Finds a node by selector and rebuilds its document from the store.
fn node_document(conn: &Connection, selector: &str) -> anyhow::Result<(NodeId, NodeDocument)> {
    let (_, id) = read::find_node(conn, selector)?;
    let doc = store::read_document(conn, &id)?;
    Ok((NodeId(id.key), doc))
}

fn kind_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Policy => "policy",
        RecordKind::Baseline => "baseline",
        RecordKind::Assignment => "assignment",
    }
}
