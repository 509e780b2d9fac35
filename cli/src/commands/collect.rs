//! `fleetmesh collect`: print this machine's facts without a mesh.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use fleetmesh_model::Facts;
use fleetmesh_node::collect::{collect, CollectOptions};

/// Options of `fleetmesh collect`.
#[derive(Args, Debug)]
pub struct CollectArgs {
    /// Root of the file system to collect from.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,

    /// Print the facts as JSON.
    #[arg(long)]
    json: bool,

    /// File to track on top of the default list (repeatable).
    #[arg(long = "track", value_name = "PATH")]
    track: Vec<String>,
}

/// Collects and prints the facts.
pub fn run(args: CollectArgs) -> anyhow::Result<ExitCode> {
    if !args.root.is_dir() {
        anyhow::bail!(
            "root directory {} does not exist; pass an existing --root",
            args.root.display()
        );
    }
    let mut options = CollectOptions::new(args.root);
    options.extra_tracked_files = args.track;
    let facts = collect(&options);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&facts)?);
    } else {
        print_summary(&facts);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(facts: &Facts) {
    let unknown = || "unknown".to_string();
    println!("hostname:     {}", facts.system.hostname);
    println!(
        "os:           {}",
        facts.os.pretty_name.clone().unwrap_or_else(unknown)
    );
    println!(
        "kernel:       {}",
        facts.os.kernel_release.clone().unwrap_or_else(unknown)
    );
    println!(
        "cpu:          {} ({} threads)",
        facts.hardware.cpu_model.clone().unwrap_or_else(unknown),
        facts
            .hardware
            .cpu_threads
            .map_or_else(unknown, |n| n.to_string())
    );
    println!(
        "memory:       {} MiB",
        facts
            .hardware
            .memory_total_kib
            .map_or_else(unknown, |kib| (kib / 1024).to_string())
    );
    println!("packages:     {}", facts.packages.len());
    println!("services:     {}", facts.services.len());
    println!("interfaces:   {}", facts.interfaces.len());
    println!("users:        {}", facts.users.len());
    println!("tracked:      {}", facts.tracked_files.len());
    if !facts.collector_errors.is_empty() {
        println!("errors:       {}", facts.collector_errors.len());
        for error in facts.collector_errors.values() {
            println!(
                "  {} {}: {}",
                error.collector,
                error.path.as_deref().unwrap_or(""),
                error.message
            );
        }
    }
}
