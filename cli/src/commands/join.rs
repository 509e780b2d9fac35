//! `fleetmesh join TOKEN`: enroll this node into a fleet.
//!
//! The node signs its own certificate with the token's enrollment key, so enrolling needs no
//! contact with the fleet root key or any other machine. The peers given with `--peer` are kept
//! in the store, and `fleetmesh up` dials them from then on.

use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use fleetmesh_model::membership::{format_utc, JoinToken};
use fleetmesh_node::daemon::{create_private_dir, unix_now};
use fleetmesh_node::keyfile;
use fleetmesh_node::membership::{self, META_JOIN_PEERS};
use fleetmesh_node::store::Store;
use libp2p::Multiaddr;

/// Environment variable that can supply the join token, which keeps it out of the process list.
const TOKEN_ENV: &str = "FLEETMESH_JOIN_TOKEN";

/// Options of `fleetmesh join`.
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The join token printed by `fleetmesh fleet token` (or by the first node's `up`); `-`
    /// reads it from standard input, and FLEETMESH_JOIN_TOKEN can supply it too.
    #[arg(value_name = "TOKEN", env = TOKEN_ENV, hide_env_values = true)]
    token: String,

    /// A peer to dial, as a multiaddr (repeatable); kept for every later `fleetmesh up`.
    #[arg(long = "peer", value_name = "MULTIADDR", value_parser = super::up::parse_multiaddr)]
    peers: Vec<Multiaddr>,
}

/// Enrolls the node in `data_dir`.
pub fn run(data_dir: &Path, args: JoinArgs) -> anyhow::Result<ExitCode> {
    let text = if args.token == "-" {
        read_token_line()?
    } else {
        args.token.clone()
    };
    let token = JoinToken::from_text(text.trim())?;
    // Check the token's window before creating anything, so a refused join leaves no trace.
    let now = unix_now();
    let validity = token.enrollment().validity;
    if now >= validity.expires {
        anyhow::bail!(
            "the join token expired at {}; ask an operator for a new token (`fleetmesh fleet token`)",
            format_utc(validity.expires)
        );
    }

    create_private_dir(data_dir)?;
    let (key, _) = keyfile::load_or_create(data_dir)?;
    let store = Store::open(data_dir)?;
    let (credentials, member) = membership::enroll(&store, &key, &token, now)?;
    if !args.peers.is_empty() {
        let lines: Vec<String> = args.peers.iter().map(ToString::to_string).collect();
        store.set_meta(META_JOIN_PEERS, &lines.join("\n"))?;
    }

    println!("node {}", member.node);
    println!("fleet {}", credentials.fleet);
    println!(
        "enrolled as {} of tenant {} at site {}; the certificate is valid until {}",
        member.role.as_str(),
        member.tenant,
        member.site,
        format_utc(member.expires)
    );
    eprintln!("Start the node with: {}", up_command(data_dir));
    Ok(ExitCode::SUCCESS)
}

/// Returns the `fleetmesh up` command for `data_dir`, naming the directory unless `up` finds it
/// by itself (the default, or the one in `FLEETMESH_DATA_DIR`).
fn up_command(data_dir: &Path) -> String {
    let from_env = std::env::var_os("FLEETMESH_DATA_DIR").map(std::path::PathBuf::from);
    if data_dir == crate::paths::default_data_dir() || from_env.as_deref() == Some(data_dir) {
        return "fleetmesh up".to_string();
    }
    format!(
        "fleetmesh up --data-dir {}",
        shell_word(&data_dir.to_string_lossy())
    )
}

/// Quotes `text` for a POSIX shell when it contains anything but plain path characters.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn read_token_line() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("join token: ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the join token from standard input failed")?;
    if line.trim().is_empty() {
        anyhow::bail!(
            "standard input held no join token; pipe the token printed by `fleetmesh fleet token`"
        );
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_word_quotes_only_when_needed() {
        assert_eq!(shell_word("/var/lib/fleetmesh"), "/var/lib/fleetmesh");
        assert_eq!(shell_word("/tmp/my data"), "'/tmp/my data'");
        assert_eq!(shell_word("/tmp/it's"), "'/tmp/it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn up_command_names_other_data_dir() {
        let command = up_command(Path::new("/srv/fleetmesh-test/node-b"));
        assert_eq!(
            command,
            "fleetmesh up --data-dir /srv/fleetmesh-test/node-b"
        );
    }
}
