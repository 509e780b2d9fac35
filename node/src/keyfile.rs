//! The node key file: the ed25519 secret key that is both the libp2p identity and the key that
//! signs every change of this node's document.
//!
//! The file holds one line, `fleetmesh-node-key-v1 <64 hex digits of the secret seed>`, and must
//! have mode 0600 (owner read and write only). A key file that others can read is refused
//! rather than used, because anyone who reads it can write as this node.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use fleetmesh_model::NodeId;
use rand::rngs::OsRng;

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "node.key";

/// File name of the root key of a local fleet, which `fleetmesh up` creates in the data directory
/// of a node started without a fleet. It has the same form with its own header.
pub const LOCAL_ROOT_FILE: &str = "local-fleet-root.key";

const HEADER: &str = "fleetmesh-node-key-v1";
const LOCAL_ROOT_HEADER: &str = "fleetmesh-local-fleet-root-v1";

/// Errors from loading or creating the key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The key file can be read by users other than its owner.
    #[error("key file {path} has mode {mode:04o}, but must not be readable by others; run `chmod 600 {path}`")]
    Permissions {
        /// Path of the key file.
        path: PathBuf,
        /// The permission bits found.
        mode: u32,
    },
    /// The key file does not have the expected format.
    #[error("key file {path} is invalid ({reason}); restore it from a backup, or move it aside to create a new node identity")]
    Invalid {
        /// Path of the key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the file failed.
    #[error("cannot access key file {path}: {source}")]
    Io {
        /// Path of the key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Loads the key from `data_dir`, or creates one with mode 0600 if there is none.
/// Returns the key and whether it was created now.
pub fn load_or_create(data_dir: &Path) -> Result<(SigningKey, bool), KeyFileError> {
    load_or_create_with(&data_dir.join(KEY_FILE), HEADER)
}

/// Loads the local fleet root key from `data_dir`, or creates one with mode 0600.
/// Returns the key and whether it was created now.
pub fn load_or_create_local_root(data_dir: &Path) -> Result<(SigningKey, bool), KeyFileError> {
    load_or_create_with(&data_dir.join(LOCAL_ROOT_FILE), LOCAL_ROOT_HEADER)
}

/// Loads the local fleet root key from `data_dir`; `None` when the node has none.
pub fn load_local_root(data_dir: &Path) -> Result<Option<SigningKey>, KeyFileError> {
    let path = data_dir.join(LOCAL_ROOT_FILE);
    match fs::metadata(&path) {
        Ok(_) => Ok(Some(load_with(&path, LOCAL_ROOT_HEADER)?)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyFileError::Io { path, source }),
    }
}

fn load_or_create_with(path: &Path, header: &str) -> Result<(SigningKey, bool), KeyFileError> {
    match fs::metadata(path) {
        Ok(_) => Ok((load_with(path, header)?, false)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok((create(path, header)?, true)),
        Err(source) => Err(KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Loads a node key file, checking its permissions first.
pub fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
    load_with(path, HEADER)
}

fn load_with(path: &Path, header: &str) -> Result<SigningKey, KeyFileError> {
    let io_error = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mode = fs::metadata(path).map_err(io_error)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::InvalidData => KeyFileError::Invalid {
            path: path.to_path_buf(),
            reason: "not text".to_string(),
        },
        _ => io_error(err),
    })?;
    parse(&text, header).map_err(|reason| KeyFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    })
}

fn parse(text: &str, header: &str) -> Result<SigningKey, String> {
    let mut parts = text.split_whitespace();
    if parts.next() != Some(header) {
        return Err(format!("expected a line starting with {header}"));
    }
    let hex_seed = parts.next().ok_or("the key is missing")?;
    let seed = hex::decode(hex_seed).map_err(|_| "the key is not hex".to_string())?;
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| "the key is not 32 bytes".to_string())?;
    if parts.next().is_some() {
        return Err("unexpected text after the key".to_string());
    }
    Ok(SigningKey::from_bytes(&seed))
}

fn create(path: &Path, header: &str) -> Result<SigningKey, KeyFileError> {
    let key = SigningKey::generate(&mut OsRng);
    let line = format!("{header} {}\n", hex::encode(key.to_bytes()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(key)
}

/// Returns the node id of a key.
pub fn node_id(key: &SigningKey) -> NodeId {
    NodeId(key.verifying_key().to_bytes())
}

/// Converts the key into a libp2p keypair with the same secret.
pub fn to_libp2p(
    key: &SigningKey,
) -> Result<libp2p::identity::Keypair, libp2p::identity::DecodingError> {
    let mut seed = key.to_bytes();
    libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let (created, fresh) = load_or_create(dir.path()).unwrap();
        assert!(fresh);
        let (loaded, fresh) = load_or_create(dir.path()).unwrap();
        assert!(!fresh);
        assert_eq!(created.to_bytes(), loaded.to_bytes());
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn load_rejects_group_readable() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, KeyFileError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn load_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, "hello").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Invalid { .. }), "{err}");
    }

    #[test]
    fn libp2p_peer_id_matches_node_id() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let peer = to_libp2p(&key).unwrap().public().to_peer_id();
        assert_eq!(peer.to_string(), node_id(&key).to_string());
    }
}
