//! Collectors: read a Linux machine's configuration under a root directory and return typed
//! [`Facts`].
//!
//! [`collect`] runs one collector per area (system, OS, hardware, storage, network, packages,
//! services, accounts, scheduled tasks, tracked files), each on its own thread with a shared
//! deadline. A collector that fails, panics or overruns its budget loses only its own facts and
//! leaves an error fact; the others go on. Problems in the input (a corrupt package database, a
//! line that does not parse, a file that cannot be read) become error facts in
//! [`Facts::collector_errors`], and the readable part is still recorded.
//!
//! Everything is read under [`CollectOptions::root`], so a captured tree can be inventoried like
//! a machine. Only when [`CollectOptions::live`] is set are questions put to the running system:
//! `systemctl` for active states, `/proc/<pid>/fd` for socket owners, `statvfs` for free space,
//! and `ip` when `/proc/net/fib_trie` is missing.
//!
//! Collecting an unchanged machine twice gives equal facts: nothing records uptime, collection
//! times or byte-exact free space, and every collection is a `BTreeMap`.
//!
//! The parsers are public so that tests can feed them arbitrary bytes. Each is a pure function
//! from file contents to items plus a list of problems.

pub mod accounts;
pub mod context;
pub mod hardware;
pub mod network;
pub mod os;
pub mod packages;
pub mod redact;
pub mod scheduled;
pub mod services;
pub mod storage;
pub mod system;
pub mod systemd;
pub mod tracked;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fleetmesh_model::Facts;

use context::Context;

/// Default time budget of each collector. Collectors run in parallel, so this also bounds a
/// whole collection (plus [`GRACE`]).
pub const DEFAULT_COLLECTOR_BUDGET: Duration = Duration::from_secs(10);

/// How long [`collect`] waits past the deadline for collectors that stop early on their own.
const GRACE: Duration = Duration::from_millis(200);

/// Options of one collection: the root, extra tracked files, the time budget, and whether the
/// running system may be asked.
#[derive(Clone, Debug)]
pub struct CollectOptions {
    /// Directory that stands for `/`; every file is read under it.
    pub root: PathBuf,
    /// Files to track in addition to [`tracked::DEFAULT_TRACKED_FILES`], as absolute paths; a
    /// path ending in `/*` tracks every file in that directory.
    pub extra_tracked_files: Vec<String>,
    /// Time each collector may take before its facts are given up.
    pub collector_budget: Duration,
    /// Whether the running system may be asked (commands, process tables, `statvfs`). Set by
    /// [`CollectOptions::new`] when the root is `/`.
    pub live: bool,
}

impl CollectOptions {
    /// Creates options that read under `root`, with the default budget and tracked files.
    /// `live` is set when `root` is `/`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let live = root == Path::new("/");
        CollectOptions {
            root,
            extra_tracked_files: Vec::new(),
            collector_budget: DEFAULT_COLLECTOR_BUDGET,
            live,
        }
    }
}

/// Output of a parser: what it could read, and one message per part it had to skip.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed<T> {
    /// The items read.
    pub value: T,
    /// Messages about the skipped parts, in input order.
    pub problems: Vec<String>,
}

impl<T> Parsed<T> {
    /// Records the problems as one error fact for `path` (facts are keyed by collector and
    /// path, so several problems in one file share a fact), and returns the value.
    pub fn into_value(self, facts: &mut Facts, collector: &str, path: &str) -> T {
        if !self.problems.is_empty() {
            add_error(
                facts,
                collector,
                Some(path),
                summarize_problems(&self.problems),
            );
        }
        self.value
    }
}

/// Records a collector problem as an error fact. Facts are keyed by collector and path, so a
/// second problem for the same key is appended to the first message instead of replacing it.
pub fn add_error(
    facts: &mut Facts,
    collector: &str,
    path: Option<&str>,
    message: impl Into<String>,
) {
    let message = message.into();
    let key = format!("{}:{}", collector, path.unwrap_or(""));
    match facts.collector_errors.get_mut(&key) {
        Some(existing) if !existing.message.contains(&message) => {
            existing.message.push_str("; ");
            existing.message.push_str(&message);
        }
        Some(_) => {}
        None => facts.add_error(collector, path, message),
    }
}

/// Joins problem messages into one line: the count, then the first few.
pub fn summarize_problems(problems: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut message = if problems.len() == 1 {
        problems[0].clone()
    } else {
        format!(
            "{} problems: {}",
            problems.len(),
            problems[..problems.len().min(SHOWN)].join("; ")
        )
    };
    if problems.len() > SHOWN {
        message.push_str("; ...");
    }
    message
}

type CollectorFn = fn(&Context, &mut Facts);

/// Every collector, by the name used in its error facts.
const COLLECTORS: [(&str, CollectorFn); 10] = [
    ("system", system::collect),
    ("os", os::collect),
    ("hardware", hardware::collect),
    ("storage", storage::collect),
    ("network", network::collect),
    ("packages", packages::collect),
    ("services", services::collect),
    ("accounts", accounts::collect),
    ("scheduled", scheduled::collect),
    ("tracked_files", tracked::collect),
];

/// Collects every area under `options.root` and returns the facts, including error facts for
/// whatever could not be read. A panic inside a collector is caught at its thread
/// and recorded as an error fact, so bad input cannot panic the caller.
pub fn collect(options: &CollectOptions) -> Facts {
    let deadline = Instant::now() + options.collector_budget;
    let ctx = Arc::new(
        Context::new(
            options.root.clone(),
            options.live,
            options.collector_budget,
            deadline,
        )
        .with_extra_tracked_files(options.extra_tracked_files.clone()),
    );

    // Start every collector on its own thread.
    let mut running = Vec::with_capacity(COLLECTORS.len());
    let mut facts = Facts::default();
    for (name, run) in COLLECTORS {
        let (sender, receiver) = mpsc::channel();
        let thread_ctx = Arc::clone(&ctx);
        let spawned = thread::Builder::new()
            .name(format!("collect-{name}"))
            .spawn(move || {
                let mut part = Facts::default();
                run(&thread_ctx, &mut part);
                // The receiver is gone only when the collector overran; nothing to do then.
                let _ = sender.send(part);
            });
        match spawned {
            Ok(handle) => running.push((name, receiver, handle)),
            Err(err) => add_error(
                &mut facts,
                name,
                None,
                format!("starting the collector thread failed: {err}"),
            ),
        }
    }

    // Merge results in a fixed order, so thread timing never changes the output.
    for (name, receiver, handle) in running {
        let wait = (deadline + GRACE).saturating_duration_since(Instant::now());
        match receiver.recv_timeout(wait) {
            Ok(part) => merge(&mut facts, part),
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(collector = name, "collector overran its time budget");
                add_error(
                    &mut facts,
                    name,
                    None,
                    format!(
                        "did not finish within its time budget of {} ms, so its facts are missing",
                        options.collector_budget.as_millis()
                    ),
                );
            }
            Err(RecvTimeoutError::Disconnected) => {
                let reason = handle.join().err().map(panic_message).unwrap_or_default();
                tracing::error!(collector = name, reason = %reason, "collector panicked");
                add_error(
                    &mut facts,
                    name,
                    None,
                    format!("collector panicked: {reason}"),
                );
            }
        }
    }

    fill_derived(&mut facts);
    facts
}

/// Moves the facts of one collector into the total. Each collector fills its own sections, so
/// maps are joined and sections are taken when the collector filled them.
fn merge(total: &mut Facts, part: Facts) {
    // Destructured in full so that a new field of `Facts` fails to compile here until merged.
    let Facts {
        system,
        os,
        hardware,
        mounts,
        interfaces,
        routes,
        dns,
        listening,
        packages,
        services,
        service_manager,
        users,
        groups,
        scheduled_tasks,
        tracked_files,
        collector_errors,
    } = part;

    if system != Default::default() {
        total.system = system;
    }
    if os != Default::default() {
        total.os = os;
    }
    if hardware != Default::default() {
        total.hardware = hardware;
    }
    if dns != Default::default() {
        total.dns = dns;
    }
    if service_manager.is_some() {
        total.service_manager = service_manager;
    }
    total.mounts.extend(mounts);
    total.interfaces.extend(interfaces);
    total.routes.extend(routes);
    total.listening.extend(listening);
    total.packages.extend(packages);
    total.services.extend(services);
    total.users.extend(users);
    total.groups.extend(groups);
    total.scheduled_tasks.extend(scheduled_tasks);
    total.tracked_files.extend(tracked_files);
    total.collector_errors.extend(collector_errors);
}

/// Fills facts that one collector can derive from another's output.
fn fill_derived(facts: &mut Facts) {
    if facts.system.architecture.is_none() {
        facts.system.architecture = system::architecture_from_packages(&facts.packages);
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic payload".to_string()
    }
}
