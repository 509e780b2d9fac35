//! `fleetmesh fleet init`, `fleet token` and `fleet revoke`: the fleet root key, join tokens and
//! revocations.
//!
//! `init` and `token` run on an administrator's machine, never on a managed node. The root key
//! file defaults to the user's configuration directory, away from the node data directory. The
//! passphrase comes from `FLEETMESH_FLEET_PASSPHRASE`, else from a terminal prompt without echo,
//! else from the first line of standard input. `token --local` instead signs with the root key of
//! a local fleet, which `fleetmesh up` keeps in the data directory of the node that created it.
//!
//! `revoke` runs on an operator node: it writes a signed revocation into the tenant's membership
//! document in the node's store, and the running daemon passes it on.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use fleetmesh_model::membership::{
    format_utc, JoinToken, MembershipDocument, Revocation, RevocationTarget, Role, Scope,
    SignedRevocation, TokenId, TokenValidity,
};
use fleetmesh_model::{DocId, DocKind, NodeId, TenantId};
use fleetmesh_node::{fleetkey, keyfile};
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::operator::{self, unix_now};
use crate::times::parse_duration_secs;

/// Environment variable that supplies the fleet key passphrase.
const PASSPHRASE_ENV: &str = "FLEETMESH_FLEET_PASSPHRASE";

/// Options of `fleetmesh fleet`.
#[derive(Args, Debug)]
pub struct FleetArgs {
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Subcommand, Debug)]
enum FleetCommand {
    /// Create the fleet root key, encrypted with a passphrase, and print the fleet id.
    Init(InitArgs),
    /// Create a join token that enrolls machines into one tenant and site, and print it.
    Token(TokenArgs),
    /// Revoke a node or a join token (run on an operator node).
    Revoke(RevokeArgs),
}

/// The `--key-file` option shared by the fleet commands.
#[derive(Args, Debug)]
struct KeyFileArg {
    /// Fleet root key file [default: $XDG_CONFIG_HOME/fleetmesh/fleet.key, or
    /// ~/.config/fleetmesh/fleet.key].
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
}

impl KeyFileArg {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.key_file {
            Some(path) => Ok(path.clone()),
            None => fleetkey::default_path().context(
                "neither XDG_CONFIG_HOME nor HOME is set, so there is no default fleet key path; pass --key-file",
            ),
        }
    }
}

#[derive(Args, Debug)]
struct InitArgs {
    #[command(flatten)]
    key: KeyFileArg,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// Tenant (customer) that enrolled machines belong to.
    #[arg(long, value_name = "NAME")]
    tenant: String,

    /// Site (location) of the enrolled machines.
    #[arg(long, value_name = "NAME")]
    site: String,

    /// Role of the enrolled machines.
    #[arg(long, value_enum)]
    role: RoleArg,

    /// For operators: further tenants whose documents they may replicate and write,
    /// comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    tenants: Vec<String>,

    /// How long the token can enroll machines, as a number and a unit (s, m, h, d, w), e.g. 24h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs)]
    expires: i64,

    /// How long certificates of machines enrolled with this token stay valid, counted from now.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs, default_value = "365d")]
    valid_for: i64,

    #[command(flatten)]
    key: KeyFileArg,

    /// Sign with the root key of the local fleet that `fleetmesh up` created in the data
    /// directory, instead of a key file.
    #[arg(long, conflicts_with = "key_file")]
    local: bool,
}

#[derive(Args, Debug)]
struct RevokeArgs {
    /// The node id to revoke, or the id of a join token (32 hex digits) whose enrolled nodes to
    /// revoke.
    #[arg(value_name = "NODE|TOKEN")]
    target: String,

    /// Tenant whose membership records the revocation [default: this operator's own tenant].
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,

    /// Why, for the people who read the membership later.
    #[arg(long, default_value = "", value_name = "TEXT")]
    reason: String,

    /// For a token: revoke only nodes enrolled after this many seconds since the Unix epoch.
    /// Without it, every node the token enrolled is revoked.
    #[arg(long, value_name = "UNIX_SECONDS", allow_negative_numbers = true)]
    enrolled_after: Option<i64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoleArg {
    /// A managed machine.
    Node,
    /// A technician's or NOC machine that manages tenants.
    Operator,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Node => Role::Node,
            RoleArg::Operator => Role::Operator,
        }
    }
}

/// Runs a `fleetmesh fleet` subcommand.
pub fn run(data_dir: &Path, args: FleetArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        FleetCommand::Init(args) => init(args),
        FleetCommand::Token(args) => token(data_dir, args),
        FleetCommand::Revoke(args) => revoke(data_dir, args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let path = args.key.path()?;
    if path.exists() {
        anyhow::bail!(
            "fleet key {} already exists; keep using it, or move it aside to create a new fleet",
            path.display()
        );
    }
    let passphrase = read_passphrase(&path, true)?;
    let fleet = fleetkey::create(&path, &passphrase)?;

    println!("fleet id: {fleet}");
    println!("key file: {}", path.display());
    eprintln!(
        "The key file is encrypted with your passphrase. Keep it and a backup off managed machines: whoever has both can enroll machines into this fleet."
    );
    eprintln!("Create a join token with: fleetmesh fleet token --tenant NAME --site NAME --role node --expires 24h");
    Ok(ExitCode::SUCCESS)
}

fn token(data_dir: &Path, args: TokenArgs) -> anyhow::Result<ExitCode> {
    // Check the request before asking for the passphrase.
    let tenant = TenantId::new(&args.tenant)?;
    let tenants = args
        .tenants
        .iter()
        .filter(|name| !name.is_empty())
        .map(|name| TenantId::new(name))
        .collect::<Result<Vec<_>, _>>()?;
    if args.valid_for < args.expires {
        anyhow::bail!(
            "--valid-for must be at least --expires, because a certificate issued at the end of the token's window must still be valid"
        );
    }
    let scope = Scope::new(tenant, &args.site, args.role.into(), tenants)?;
    let now = unix_now()?;
    let validity = TokenValidity {
        not_before: now,
        expires: now.saturating_add(args.expires),
        certificate_expires: now.saturating_add(args.valid_for),
    };

    // Sign with the root key.
    let root = if args.local {
        keyfile::load_local_root(data_dir)?.with_context(|| {
            format!(
                "{} holds no local fleet root key; run `fleetmesh up` there first, or pass --key-file for a fleet made with `fleet init`",
                data_dir.display()
            )
        })?
    } else {
        let path = args.key.path()?;
        // Report a missing or exposed key file before prompting for the passphrase.
        fleetkey::read_fleet_id(&path)?;
        let passphrase = read_passphrase(&path, false)?;
        fleetkey::load(&path, &passphrase)?
    };
    let token = JoinToken::create(&root, scope, validity, &mut OsRng)?;

    println!("{}", token.to_text());
    let enrollment = token.enrollment();
    eprintln!(
        "Join token {} for tenant {}, site {}, role {}: enrolls machines until {}; their certificates expire at {}.",
        enrollment.token_id,
        enrollment.scope.tenant,
        enrollment.scope.site,
        enrollment.scope.role,
        format_utc(validity.expires),
        format_utc(validity.certificate_expires),
    );
    // TODO: print the enrollment command once `fleetmesh join` exists.
    eprintln!("Keep the token secret: anyone who has it can enroll machines until it expires.");
    Ok(ExitCode::SUCCESS)
}

fn revoke(data_dir: &Path, args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let target = parse_target(&args.target, args.enrolled_after)?;
    let operator::Operator {
        key,
        node,
        mut store,
        tenant,
        now,
        chain,
        ..
    } = operator::open(data_dir, args.tenant.as_deref(), "fleet revoke")?;
    if let RevocationTarget::Node(target_node) = target {
        if target_node == node {
            anyhow::bail!(
                "{node} is this node itself; run `fleet revoke` on another operator node"
            );
        }
    }

    let revocation = Revocation {
        tenant: tenant.clone(),
        target,
        reason: args.reason.clone(),
        issued_at: now,
        issuer: node,
    };
    let signed = SignedRevocation::sign(revocation, &key, Some(chain))?;
    let doc_id = DocId::tenant_doc(DocKind::Membership, tenant.clone());
    let changes = store.document_changes(&doc_id)?;
    let mut doc = MembershipDocument::from_changes(tenant.clone(), changes.iter())?;
    match doc.add_revocation(&signed, now, &key)? {
        Some(change) => {
            store.insert_local_tenant_change(&change)?;
            println!(
                "revoked {} in tenant {tenant} (revocation {})",
                args.target,
                signed.id()
            );
            eprintln!("A running node passes the revocation on within a second; peers refuse the revoked node from then on.");
        }
        None => println!("{} was already revoked in tenant {tenant}", args.target),
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses the target of `fleet revoke`: a node id, or a token id.
fn parse_target(text: &str, enrolled_after: Option<i64>) -> anyhow::Result<RevocationTarget> {
    if let Ok(node) = text.parse::<NodeId>() {
        if enrolled_after.is_some() {
            anyhow::bail!("--enrolled-after applies to tokens, but {text} is a node id; drop --enrolled-after");
        }
        return Ok(RevocationTarget::Node(node));
    }
    if let Ok(token_id) = text.parse::<TokenId>() {
        return Ok(RevocationTarget::Token {
            token_id,
            enrolled_after: enrolled_after.unwrap_or(i64::MIN),
        });
    }
    anyhow::bail!(
        "{text:?} is neither a node id (as `fleetmesh nodes` prints) nor a join token id (32 hex digits, as `fleet token` prints)"
    )
}

/// Reads the passphrase for the key file at `path`. With `confirm`, a terminal prompt reads it
/// twice and requires both entries to match.
fn read_passphrase(path: &Path, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    let empty = || {
        anyhow::anyhow!(
            "the passphrase for fleet key {} is empty; set {PASSPHRASE_ENV} or type a passphrase that is not empty",
            path.display()
        )
    };

    if let Some(value) = std::env::var_os(PASSPHRASE_ENV) {
        let value = Zeroizing::new(value.into_string().map_err(|_| {
            anyhow::anyhow!("{PASSPHRASE_ENV} is not valid UTF-8; set it to a UTF-8 passphrase")
        })?);
        if value.is_empty() {
            return Err(empty());
        }
        return Ok(value);
    }

    if std::io::stdin().is_terminal() {
        let prompt = format!("Passphrase for fleet key {}: ", path.display());
        let first = Zeroizing::new(
            rpassword::prompt_password(prompt)
                .context("failed to read the passphrase from the terminal")?,
        );
        if first.is_empty() {
            return Err(empty());
        }
        if confirm {
            let second = Zeroizing::new(
                rpassword::prompt_password("Repeat the passphrase: ")
                    .context("failed to read the passphrase from the terminal")?,
            );
            if *first != *second {
                anyhow::bail!("the two passphrases differ; run the command again");
            }
        }
        return Ok(first);
    }

    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("failed to read the passphrase from standard input")?;
    let passphrase = Zeroizing::new(trim_line_end(&line).to_string());
    if passphrase.is_empty() {
        return Err(empty());
    }
    Ok(passphrase)
}

/// Removes one trailing `\n` or `\r\n`; other whitespace is part of the passphrase.
fn trim_line_end(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_end_trimmed_once() {
        assert_eq!(trim_line_end("secret\n"), "secret");
        assert_eq!(trim_line_end("secret\r\n"), "secret");
        assert_eq!(trim_line_end(" secret \n\n"), " secret \n");
        assert_eq!(trim_line_end("secret"), "secret");
    }
}
