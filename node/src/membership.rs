//! Membership on a running node: its own credentials, the local fleet that `fleetmesh up` creates
//! when no fleet is configured, and the verifier that checks every received change against its
//! author's certificate chain and the tenant's revocations.
//!
//! A node learns the chain of each author before it accepts the author's changes: directly
//! connected peers present theirs in the hello, and a peer that relays another author's changes
//! sends that author's chain first (see `daemon`). Chains are remembered in the store, so a node
//! can verify and pass on what it stores after a restart.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use fleetmesh_model::membership::{
    authorize_change, CertificateChain, FleetId, JoinToken, MembershipDocument, MembershipError,
    RevocationSet, Role, Scope, TokenValidity, VerifiedMember,
};
use fleetmesh_model::{DocId, DocKind, NodeId, SignedChange, TenantId, VerifyError};
use rand::rngs::OsRng;

use crate::store::{Store, StoreError};
use crate::sync::Verify;

/// Meta key of the fleet id (text form).
pub const META_FLEET: &str = "fleet_id";

/// Meta key of this node's certificate chain (hex).
pub const META_CHAIN: &str = "certificate_chain";

/// Meta key of the peer addresses given to `fleetmesh join`, one per line.
pub const META_JOIN_PEERS: &str = "join_peers";

/// Largest change accepted from a peer, in bytes. A collection of a large machine is a few
/// hundred kilobytes at first; later changes are far smaller.
pub const CHANGE_LEN_MAX: usize = 4 * 1024 * 1024;

/// How long a join token printed by `fleetmesh up` for its local fleet stays usable, in seconds.
pub const LOCAL_TOKEN_SECS: i64 = 24 * 3600;

/// How long certificates of a local fleet stay valid, in seconds (ten years): a local fleet has
/// no operator to renew them.
pub const LOCAL_CERTIFICATE_SECS: i64 = 10 * 365 * 24 * 3600;

/// Errors from setting up or reading this node's membership.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A membership record is invalid.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The stored credentials do not decode.
    #[error("the certificate chain stored in {path} is damaged ({reason}); enroll again with `fleetmesh join TOKEN`")]
    DamagedChain {
        /// The store.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The node is enrolled already.
    #[error("this node is already enrolled in fleet {fleet} as tenant {tenant}, site {site}; use another --data-dir to enroll a new node")]
    AlreadyEnrolled {
        /// The current fleet.
        fleet: FleetId,
        /// The current tenant.
        tenant: TenantId,
        /// The current site.
        site: String,
    },
    /// The local root key file is unusable.
    #[error(transparent)]
    Key(#[from] crate::keyfile::KeyFileError),
}

/// This node's membership: its fleet and its certificate chain.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The fleet.
    pub fleet: FleetId,
    /// This node's chain, root -> token -> node.
    pub chain: CertificateChain,
}

impl Credentials {
    /// Reads the credentials from the store; `None` when the node is not enrolled.
    pub fn load(store: &Store) -> Result<Option<Credentials>, SetupError> {
        let damaged = |reason: String| SetupError::DamagedChain {
            path: store.path().display().to_string(),
            reason,
        };
        let Some(chain_hex) = store.meta(META_CHAIN)? else {
            return Ok(None);
        };
        let bytes = hex::decode(chain_hex.trim()).map_err(|err| damaged(err.to_string()))?;
        let chain = CertificateChain::decode(&bytes).map_err(|err| damaged(err.to_string()))?;
        Ok(Some(Credentials {
            fleet: chain.fleet(),
            chain,
        }))
    }

    /// Writes the credentials to the store.
    pub fn save(&self, store: &Store) -> Result<(), SetupError> {
        store.set_meta(META_FLEET, &self.fleet.to_string())?;
        store.set_meta(META_CHAIN, &hex::encode(self.chain.encode()))?;
        Ok(())
    }

    /// Verifies this node's own chain at `now`.
    pub fn verify(&self, node: &NodeId, now: i64) -> Result<VerifiedMember, MembershipError> {
        self.chain
            .verify(&self.fleet, node, now, &RevocationSet::new())
    }
}

/// Enrolls this node with a join token and stores the resulting credentials. Fails when the node
/// is enrolled already, so a mistyped command cannot move a node to another fleet.
pub fn enroll(
    store: &Store,
    node_key: &SigningKey,
    token: &JoinToken,
    now: i64,
) -> Result<(Credentials, VerifiedMember), SetupError> {
    if let Some(existing) = Credentials::load(store)? {
        let scope = &existing.chain.certificate().scope;
        return Err(SetupError::AlreadyEnrolled {
            fleet: existing.fleet,
            tenant: scope.tenant.clone(),
            site: scope.site.clone(),
        });
    }
    let node = NodeId(node_key.verifying_key().to_bytes());
    let chain = token.enroll(node, now)?;
    let credentials = Credentials {
        fleet: token.fleet(),
        chain,
    };
    let member = credentials.verify(&node, now)?;
    credentials.save(store)?;
    store.save_member(&node, &credentials.chain.encode())?;
    Ok((credentials, member))
}

/// Creates a local fleet whose root key lives in `data_dir`, and enrolls this node as its
/// operator for `tenant` at `site`. Returns the credentials.
pub fn create_local_fleet(
    data_dir: &std::path::Path,
    store: &Store,
    node_key: &SigningKey,
    tenant: TenantId,
    site: &str,
    now: i64,
) -> Result<Credentials, SetupError> {
    let (root, _) = crate::keyfile::load_or_create_local_root(data_dir)?;
    let scope = Scope::new(tenant, site, Role::Operator, Vec::new())?;
    let token = local_token(&root, scope, now)?;
    let (credentials, _) = enroll(store, node_key, &token, now)?;
    Ok(credentials)
}

/// Creates a join token of a local fleet, valid for [`LOCAL_TOKEN_SECS`].
pub fn local_token(
    root: &SigningKey,
    scope: Scope,
    now: i64,
) -> Result<JoinToken, MembershipError> {
    let validity = TokenValidity {
        not_before: now,
        expires: now.saturating_add(LOCAL_TOKEN_SECS),
        certificate_expires: now.saturating_add(LOCAL_CERTIFICATE_SECS),
    };
    JoinToken::create(root, scope, validity, &mut OsRng)
}

/// Reads the revocations of every membership document in the store.
pub fn stored_revocations(store: &Store, fleet: &FleetId) -> Result<RevocationSet, SetupError> {
    let mut set = RevocationSet::new();
    for id in store.documents()? {
        if id.kind != DocKind::Membership {
            continue;
        }
        let changes = store.document_changes(&id)?;
        let mut doc = MembershipDocument::from_changes(id.tenant.clone(), changes.iter())?;
        let (found, rejected) = doc.revocation_set(fleet);
        for record in rejected {
            tracing::warn!(tenant = %id.tenant, key = %record.key, error = %record.error,
                           "ignored an invalid revocation record");
        }
        set.extend(&found);
    }
    Ok(set)
}

/// The verifier's record of one author.
#[derive(Clone, Debug)]
enum Author {
    /// The chain verified; the member may write what its role allows.
    Valid(Box<VerifiedMember>, CertificateChain),
    /// The chain verified but is revoked.
    Revoked(CertificateChain),
}

/// Outcome of [`MemberVerifier::learn`].
#[derive(Debug, PartialEq, Eq)]
pub enum Learned {
    /// The chain is new and valid.
    New,
    /// The chain was known already.
    Known,
    /// The chain is valid but revoked; changes by its node are refused.
    Revoked,
}

/// The change verifier of a running node: signature, size, the author's chain, revocations and
/// the author's right to write the document.
#[derive(Debug)]
pub struct MemberVerifier {
    fleet: FleetId,
    authors: BTreeMap<NodeId, Author>,
    revocations: RevocationSet,
}

impl MemberVerifier {
    /// Creates a verifier for `fleet` with no known author yet.
    pub fn new(fleet: FleetId) -> MemberVerifier {
        MemberVerifier {
            fleet,
            authors: BTreeMap::new(),
            revocations: RevocationSet::new(),
        }
    }

    /// Returns the fleet.
    pub fn fleet(&self) -> &FleetId {
        &self.fleet
    }

    /// Returns the revocations in force.
    pub fn revocations(&self) -> &RevocationSet {
        &self.revocations
    }

    /// Verifies a chain presented in a hello by the authenticated `peer`, at `now`. On success
    /// the author is remembered.
    pub fn admit_peer(
        &mut self,
        chain: &CertificateChain,
        peer: &NodeId,
        now: i64,
    ) -> Result<VerifiedMember, MembershipError> {
        let member = chain.verify(&self.fleet, peer, now, &self.revocations)?;
        self.authors.insert(
            *peer,
            Author::Valid(Box::new(member.clone()), chain.clone()),
        );
        Ok(member)
    }

    /// Learns the chain of an author whose changes a peer relays. Expiry is not checked here: a
    /// change written while the author's certificate was valid stays valid, and an author with
    /// an expired certificate cannot connect to anyone to write new ones.
    pub fn learn(&mut self, chain: &CertificateChain) -> Result<Learned, MembershipError> {
        let node = chain.node();
        if let Some(Author::Valid(_, known) | Author::Revoked(known)) = self.authors.get(&node) {
            if known == chain {
                return Ok(Learned::Known);
            }
        }
        let at = chain.certificate().expires.saturating_sub(1);
        match chain.verify(&self.fleet, &node, at, &self.revocations) {
            Ok(member) => {
                // A node re-enrolled with a new token replaces its old chain.
                self.authors
                    .insert(node, Author::Valid(Box::new(member), chain.clone()));
                Ok(Learned::New)
            }
            Err(MembershipError::Revoked { .. }) => {
                self.authors.insert(node, Author::Revoked(chain.clone()));
                Ok(Learned::Revoked)
            }
            Err(err) => Err(err),
        }
    }

    /// Returns the chain of `node`, if known and not revoked.
    pub fn chain_of(&self, node: &NodeId) -> Option<&CertificateChain> {
        match self.authors.get(node) {
            Some(Author::Valid(_, chain)) => Some(chain),
            _ => None,
        }
    }

    /// Returns the verified member `node`, if known and not revoked.
    pub fn member(&self, node: &NodeId) -> Option<&VerifiedMember> {
        match self.authors.get(node) {
            Some(Author::Valid(member, _)) => Some(member),
            _ => None,
        }
    }

    /// Replaces the revocations with `set` and returns the nodes that are revoked now and were
    /// not before.
    pub fn set_revocations(&mut self, set: RevocationSet) -> BTreeSet<NodeId> {
        self.revocations = set;
        let mut newly = BTreeSet::new();
        for (node, author) in &mut self.authors {
            if let Author::Valid(_, chain) = author {
                if self.revocations.is_revoked(chain) {
                    newly.insert(*node);
                    *author = Author::Revoked(chain.clone());
                }
            }
        }
        newly
    }
}

impl Verify for MemberVerifier {
    fn verify(&mut self, change: &SignedChange) -> Result<(), VerifyError> {
        let describe = |change: &SignedChange| {
            (
                change.doc().to_string(),
                change.author().to_string(),
                change.seq(),
            )
        };
        if change.bytes().len() > CHANGE_LEN_MAX {
            let (doc, author, seq) = describe(change);
            return Err(VerifyError::TooLarge {
                doc,
                author,
                seq,
                len: change.bytes().len(),
                max: CHANGE_LEN_MAX,
            });
        }
        change.verify()?;
        match self.authors.get(&change.author()) {
            Some(Author::Valid(member, _)) => authorize_change(change, member).map_err(|err| {
                let (doc, author, seq) = describe(change);
                VerifyError::NotAuthorized {
                    doc,
                    author,
                    seq,
                    reason: err.to_string(),
                }
            }),
            Some(Author::Revoked(_)) => {
                let (doc, author, seq) = describe(change);
                Err(VerifyError::Refused {
                    doc,
                    author,
                    seq,
                    reason: "its author was revoked".to_string(),
                })
            }
            None => {
                let (doc, author, seq) = describe(change);
                Err(VerifyError::NotAuthorized {
                    doc,
                    author,
                    seq,
                    reason: "the sender did not present the author's certificate chain first"
                        .to_string(),
                })
            }
        }
    }
}

/// Reports whether `doc` is a membership document.
pub fn is_membership(doc: &DocId) -> bool {
    doc.kind == DocKind::Membership
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmesh_model::membership::{Revocation, RevocationTarget, SignedRevocation};
    use fleetmesh_model::{Facts, Identity, NodeDocument};

    struct Fleet {
        root: SigningKey,
    }

    impl Fleet {
        fn new() -> Fleet {
            Fleet {
                root: SigningKey::generate(&mut OsRng),
            }
        }

        fn id(&self) -> FleetId {
            FleetId::from_root(&self.root.verifying_key())
        }

        fn enroll(&self, tenant: &str, role: Role, now: i64) -> (SigningKey, CertificateChain) {
            let key = SigningKey::generate(&mut OsRng);
            let scope = Scope::new(TenantId::new(tenant).unwrap(), "hq", role, vec![]).unwrap();
            let token = local_token(&self.root, scope, now).unwrap();
            let chain = token
                .enroll(NodeId(key.verifying_key().to_bytes()), now)
                .unwrap();
            (key, chain)
        }
    }

    fn node_change(key: &SigningKey, tenant: &str, hostname: &str) -> SignedChange {
        let node = NodeId(key.verifying_key().to_bytes());
        let tenant = TenantId::new(tenant).unwrap();
        let mut doc = NodeDocument::new(tenant.clone(), node);
        let identity = Identity {
            node_id: node.to_string(),
            tenant: tenant.to_string(),
            site: "hq".to_string(),
            hostname: hostname.to_string(),
            agent_version: "test".to_string(),
        };
        let mut facts = Facts::default();
        facts.system.hostname = hostname.to_string();
        doc.record_signed(&identity, &facts, 1_000, key)
            .unwrap()
            .unwrap()
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn unknown_author_is_a_peer_fault() {
        let fleet = Fleet::new();
        let (key, _) = fleet.enroll("acme", Role::Node, NOW);
        let mut verifier = MemberVerifier::new(fleet.id());
        let err = verifier
            .verify(&node_change(&key, "acme", "a"))
            .unwrap_err();
        assert!(matches!(err, VerifyError::NotAuthorized { .. }), "{err}");
        assert!(err.is_peer_fault());
    }

    #[test]
    fn learned_author_may_write_its_own_document_only_in_its_tenant() {
        let fleet = Fleet::new();
        let (key, chain) = fleet.enroll("acme", Role::Node, NOW);
        let mut verifier = MemberVerifier::new(fleet.id());
        assert_eq!(verifier.learn(&chain).unwrap(), Learned::New);
        assert_eq!(verifier.learn(&chain).unwrap(), Learned::Known);
        verifier.verify(&node_change(&key, "acme", "a")).unwrap();
        let err = verifier
            .verify(&node_change(&key, "globex", "a"))
            .unwrap_err();
        assert!(matches!(err, VerifyError::NotAuthorized { .. }), "{err}");
    }

    #[test]
    fn foreign_chain_is_rejected() {
        let ours = Fleet::new();
        let theirs = Fleet::new();
        let (_, chain) = theirs.enroll("acme", Role::Node, NOW);
        let mut verifier = MemberVerifier::new(ours.id());
        assert!(matches!(
            verifier.learn(&chain),
            Err(MembershipError::ForeignFleet { .. })
        ));
        let node = chain.node();
        assert!(verifier.admit_peer(&chain, &node, NOW).is_err());
    }

    #[test]
    fn peer_must_present_its_own_chain() {
        let fleet = Fleet::new();
        let (_, chain) = fleet.enroll("acme", Role::Node, NOW);
        let (other, _) = fleet.enroll("acme", Role::Node, NOW);
        let mut verifier = MemberVerifier::new(fleet.id());
        let err = verifier
            .admit_peer(&chain, &NodeId(other.verifying_key().to_bytes()), NOW)
            .unwrap_err();
        assert!(matches!(err, MembershipError::WrongNode { .. }), "{err}");
    }

    #[test]
    fn revocation_refuses_later_changes_without_blaming_the_relay() {
        let fleet = Fleet::new();
        let (key, chain) = fleet.enroll("acme", Role::Node, NOW);
        let mut verifier = MemberVerifier::new(fleet.id());
        verifier.learn(&chain).unwrap();

        let revocation = Revocation {
            tenant: TenantId::new("acme").unwrap(),
            target: RevocationTarget::Node(chain.node()),
            issuer: fleet.id().as_node(),
            issued_at: NOW,
            reason: "laptop stolen".to_string(),
        };
        let signed = SignedRevocation::sign(revocation, &fleet.root, None).unwrap();
        let mut set = RevocationSet::new();
        set.insert(&fleet.id(), &signed).unwrap();
        let newly = verifier.set_revocations(set);
        assert_eq!(newly, BTreeSet::from([chain.node()]));

        let err = verifier
            .verify(&node_change(&key, "acme", "a"))
            .unwrap_err();
        assert!(matches!(err, VerifyError::Refused { .. }), "{err}");
        assert!(!err.is_peer_fault());
        assert_eq!(verifier.learn(&chain).unwrap(), Learned::Known);
        assert!(verifier.chain_of(&chain.node()).is_none());
    }

    #[test]
    fn enroll_stores_credentials_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fleet = Fleet::new();
        let scope =
            Scope::new(TenantId::new("acme").unwrap(), "leeds", Role::Node, vec![]).unwrap();
        let token = local_token(&fleet.root, scope, NOW).unwrap();
        let key = SigningKey::generate(&mut OsRng);
        let (credentials, member) = enroll(&store, &key, &token, NOW).unwrap();
        assert_eq!(member.site, "leeds");
        let loaded = Credentials::load(&store).unwrap().unwrap();
        assert_eq!(loaded.chain, credentials.chain);
        assert_eq!(store.members().unwrap().len(), 1);
        let again = enroll(&store, &key, &token, NOW).unwrap_err();
        assert!(
            matches!(again, SetupError::AlreadyEnrolled { .. }),
            "{again}"
        );
    }
}
