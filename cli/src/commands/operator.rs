//! Shared setup of the commands that write tenant documents: this node's key, its verified
//! membership, and the check that it is an operator of the tenant it writes to.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ed25519_dalek::SigningKey;
use fleetmesh_model::membership::CertificateChain;
use fleetmesh_model::{NodeId, TenantId};
use fleetmesh_node::keyfile;
use fleetmesh_node::membership::Credentials;
use fleetmesh_node::store::Store;

/// An operator node about to write a tenant document.
pub struct Operator {
    /// This node's signing key.
    pub key: SigningKey,
    /// This node's id.
    pub node: NodeId,
    /// The node's store, opened for writing beside a running daemon.
    pub store: Store,
    /// The node's certificate chain.
    pub chain: CertificateChain,
    /// The tenant the command writes to.
    pub tenant: TenantId,
    /// The current time, Unix seconds.
    pub now: i64,
}

/// Opens the node in `data_dir` for `command` (as the user types it, for messages) and checks
/// that it is an operator of `tenant` (default: the node's own tenant).
pub fn open(data_dir: &Path, tenant: Option<&str>, command: &str) -> anyhow::Result<Operator> {
    let key_path = data_dir.join(keyfile::KEY_FILE);
    if !key_path.exists() {
        anyhow::bail!(
            "{} has no node key; run `{command}` on an operator node, or pass its --data-dir",
            data_dir.display()
        );
    }
    let key = keyfile::load(&key_path)?;
    let node = keyfile::node_id(&key);
    let store = Store::open(data_dir)?;
    let credentials = Credentials::load(&store)?.with_context(|| {
        format!(
            "the node in {} is not enrolled in a fleet; enroll it with `fleetmesh join` first",
            data_dir.display()
        )
    })?;
    let now = unix_now()?;
    let member = credentials.verify(&node, now)?;
    let tenant = match tenant {
        Some(name) => TenantId::new(name)?,
        None => member.tenant.clone(),
    };
    if !member.is_operator_of(&tenant) {
        anyhow::bail!(
            "this node is enrolled with role {} in tenant {}, and only operators of tenant {tenant} may run `{command}`; run it on an operator node of that tenant",
            member.role.as_str(),
            member.tenant
        );
    }
    Ok(Operator {
        key,
        node,
        store,
        chain: credentials.chain,
        tenant,
        now,
    })
}

/// Returns the current time in Unix seconds.
pub fn unix_now() -> anyhow::Result<i64> {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970; set the clock")?;
    Ok(i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}
