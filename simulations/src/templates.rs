//! Real signed automerge changes for thousands of simulated nodes, built from a few templates.
//!
//! Building a node document with `NodeDocument::record_signed` takes a few hundred milliseconds
//! for a Debian host with about 700 packages, so the simulator cannot build one per node. It
//! builds a few template documents instead, each written by a template actor, and a chain of
//! follow-up changes per template (package upgrades, reboots, configuration edits) made with the
//! same automerge operations that a minimal-diff collection writes.
//!
//! A node's chain is the template chain with the actor and the dependency hashes replaced. In an
//! uncompressed automerge change chunk, the dependencies and the actor are fixed-width fields at
//! the start of the body, and every operation refers to the change's own actor by index. So
//! replacing those bytes and recomputing the checksum gives exactly the change that automerge
//! would write for that actor doing the same operations. Each patched change is parsed by
//! automerge (which checks the checksum) and then signed with the node's real ed25519 key.
//!
//! NOTE: the identity section and host name inside a patched document are the template's, so
//! they name the template actor, not the node. The sync engine never reads them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjId, ReadDoc, Value};
use ed25519_dalek::SigningKey;
use fleetmesh_model::facts::Package;
use fleetmesh_model::{
    Change, ChangeHash, DocId, Facts, Identity, NodeDocument, NodeId, SignedChange, TenantId,
    VerifyError,
};
use sha2::{Digest, Sha256};

/// Commit time of template changes, in seconds since the Unix epoch.
const TEMPLATE_TIME: i64 = 1_700_000_000;

/// Where the node documents' facts came from.
#[derive(Clone, Debug)]
pub enum FactsSource {
    /// Collected from a fixture root with the node's own collectors.
    Fixture(String),
    /// Generated, because the fixture root was not found.
    Generated(String),
}

impl FactsSource {
    /// Returns a one-line description for reports.
    pub fn describe(&self) -> String {
        match self {
            FactsSource::Fixture(root) => format!("facts collected from the fixture root {root}"),
            FactsSource::Generated(reason) => format!("generated package list ({reason})"),
        }
    }
}

/// What a follow-up change of a template chain does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// One package gets a new version.
    Upgrade,
    /// The boot time moves.
    Reboot,
    /// A tracked configuration file changes.
    ConfigEdit,
}

/// One template: a genesis change and its follow-ups, as uncompressed automerge chunks written by
/// the template actor.
pub struct Template {
    actor: [u8; 32],
    /// `chunks[0]` is the genesis (sequence number 1), `chunks[k]` is sequence number `k + 1`.
    chunks: Vec<Vec<u8>>,
    kinds: Vec<ChangeKind>,
    /// Signed changes made from this template, by node document and sequence number, shared by
    /// every run in the process.
    signed: Mutex<HashMap<(DocId, u64), SignedChange>>,
    /// Whether a change of this template's chains passed verification, by change hash,
    /// signature and document, shared by every run in the process.
    verified: Mutex<HashMap<VerifiedKey, bool>>,
}

/// Key of a verification result: the change hash, its signature and its document.
type VerifiedKey = (ChangeHash, Option<[u8; 64]>, DocId);

impl Template {
    /// Returns the number of changes in the chain, genesis included.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Reports whether the chain is empty (never true for a built template).
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Returns the kind of change `seq` (sequence numbers start at 1; the genesis has none).
    pub fn kind(&self, seq: u64) -> Option<ChangeKind> {
        let index = usize::try_from(seq).ok()?.checked_sub(2)?;
        self.kinds.get(index).copied()
    }

    /// Returns the chunk of change `seq` written by `actor` on top of `previous` (the hash of
    /// change `seq - 1`, `None` for the genesis), and its automerge hash.
    pub fn patched(
        &self,
        seq: u64,
        actor: &[u8; 32],
        previous: Option<ChangeHash>,
    ) -> Result<(Vec<u8>, ChangeHash)> {
        let index = usize::try_from(seq)
            .ok()
            .and_then(|seq| seq.checked_sub(1))
            .ok_or_else(|| anyhow!("change sequence numbers start at 1, got {seq}"))?;
        let Some(template) = self.chunks.get(index) else {
            bail!(
                "a simulated node wrote more than {} changes to its document; raise \
                 [documents] chain_length in the scenario",
                self.chunks.len()
            );
        };
        let mut bytes = template.clone();
        let layout = ChunkLayout::parse(&bytes)?;
        let previous: Vec<ChangeHash> = previous.into_iter().collect();
        if layout.deps != previous.len() {
            bail!(
                "template change {seq} has {} dependencies, expected {}",
                layout.deps,
                previous.len()
            );
        }
        for (slot, hash) in previous.iter().enumerate() {
            let start = layout.deps_at + 32 * slot;
            bytes[start..start + 32].copy_from_slice(&hash.0);
        }
        if bytes[layout.actor_at..layout.actor_at + 32] != self.actor {
            bail!("template change {seq} does not carry the template actor where expected");
        }
        bytes[layout.actor_at..layout.actor_at + 32].copy_from_slice(actor);

        // The hash covers the chunk type, the length and the body; the checksum is its first
        // four bytes.
        let digest: [u8; 32] = Sha256::digest(&bytes[8..]).into();
        bytes[4..8].copy_from_slice(&digest[..4]);
        Ok((bytes, ChangeHash(digest)))
    }

    /// Returns the signed change `seq` of the node document `doc`, made with `make` the first
    /// time any run of this process requests it.
    ///
    /// Parsing and compressing a genesis change takes a few milliseconds, and a sweep would
    /// otherwise repeat that for every node in every seed. The cached change is the one `make`
    /// returns, because the patched bytes, the hash and the ed25519 signature depend only on
    /// the template, the document (which names the node and so its key) and `seq`.
    pub fn signed_change(
        &self,
        doc: &DocId,
        seq: u64,
        make: impl FnOnce() -> Result<SignedChange>,
    ) -> Result<SignedChange> {
        let key = (doc.clone(), seq);
        if let Some(change) = self.lock_signed().get(&key) {
            return Ok(change.clone());
        }
        // Two threads that miss at once both sign, and both get the same change.
        let change = make()?;
        self.lock_signed().insert(key, change.clone());
        Ok(change)
    }

    fn lock_signed(&self) -> std::sync::MutexGuard<'_, HashMap<(DocId, u64), SignedChange>> {
        self.signed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Verifies `change` with [`SignedChange::verify`], or returns the result that an earlier
    /// call stored under `key` (the change's hash, signature and document).
    pub fn verify_change(
        &self,
        key: (ChangeHash, Option<[u8; 64]>, DocId),
        change: &SignedChange,
    ) -> Result<(), VerifyError> {
        let known = self
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
            .copied();
        if known == Some(true) {
            return Ok(());
        }
        // A rejected change is verified again for its error text.
        let result = change.verify();
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key, result.is_ok());
        result
    }
}

/// Offsets inside an uncompressed change chunk.
struct ChunkLayout {
    deps: usize,
    deps_at: usize,
    actor_at: usize,
}

impl ChunkLayout {
    /// Reads the chunk header: magic (4), checksum (4), type (1), body length (LEB128), then the
    /// dependency count (LEB128), the dependency hashes and the actor (length 32, then bytes).
    fn parse(bytes: &[u8]) -> Result<ChunkLayout> {
        if bytes.len() < 10 || bytes[8] != 1 {
            bail!("template chunk is not an uncompressed automerge change");
        }
        let (_, body_at) = read_uleb(bytes, 9)?;
        let (deps, deps_at) = read_uleb(bytes, body_at)?;
        let deps = usize::try_from(deps).context("dependency count overflows")?;
        let actor_len_at = deps_at + 32 * deps;
        if bytes.get(actor_len_at) != Some(&32) {
            bail!("template change actor is not 32 bytes long");
        }
        Ok(ChunkLayout {
            deps,
            deps_at,
            actor_at: actor_len_at + 1,
        })
    }
}

fn read_uleb(bytes: &[u8], mut at: usize) -> Result<(u64, usize)> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = *bytes
            .get(at)
            .ok_or_else(|| anyhow!("truncated LEB128 in a template chunk"))?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value, at));
        }
        shift += 7;
        if shift > 63 {
            bail!("LEB128 value in a template chunk is too long");
        }
    }
}

/// Parses a patched chunk with automerge and signs it for the node document of `key`.
pub fn sign_patched(bytes: Vec<u8>, tenant: &TenantId, key: &SigningKey) -> Result<SignedChange> {
    let node = NodeId(key.verifying_key().to_bytes());
    let mut change = Change::from_bytes(bytes).context("automerge rejected a patched change")?;
    if change.actor_id().to_bytes() != node.0 {
        bail!("patched change has the wrong actor");
    }
    SignedChange::sign(DocId::node(tenant.clone(), node), &mut change, key)
        .map_err(|err| anyhow!("signing a patched change failed: {err}"))
}

/// The templates shared by every run in a process.
pub struct Templates {
    /// The templates, at least one.
    pub templates: Vec<Arc<Template>>,
    /// Where the facts came from.
    pub source: FactsSource,
    /// Number of packages in the first template's genesis.
    pub packages: usize,
}

impl Templates {
    /// Builds `count` templates of `chain_length` changes each from the facts under
    /// `fixture_root`, or from a generated package list when that directory does not exist.
    pub fn build(fixture_root: &Path, count: usize, chain_length: usize) -> Result<Templates> {
        if count == 0 {
            bail!("[documents] templates must be at least 1");
        }
        if chain_length < 2 {
            bail!("[documents] chain_length must be at least 2");
        }
        let (facts, source) = base_facts(fixture_root);
        if facts.packages.is_empty() {
            bail!(
                "no packages were collected under {}; point --fixture-root at a root with \
                 var/lib/dpkg/status",
                fixture_root.display()
            );
        }

        let mut templates = Vec::with_capacity(count);
        for index in 0..count {
            let facts = vary(&facts, index);
            templates.push(Arc::new(build_template(index, facts, chain_length)?));
        }
        let packages = facts.packages.len();
        Ok(Templates {
            templates,
            source,
            packages,
        })
    }
}

fn base_facts(root: &Path) -> (Facts, FactsSource) {
    let status = root.join("var/lib/dpkg/status");
    if status.is_file() {
        let options = fleetmesh_node::collect::CollectOptions::new(root);
        let facts = fleetmesh_node::collect::collect(&options);
        return (facts, FactsSource::Fixture(root.display().to_string()));
    }
    let reason = format!("{} not found", status.display());
    (generated_facts(), FactsSource::Generated(reason))
}

/// Returns facts with 700 packages of Debian-like names and versions.
fn generated_facts() -> Facts {
    let mut facts = Facts::default();
    facts.os.id = Some("debian".to_string());
    facts.os.version_id = Some("12".to_string());
    for index in 0..700u32 {
        let package = Package {
            name: format!("lib-sim{index:03}"),
            version: format!(
                "{}.{}.{}-{}+deb12u1",
                index % 7,
                index % 13,
                index % 5,
                index % 3 + 1
            ),
            arch: Some(if index % 4 == 0 { "all" } else { "amd64" }.to_string()),
            source: (index % 3 == 0).then(|| format!("sim{}", index / 3)),
            manager: "dpkg".to_string(),
            ..Package::default()
        };
        facts.packages.insert(package.key(), package);
    }
    facts
}

/// Returns the facts of template `index`: the base with a different subset of packages, so that
/// templates differ in size and content as hosts of one fleet do.
fn vary(base: &Facts, index: usize) -> Facts {
    let mut facts = base.clone();
    if index > 0 {
        let modulus = index + 6;
        let mut position = 0usize;
        facts.packages.retain(|_, _| {
            position += 1;
            !position.is_multiple_of(modulus)
        });
    }
    facts.system.hostname = format!("fmsim-template-{index:02}");
    facts.system.boot_time = Some(TEMPLATE_TIME - 86_400);
    facts
}

fn template_key(index: usize) -> SigningKey {
    let digest: [u8; 32] = Sha256::new()
        .chain_update(b"fleetmesh-sim template key")
        .chain_update((index as u64).to_le_bytes())
        .finalize()
        .into();
    SigningKey::from_bytes(&digest)
}

fn build_template(index: usize, facts: Facts, chain_length: usize) -> Result<Template> {
    let key = template_key(index);
    let actor = key.verifying_key().to_bytes();
    let node = NodeId(actor);
    let tenant = TenantId::new("template").map_err(|err| anyhow!("template tenant: {err}"))?;
    let identity = Identity {
        node_id: node.to_string(),
        tenant: tenant.as_str().to_string(),
        site: "template".to_string(),
        hostname: facts.system.hostname.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };

    // The genesis goes through the real minimal-diff writer.
    let mut document = NodeDocument::new(tenant, node);
    let genesis = document
        .record_signed(&identity, &facts, TEMPLATE_TIME, &key)
        .map_err(|err| anyhow!("recording template {index} failed: {err}"))?
        .ok_or_else(|| anyhow!("template {index} recorded no change"))?;
    let genesis = genesis
        .to_change()
        .map_err(|err| anyhow!("decoding template {index} failed: {err}"))?;

    // Follow-ups are single edits on a copy of the document, as a collection that found one
    // difference writes them.
    let mut doc = AutoCommit::new().with_actor(ActorId::from(actor.to_vec()));
    doc.apply_changes([genesis.clone()])
        .context("applying a template genesis failed")?;
    let mut chunks = vec![genesis.raw_bytes().to_vec()];
    let mut kinds = Vec::with_capacity(chain_length);
    let mut editor = Editor::new(&doc, &facts)?;
    for step in 1..chain_length {
        let kind = editor.apply_next(&mut doc, step)?;
        doc.commit_with(
            automerge::transaction::CommitOptions::default()
                .with_time(TEMPLATE_TIME + step as i64 * 3_600),
        );
        let change = doc
            .get_last_local_change()
            .ok_or_else(|| anyhow!("template {index} step {step} made no change"))?;
        chunks.push(change.raw_bytes().to_vec());
        kinds.push(kind);
    }
    Ok(Template {
        actor,
        chunks,
        kinds,
        signed: Mutex::new(HashMap::new()),
        verified: Mutex::new(HashMap::new()),
    })
}

/// Makes the follow-up edits of a template: mostly package upgrades, some reboots and a few
/// configuration edits, in a fixed order.
struct Editor {
    facts: ObjId,
    packages: Vec<(ObjId, String)>,
    upgrades: u64,
}

impl Editor {
    fn new(doc: &AutoCommit, facts: &Facts) -> Result<Editor> {
        let facts_obj = map_child(doc, &automerge::ROOT, "facts")?;
        let packages_obj = map_child(doc, &facts_obj, "packages")?;
        let mut packages = Vec::new();
        for (key, package) in &facts.packages {
            packages.push((map_child(doc, &packages_obj, key)?, package.version.clone()));
        }
        Ok(Editor {
            facts: facts_obj,
            packages,
            upgrades: 0,
        })
    }

    fn apply_next(&mut self, doc: &mut AutoCommit, step: usize) -> Result<ChangeKind> {
        // Of every 20 changes: 16 upgrades, 3 reboots, 1 configuration edit.
        let kind = match step % 20 {
            7 | 13 | 19 => ChangeKind::Reboot,
            10 => ChangeKind::ConfigEdit,
            _ => ChangeKind::Upgrade,
        };
        match kind {
            ChangeKind::Upgrade => {
                // Walk the packages with a stride, as security updates touch scattered packages.
                let slot = (self.upgrades as usize * 37) % self.packages.len();
                self.upgrades += 1;
                let (object, version) = &mut self.packages[slot];
                *version = bump_version(version);
                doc.put(&*object, "version", version.as_str())?;
            }
            ChangeKind::Reboot => {
                let system = map_child(doc, &self.facts, "system")?;
                doc.put(&system, "boot_time", TEMPLATE_TIME + step as i64 * 3_600)?;
            }
            ChangeKind::ConfigEdit => {
                let files = match doc.get(&self.facts, "tracked_files")? {
                    Some((Value::Object(_), id)) => id,
                    _ => doc.put_object(&self.facts, "tracked_files", automerge::ObjType::Map)?,
                };
                let file = match doc.get(&files, "/etc/fleetmesh-sim.conf")? {
                    Some((Value::Object(_), id)) => id,
                    _ => {
                        doc.put_object(&files, "/etc/fleetmesh-sim.conf", automerge::ObjType::Map)?
                    }
                };
                let digest = hex_digest(&(step as u64).to_le_bytes());
                doc.put(&file, "exists", true)?;
                doc.put(&file, "sha256", digest)?;
                doc.put(&file, "size", 1_024 + step as u64)?;
                doc.put(&file, "mtime", TEMPLATE_TIME + step as i64 * 3_600)?;
            }
        }
        Ok(kind)
    }
}

fn map_child(doc: &AutoCommit, parent: &ObjId, key: &str) -> Result<ObjId> {
    match doc.get(parent, key)? {
        Some((Value::Object(_), id)) => Ok(id),
        _ => bail!("template document has no map at {key:?}"),
    }
}

/// Returns the next Debian stable-update version: `1.2-3` becomes `1.2-3+deb12u1`, and
/// `…+deb12uN` becomes `…+deb12u(N+1)`.
fn bump_version(version: &str) -> String {
    if let Some((head, update)) = version.rsplit_once("+deb12u") {
        if let Ok(number) = update.parse::<u32>() {
            return format!("{head}+deb12u{}", number + 1);
        }
    }
    format!("{version}+deb12u1")
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_version_counts_updates() {
        assert_eq!(bump_version("1.2-3"), "1.2-3+deb12u1");
        assert_eq!(bump_version("1.2-3+deb12u9"), "1.2-3+deb12u10");
    }
}
