//! Changes a test makes and the checks that every node shows them: convergence, lost
//! changes, and which nodes a node lists as connected.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::mesh::Mesh;
use super::SNAPSHOT_SQL;
use crate::{add_dpkg_package, wait_for};

/// One package installed by a test: a change its author must record and every node must show.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// Host name of the node whose root changed.
    pub author: String,
    /// Package name, unique in the test.
    pub package: String,
    /// Package version.
    pub version: String,
}

/// The changes a test made, in order.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every change, oldest first.
    pub changes: Vec<Change>,
}

impl Mesh {
    /// Runs [`SNAPSHOT_SQL`] on node `index`.
    pub fn snapshot(&self, index: usize) -> Result<Vec<Value>> {
        self.nodes[index].node.query(SNAPSHOT_SQL)
    }

    /// Returns the host names in node `index`'s replica that have packages, sorted.
    pub fn hostnames_seen(&self, index: usize) -> Result<BTreeSet<String>> {
        let rows = self.nodes[index].node.query(
            "SELECT DISTINCT n.hostname FROM nodes n JOIN packages p ON p.node_id = n.node_id",
        )?;
        Ok(rows
            .iter()
            .filter_map(|row| row["hostname"].as_str().map(str::to_string))
            .collect())
    }

    /// Returns the host names that node `index` lists as connected now, from `nodes --json`.
    pub fn connected_hostnames(&self, index: usize) -> Result<BTreeSet<String>> {
        Ok(self
            .node_summaries(index)?
            .iter()
            .filter(|node| node["connected"].as_bool() == Some(true))
            .filter_map(|node| node["hostname"].as_str().map(str::to_string))
            .collect())
    }

    /// Returns the output of `fleetmesh nodes --json` on node `index`.
    pub fn node_summaries(&self, index: usize) -> Result<Vec<Value>> {
        let net = &self.nodes[index];
        let output = net.node.cli(&["nodes", "--json"])?;
        if !output.status.success() {
            bail!(
                "nodes on {} failed: {}",
                net.name(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let nodes: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("nodes output of {} is not JSON", net.name()))?;
        Ok(nodes.as_array().cloned().unwrap_or_default())
    }

    /// Installs a new package on node `index` and records it as a change in `ledger`.
    pub fn install(&self, index: usize, ledger: &mut Ledger) -> Result<Change> {
        let author = self.nodes[index].name().to_string();
        let number = ledger.changes.len();
        let change = Change {
            package: format!("fmtest-{author}-{number}"),
            version: format!("1.0-{number}"),
            author,
        };
        add_dpkg_package(
            &self.nodes[index].node.root,
            &change.package,
            &change.version,
        )?;
        ledger.changes.push(change.clone());
        Ok(change)
    }

    /// Returns the changes of `ledger` that the packages on node `index` show.
    pub fn changes_seen(&self, index: usize, ledger: &Ledger) -> Result<BTreeSet<Change>> {
        let rows = self.nodes[index].node.query(
            "SELECT n.hostname, p.name, p.version FROM packages p \
             JOIN nodes n ON n.node_id = p.node_id WHERE p.name LIKE 'fmtest-%'",
        )?;
        let seen: BTreeSet<Change> = rows
            .iter()
            .filter_map(|row| {
                Some(Change {
                    author: row["hostname"].as_str()?.to_string(),
                    package: row["name"].as_str()?.to_string(),
                    version: row["version"].as_str()?.to_string(),
                })
            })
            .collect();
        Ok(ledger
            .changes
            .iter()
            .filter(|change| seen.contains(change))
            .cloned()
            .collect())
    }

    /// Counts, over the nodes `indexes`, the changes of `ledger` that a node does not show.
    pub fn count_lost(&self, indexes: &[usize], ledger: &Ledger) -> Result<usize> {
        let mut lost = 0;
        for &index in indexes {
            lost += ledger.changes.len() - self.changes_seen(index, ledger)?.len();
        }
        Ok(lost)
    }

    /// Waits until the nodes `indexes` all return the same [`SNAPSHOT_SQL`] output, which lists
    /// every node of the mesh and every change of `ledger`. Returns the time it took.
    pub fn wait_converged(
        &self,
        indexes: &[usize],
        ledger: &Ledger,
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        let everyone: BTreeSet<String> = self.nodes.iter().map(|n| n.name().to_string()).collect();
        let waited = wait_for("the nodes to converge", timeout, || {
            let Some((&first, rest)) = indexes.split_first() else {
                return Ok(Some(()));
            };
            if self.hostnames_seen(first)? != everyone
                || self.changes_seen(first, ledger)?.len() != ledger.changes.len()
            {
                return Ok(None);
            }
            let reference = self.snapshot(first)?;
            for &index in rest {
                if self.snapshot(index)? != reference {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        });
        if let Err(err) = waited {
            return Err(err.context(self.describe_state(indexes, ledger)));
        }
        Ok(started.elapsed())
    }

    /// Waits until every node of `indexes` shows every change of `changes`. Returns the time
    /// it took.
    pub fn wait_shown(
        &self,
        indexes: &[usize],
        changes: &[Change],
        ledger: &Ledger,
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        let description = format!("{} changes to reach {} nodes", changes.len(), indexes.len());
        let waited = wait_for(&description, timeout, || {
            for &index in indexes {
                let seen = self.changes_seen(index, ledger)?;
                if !changes.iter().all(|change| seen.contains(change)) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        });
        if let Err(err) = waited {
            return Err(err.context(self.describe_state(indexes, ledger)));
        }
        Ok(started.elapsed())
    }

    /// Fails if a node of `indexes` shows one of `changes`, naming the node and the change.
    pub fn ensure_not_shown(
        &self,
        indexes: &[usize],
        changes: &[Change],
        ledger: &Ledger,
    ) -> Result<()> {
        for &index in indexes {
            let seen = self.changes_seen(index, ledger)?;
            if let Some(change) = changes.iter().find(|change| seen.contains(change)) {
                bail!(
                    "{} shows {} of {}, which it cannot reach",
                    self.nodes[index].name(),
                    change.package,
                    change.author
                );
            }
        }
        Ok(())
    }

    /// Describes what each node's replica shows and the tail of its log, for failure messages.
    pub fn describe_state(&self, indexes: &[usize], ledger: &Ledger) -> String {
        let mut text = String::new();
        for &index in indexes {
            let net = &self.nodes[index];
            let hosts = self
                .hostnames_seen(index)
                .map(|h| h.into_iter().collect::<Vec<_>>().join(" "));
            let seen = self.changes_seen(index, ledger).map(|seen| seen.len());
            text.push_str(&format!(
                "\n== {} ({}): hosts with packages: {hosts:?}; changes shown: {seen:?} of {}\n{}\n",
                net.name(),
                net.address,
                ledger.changes.len(),
                net.node.log_tail(15)
            ));
        }
        text
    }
}
