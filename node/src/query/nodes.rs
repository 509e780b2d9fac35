//! Node listings for `fleetmesh nodes` and `fleetmesh show`, read from the `nodes` table.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row};
use serde::Serialize;

use super::QueryError;

/// Most candidates an ambiguous selector error lists.
const CANDIDATES_LISTED_MAX: usize = 10;

const SUMMARY_COLUMNS: &str = "node_id, hostname, tenant, site, os_pretty_name, package_count, \
                               last_change, last_heard, connected";

/// Summary of one node, as `fleetmesh nodes` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeSummary {
    /// Node id (libp2p peer id).
    pub node_id: String,
    /// Short host name, if the node's facts have arrived.
    pub hostname: Option<String>,
    /// Tenant name, if known.
    pub tenant: Option<String>,
    /// Site name, if known.
    pub site: Option<String>,
    /// Operating system, as os-release `PRETTY_NAME`.
    pub os_pretty_name: Option<String>,
    /// Number of installed packages.
    pub package_count: i64,
    /// Commit time of the newest change from the node, Unix seconds.
    pub last_change: Option<i64>,
    /// When the node was last heard from directly, Unix seconds.
    pub last_heard: Option<i64>,
    /// Whether the node is connected to the local node now.
    pub connected: bool,
    /// Whether the node's facts are older than the staleness threshold; `None` when no
    /// threshold was given. See [`NodeSummary::is_stale`].
    pub stale: Option<bool>,
}

impl NodeSummary {
    /// Reports whether nothing was heard from the node, directly or through one of its changes,
    /// within `stale_after` before `now` (Unix seconds). A node never heard from is stale.
    pub fn is_stale(&self, stale_after: Duration, now: i64) -> bool {
        let latest = match (self.last_heard, self.last_change) {
            (Some(heard), Some(change)) => heard.max(change),
            (Some(time), None) | (None, Some(time)) => time,
            (None, None) => return true,
        };
        let threshold = i64::try_from(stale_after.as_secs()).unwrap_or(i64::MAX);
        now.saturating_sub(latest) > threshold
    }

    fn from_row(row: &Row<'_>) -> rusqlite::Result<NodeSummary> {
        Ok(NodeSummary {
            node_id: row.get(0)?,
            hostname: row.get(1)?,
            tenant: row.get(2)?,
            site: row.get(3)?,
            os_pretty_name: row.get(4)?,
            package_count: row.get::<_, Option<i64>>(5)?.unwrap_or(0),
            last_change: row.get(6)?,
            last_heard: row.get(7)?,
            connected: row.get::<_, Option<i64>>(8)?.unwrap_or(0) != 0,
            stale: None,
        })
    }

    /// Text naming the node in error messages: `node_id (hostname)`.
    fn label(&self) -> String {
        match &self.hostname {
            Some(hostname) => format!("{} ({hostname})", self.node_id),
            None => self.node_id.clone(),
        }
    }
}

/// Lists every node, ordered by host name and then node id. With `stale_after`, each node's
/// `stale` flag is set by [`NodeSummary::is_stale`] for `now` (Unix seconds).
pub fn list_nodes(
    conn: &Connection,
    stale_after: Option<Duration>,
    now: i64,
) -> Result<Vec<NodeSummary>, QueryError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM nodes ORDER BY hostname IS NULL, hostname, node_id"
    ))?;
    let mut nodes = stmt
        .query_map([], NodeSummary::from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(stale_after) = stale_after {
        for node in &mut nodes {
            node.stale = Some(node.is_stale(stale_after, now));
        }
    }
    Ok(nodes)
}

/// Finds one node by full node id, by host name (ignoring case), or by a unique node id
/// prefix, in that order. The returned summary has `stale` unset.
pub fn show_node(conn: &Connection, selector: &str) -> Result<NodeSummary, QueryError> {
    let selector = selector.trim();
    if selector.is_empty() {
        return Err(QueryError::NodeNotFound {
            selector: selector.to_string(),
        });
    }

    let exact = conn
        .query_row(
            &format!("SELECT {SUMMARY_COLUMNS} FROM nodes WHERE node_id = ?1"),
            [selector],
            NodeSummary::from_row,
        )
        .optional()?;
    if let Some(node) = exact {
        return Ok(node);
    }

    let by_hostname = select_nodes(conn, "hostname = ?1 COLLATE NOCASE", selector)?;
    let matches = if by_hostname.is_empty() {
        select_nodes(conn, "substr(node_id, 1, length(?1)) = ?1", selector)?
    } else {
        by_hostname
    };

    let mut matches = matches.into_iter();
    match (matches.next(), matches.len()) {
        (None, _) => Err(QueryError::NodeNotFound {
            selector: selector.to_string(),
        }),
        (Some(node), 0) => Ok(node),
        (Some(first), rest) => {
            let mut candidates = vec![first.label()];
            candidates.extend(matches.take(CANDIDATES_LISTED_MAX - 1).map(|n| n.label()));
            Err(QueryError::AmbiguousNode {
                selector: selector.to_string(),
                count: rest + 1,
                candidates,
            })
        }
    }
}

fn select_nodes(
    conn: &Connection,
    condition: &str,
    selector: &str,
) -> Result<Vec<NodeSummary>, QueryError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM nodes WHERE {condition} ORDER BY hostname, node_id"
    ))?;
    let nodes = stmt
        .query_map([selector], NodeSummary::from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(nodes)
}
