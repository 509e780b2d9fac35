//! The `fleetmesh` command: runs a node (`up`) and reads the local replica (`nodes`, `show`,
//! `query`, `schema`, `history`, `diff`), or prints this machine's facts without a mesh
//! (`collect`).
//!
//! Every failure ends in one line on standard error that names the value and the fix, and a
//! non-zero exit status.

mod commands;
mod paths;
mod times;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Configuration inventory for MSP fleets, replicated peer to peer.
#[derive(Parser, Debug)]
#[command(name = "fleetmesh", version, about, long_about = None)]
struct Cli {
    /// Data directory holding the node key and store [default: $XDG_DATA_HOME/fleetmesh, or
    /// /var/lib/fleetmesh as root].
    #[arg(long, global = true, env = "FLEETMESH_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: collect this machine's facts and sync with peers.
    Up(commands::up::UpArgs),
    /// List every node in the local replica.
    Nodes(commands::read::NodesArgs),
    /// Print one node's facts.
    Show(commands::read::ShowArgs),
    /// Run a read-only SQL query over the fleet's fact tables.
    Query(commands::read::QueryArgs),
    /// Print the tables and columns that `query` can read.
    Schema(commands::read::SchemaArgs),
    /// Print what each change of one node did, newest first.
    History(commands::history::HistoryArgs),
    /// Compare a node's facts at two times, or two nodes; exit status 1 when they differ.
    Diff(commands::diff::DiffArgs),
    /// Print this machine's facts without joining a mesh.
    Collect(commands::collect::CollectArgs),
    /// Create the fleet root key and join tokens, or revoke members.
    Fleet(commands::fleet::FleetArgs),
    /// Enroll this node into a fleet with a join token.
    Join(commands::join::JoinArgs),
    /// Write, list, remove or try out policies of compliance checks.
    Policy(commands::policy::PolicyArgs),
    /// Record a node's configuration as a standard and assign it to nodes.
    Baseline(commands::policy::BaselineArgs),
    /// List how nodes deviate from their assigned baselines; exit 1 when any does.
    Drift(commands::policy::DriftArgs),
    /// Print the fleet's policy results; exit 1 when a check fails.
    Compliance(commands::policy::ComplianceArgs),
}

fn main() -> ExitCode {
    // A closed output pipe ends the process quietly, as for other command-line tools, so that
    // `fleetmesh drift | head` does not panic in `println!` (Rust ignores SIGPIPE by default).
    sigpipe::reset();
    let cli = Cli::parse();
    let data_dir = cli.data_dir.unwrap_or_else(paths::default_data_dir);
    let result = match cli.command {
        Command::Up(args) => commands::up::run(&data_dir, args),
        Command::Nodes(args) => commands::read::nodes(&data_dir, args),
        Command::Show(args) => commands::read::show(&data_dir, args),
        Command::Query(args) => commands::read::query(&data_dir, args),
        Command::Schema(args) => commands::read::schema(args),
        Command::History(args) => commands::history::run(&data_dir, args),
        Command::Diff(args) => commands::diff::run(&data_dir, args),
        Command::Collect(args) => commands::collect::run(args),
        Command::Fleet(args) => commands::fleet::run(&data_dir, args),
        Command::Join(args) => commands::join::run(&data_dir, args),
        Command::Policy(args) => commands::policy::policy(&data_dir, args),
        Command::Baseline(args) => commands::policy::baseline(&data_dir, args),
        Command::Drift(args) => commands::policy::drift(&data_dir, args),
        Command::Compliance(args) => commands::policy::compliance(&data_dir, args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::from(2)
        }
    }
}

/// Joins an error and its causes into one line, skipping causes already in the message.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
