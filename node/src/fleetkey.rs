//! The fleet root key file: the ed25519 secret key whose public half is the fleet id, encrypted
//! with a passphrase.
//!
//! The root key signs join tokens, so it belongs on an administrator's machine and never in a
//! node's data directory. The file is text with one field per line:
//!
//! ```text
//! fleetmesh-fleet-key-v1
//! fleet: fleet1...
//! kdf: argon2id m=65536 t=3 p=1
//! salt: <16 bytes in hex>
//! nonce: <24 bytes in hex>
//! secret: <48 bytes in hex: the 32-byte seed encrypted, then the 16-byte tag>
//! ```
//!
//! The encryption key is Argon2id (version 0x13) of the passphrase and the salt, with the memory
//! (KiB), iteration and lane counts from the `kdf` line. The seed is encrypted with
//! XChaCha20-Poly1305 under the random nonce, with every line before `secret:` as associated
//! data, so editing the fleet id or the parameters makes decryption fail. The file is created
//! with mode 0600, and a file that other users can read is rejected.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::SigningKey;
use fleetmesh_model::membership::FleetId;
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

/// File name of the fleet key inside its configuration directory.
pub const FLEET_KEY_FILE: &str = "fleet.key";

const HEADER: &str = "fleetmesh-fleet-key-v1";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const SEED_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// Largest key file read, in bytes; a valid file is about 330.
const FILE_LEN_MAX: u64 = 4096;

/// Argon2id cost parameters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Number of passes over the memory.
    pub iterations: u32,
    /// Number of lanes.
    pub lanes: u32,
}

impl KdfParams {
    /// The parameters of new files: 64 MiB and 3 passes, so every passphrase guess costs that
    /// much memory and work, and 1 lane because the derivation runs on one thread.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        lanes: 1,
    };

    /// Upper bounds accepted when loading, so that a crafted file cannot make `load` allocate
    /// gigabytes or run for hours.
    const MEMORY_KIB_MAX: u32 = 1024 * 1024;
    const ITERATIONS_MAX: u32 = 64;
    const LANES_MAX: u32 = 16;

    fn to_line(self) -> String {
        format!(
            "argon2id m={} t={} p={}",
            self.memory_kib, self.iterations, self.lanes
        )
    }

    fn parse(text: &str) -> Result<KdfParams, String> {
        let mut parts = text.split_whitespace();
        if parts.next() != Some("argon2id") {
            return Err("the kdf is not argon2id".to_string());
        }
        let mut field = |name: &str| -> Result<u32, String> {
            let part = parts.next().unwrap_or_default();
            part.strip_prefix(name)
                .and_then(|value| value.parse().ok())
                .ok_or_else(|| format!("expected {name}NUMBER in the kdf line, found {part:?}"))
        };
        let params = KdfParams {
            memory_kib: field("m=")?,
            iterations: field("t=")?,
            lanes: field("p=")?,
        };
        if params.memory_kib > Self::MEMORY_KIB_MAX
            || params.iterations > Self::ITERATIONS_MAX
            || params.lanes > Self::LANES_MAX
        {
            return Err(format!(
                "the kdf parameters {} exceed the limits m={} t={} p={}",
                params.to_line(),
                Self::MEMORY_KIB_MAX,
                Self::ITERATIONS_MAX,
                Self::LANES_MAX
            ));
        }
        Ok(params)
    }
}

/// Errors from creating or loading the fleet key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetKeyError {
    /// `create` found a file at the path.
    #[error("fleet key {path} already exists; keep using it, or move it aside to create a new fleet (machines enrolled in the old fleet will not accept the new one)")]
    Exists {
        /// Path of the key file.
        path: PathBuf,
    },
    /// No file at the path.
    #[error(
        "fleet key {path} not found; create one with `fleetmesh fleet init`, or pass --key-file"
    )]
    NotFound {
        /// Path of the key file.
        path: PathBuf,
    },
    /// Users other than the owner may read or write the file.
    #[error("fleet key {path} has mode {mode:04o}, but only its owner may have access; run `chmod 600 {path}`")]
    Permissions {
        /// Path of the key file.
        path: PathBuf,
        /// The permission bits found.
        mode: u32,
    },
    /// Decryption failed: the passphrase is wrong, or the file was altered.
    #[error("wrong passphrase for fleet key {path}; type it again, and if it is right, the file was altered: restore it from a backup")]
    WrongPassphrase {
        /// Path of the key file.
        path: PathBuf,
    },
    /// The passphrase is empty.
    #[error("the passphrase for fleet key {path} is empty; choose a passphrase that is not empty")]
    EmptyPassphrase {
        /// Path of the key file.
        path: PathBuf,
    },
    /// The file does not have the expected format.
    #[error("fleet key {path} is invalid ({reason}); restore it from a backup")]
    Invalid {
        /// Path of the key file.
        path: PathBuf,
        /// Description of the problem.
        reason: String,
    },
    /// Argon2 rejected the parameters.
    #[error("key derivation for fleet key {path} failed: {reason}")]
    Kdf {
        /// Path of the key file.
        path: PathBuf,
        /// The message from argon2.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("cannot access fleet key {path}: {source}")]
    Io {
        /// Path of the key file or its directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Returns the default path: `$XDG_CONFIG_HOME/fleetmesh/fleet.key`, else
/// `$HOME/.config/fleetmesh/fleet.key`; `None` when neither variable is set.
pub fn default_path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|value| !value.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })?;
    Some(config.join("fleetmesh").join(FLEET_KEY_FILE))
}

/// Creates a new fleet root key, writes it to `path` encrypted with `passphrase`, and returns the
/// fleet id. Missing parent directories are created with mode 0700. An existing file is never
/// overwritten.
pub fn create(path: &Path, passphrase: &str) -> Result<FleetId, FleetKeyError> {
    create_with_params(path, passphrase, KdfParams::DEFAULT)
}

/// [`create`] with explicit Argon2id parameters, for tests that need a fast derivation.
pub fn create_with_params(
    path: &Path,
    passphrase: &str,
    params: KdfParams,
) -> Result<FleetId, FleetKeyError> {
    if passphrase.is_empty() {
        return Err(FleetKeyError::EmptyPassphrase {
            path: path.to_path_buf(),
        });
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| FleetKeyError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
    }

    // Key, salt and nonce from the OS RNG.
    let key = SigningKey::generate(&mut OsRng);
    let fleet = FleetId::from_root(&key.verifying_key());
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut nonce);

    // Encrypt the seed with the header lines as associated data.
    let header = header_text(&fleet, params, &salt, &nonce);
    let cipher = cipher_for(path, passphrase, params, &salt)?;
    let seed = Zeroizing::new(key.to_bytes());
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: seed.as_slice(),
                aad: header.as_bytes(),
            },
        )
        .map_err(|_| FleetKeyError::Invalid {
            path: path.to_path_buf(),
            reason: "encryption failed".to_string(),
        })?;
    let text = format!("{header}secret: {}\n", hex::encode(sealed));

    write_new(path, text.as_bytes())?;
    Ok(fleet)
}

/// Loads and decrypts the fleet root key, after checking the file's mode.
pub fn load(path: &Path, passphrase: &str) -> Result<SigningKey, FleetKeyError> {
    let file = read(path)?;
    if passphrase.is_empty() {
        return Err(FleetKeyError::EmptyPassphrase {
            path: path.to_path_buf(),
        });
    }

    let cipher = cipher_for(path, passphrase, file.params, &file.salt)?;
    let seed = cipher
        .decrypt(
            XNonce::from_slice(&file.nonce),
            Payload {
                msg: &file.sealed,
                aad: file.header.as_bytes(),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| FleetKeyError::WrongPassphrase {
            path: path.to_path_buf(),
        })?;
    let seed: [u8; SEED_LEN] = seed
        .as_slice()
        .try_into()
        .map_err(|_| FleetKeyError::Invalid {
            path: path.to_path_buf(),
            reason: format!("the secret is {} bytes, expected {SEED_LEN}", seed.len()),
        })?;
    let key = SigningKey::from_bytes(&seed);

    if FleetId::from_root(&key.verifying_key()) != file.fleet {
        return Err(FleetKeyError::Invalid {
            path: path.to_path_buf(),
            reason: "the secret key does not belong to the fleet id in the file".to_string(),
        });
    }
    Ok(key)
}

/// Reads the fleet id from the key file without the passphrase. The id is not authenticated
/// until [`load`] succeeds.
pub fn read_fleet_id(path: &Path) -> Result<FleetId, FleetKeyError> {
    Ok(read(path)?.fleet)
}

/// The parsed fields of a key file.
struct KeyFile {
    /// Every line before `secret:`, including newlines: the associated data.
    header: String,
    fleet: FleetId,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    sealed: Vec<u8>,
}

fn header_text(fleet: &FleetId, params: KdfParams, salt: &[u8], nonce: &[u8]) -> String {
    format!(
        "{HEADER}\nfleet: {fleet}\nkdf: {}\nsalt: {}\nnonce: {}\n",
        params.to_line(),
        hex::encode(salt),
        hex::encode(nonce)
    )
}

fn cipher_for(
    path: &Path,
    passphrase: &str,
    params: KdfParams,
    salt: &[u8],
) -> Result<XChaCha20Poly1305, FleetKeyError> {
    let kdf_error = |err: argon2::Error| FleetKeyError::Kdf {
        path: path.to_path_buf(),
        reason: err.to_string(),
    };
    let argon_params = Params::new(params.memory_kib, params.iterations, params.lanes, Some(32))
        .map_err(kdf_error)?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut_slice())
        .map_err(kdf_error)?;
    XChaCha20Poly1305::new_from_slice(key.as_slice()).map_err(|_| FleetKeyError::Kdf {
        path: path.to_path_buf(),
        reason: "the derived key has the wrong length".to_string(),
    })
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), FleetKeyError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => FleetKeyError::Exists {
                path: path.to_path_buf(),
            },
            _ => FleetKeyError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(source) = written {
        // Leave no half-written key behind; the write error is the one to report.
        let _ = fs::remove_file(path);
        return Err(FleetKeyError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}

fn read(path: &Path) -> Result<KeyFile, FleetKeyError> {
    let io_error = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => FleetKeyError::NotFound {
            path: path.to_path_buf(),
        },
        _ => FleetKeyError::Io {
            path: path.to_path_buf(),
            source,
        },
    };
    let invalid = |reason: String| FleetKeyError::Invalid {
        path: path.to_path_buf(),
        reason,
    };

    // Mode and size before reading.
    let metadata = fs::metadata(path).map_err(io_error)?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FleetKeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if !metadata.is_file() || metadata.len() > FILE_LEN_MAX {
        return Err(invalid(format!(
            "expected a file of at most {FILE_LEN_MAX} bytes"
        )));
    }
    let text = fs::read_to_string(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::InvalidData => invalid("not text".to_string()),
        _ => io_error(err),
    })?;

    parse(&text).map_err(invalid)
}

fn parse(text: &str) -> Result<KeyFile, String> {
    let secret_at = text
        .find("\nsecret: ")
        .ok_or("the secret line is missing")?;
    let header = &text[..secret_at + 1];
    let mut lines = header.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("expected the first line to be {HEADER}"));
    }
    let mut field = |name: &str| -> Result<&str, String> {
        lines
            .next()
            .and_then(|line| line.strip_prefix(name))
            .ok_or_else(|| format!("expected a line starting with {name:?}"))
    };
    let fleet = field("fleet: ")?
        .parse::<FleetId>()
        .map_err(|err| err.to_string())?;
    let params = KdfParams::parse(field("kdf: ")?)?;
    let salt = hex_array::<SALT_LEN>("salt", field("salt: ")?)?;
    let nonce = hex_array::<NONCE_LEN>("nonce", field("nonce: ")?)?;
    if lines.next().is_some() {
        return Err("unexpected line before the secret".to_string());
    }

    let secret_line = text[secret_at + 1..].trim_end_matches('\n');
    let sealed_hex = secret_line
        .strip_prefix("secret: ")
        .ok_or("the secret line is missing")?;
    if sealed_hex.contains('\n') {
        return Err("unexpected text after the secret".to_string());
    }
    let sealed = hex::decode(sealed_hex).map_err(|_| "the secret is not hex".to_string())?;
    if sealed.len() != SEED_LEN + TAG_LEN {
        return Err(format!(
            "the secret is {} bytes, expected {}",
            sealed.len(),
            SEED_LEN + TAG_LEN
        ));
    }
    Ok(KeyFile {
        header: header.to_string(),
        fleet,
        params,
        salt,
        nonce,
        sealed,
    })
}

fn hex_array<const N: usize>(name: &str, text: &str) -> Result<[u8; N], String> {
    let bytes = hex::decode(text).map_err(|_| format!("the {name} is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| format!("the {name} is not {N} bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so that tests do not spend seconds in Argon2.
    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };

    fn fresh(dir: &tempfile::TempDir) -> (PathBuf, FleetId) {
        let path = dir.path().join("conf/fleetmesh").join(FLEET_KEY_FILE);
        let fleet = create_with_params(&path, "correct horse", FAST).unwrap();
        (path, fleet)
    }

    #[test]
    fn create_then_load_same_fleet() {
        let dir = tempfile::tempdir().unwrap();
        let (path, fleet) = fresh(&dir);
        let key = load(&path, "correct horse").unwrap();
        assert_eq!(FleetId::from_root(&key.verifying_key()), fleet);
        assert_eq!(read_fleet_id(&path).unwrap(), fleet);
    }

    #[test]
    fn create_with_default_params_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FLEET_KEY_FILE);
        let fleet = create(&path, "correct horse").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("kdf: argon2id m=65536 t=3 p=1\n"), "{text}");
        let key = load(&path, "correct horse").unwrap();
        assert_eq!(FleetId::from_root(&key.verifying_key()), fleet);
    }

    #[test]
    fn create_sets_file_and_directory_modes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = fresh(&dir);
        let file_mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(file_mode, 0o600);
        let parent = path.parent().unwrap();
        let dir_mode = fs::metadata(parent).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
    }

    #[test]
    fn create_rejects_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, fleet) = fresh(&dir);
        let err = create_with_params(&path, "other", FAST).unwrap_err();
        assert!(matches!(err, FleetKeyError::Exists { .. }), "{err}");
        assert_eq!(read_fleet_id(&path).unwrap(), fleet);
    }

    #[test]
    fn create_rejects_empty_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FLEET_KEY_FILE);
        let err = create_with_params(&path, "", FAST).unwrap_err();
        assert!(
            matches!(err, FleetKeyError::EmptyPassphrase { .. }),
            "{err}"
        );
        assert!(!path.exists());
    }

    #[test]
    fn file_does_not_contain_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = fresh(&dir);
        let key = load(&path, "correct horse").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&hex::encode(key.to_bytes())));
        assert!(!text.contains("correct horse"));
    }

    #[test]
    fn load_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = fresh(&dir);
        let err = load(&path, "wrong horse").unwrap_err();
        assert!(
            matches!(err, FleetKeyError::WrongPassphrase { .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "wrong passphrase for fleet key {}",
                path.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn load_rejects_group_readable() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = fresh(&dir);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(&path, "correct horse").unwrap_err();
        assert!(
            matches!(err, FleetKeyError::Permissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn load_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&dir.path().join("absent.key"), "x").unwrap_err();
        assert!(matches!(err, FleetKeyError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("fleetmesh fleet init"), "{err}");
    }

    #[test]
    fn load_rejects_altered_header() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = fresh(&dir);
        let other = FleetId([9; 32]).to_string();
        let text = fs::read_to_string(&path).unwrap();
        let fleet_line = text.lines().nth(1).unwrap().to_string();
        let altered = text.replace(&fleet_line, &format!("fleet: {other}"));
        fs::write(&path, altered).unwrap();

        let err = load(&path, "correct horse").unwrap_err();
        assert!(
            matches!(err, FleetKeyError::WrongPassphrase { .. }),
            "{err}"
        );
    }

    #[test]
    fn load_rejects_kdf_over_limits() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = fresh(&dir);
        let text = fs::read_to_string(&path).unwrap();
        let altered = text.replace("m=64 ", "m=4000000 ");
        fs::write(&path, altered).unwrap();

        let err = load(&path, "correct horse").unwrap_err();
        assert!(matches!(err, FleetKeyError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("exceed the limits"), "{err}");
    }

    #[test]
    fn load_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FLEET_KEY_FILE);
        let cases = [
            "",
            "hello",
            "fleetmesh-fleet-key-v1\n",
            "fleetmesh-fleet-key-v1\nfleet: nope\nkdf: x\nsalt: 00\nnonce: 00\nsecret: 00\n",
        ];
        for case in cases {
            let _ = fs::remove_file(&path);
            fs::write(&path, case).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = load(&path, "x").unwrap_err();
            assert!(
                matches!(err, FleetKeyError::Invalid { .. }),
                "{case:?}: {err}"
            );
        }
    }

    #[test]
    fn kdf_line_round_trip() {
        let line = KdfParams::DEFAULT.to_line();
        assert_eq!(KdfParams::parse(&line), Ok(KdfParams::DEFAULT));
        assert!(KdfParams::parse("argon2i m=1 t=1 p=1").is_err());
        assert!(KdfParams::parse("argon2id m=1 t=1").is_err());
    }
}
