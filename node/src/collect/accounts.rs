//! Local users and groups, administrative group members, and `authorized_keys` fingerprints.
//!
//! Users come from `/etc/passwd` and groups from `/etc/group`. The password field of both files
//! is skipped, and `/etc/shadow` and `/etc/gshadow` are never opened. A user is an
//! administrator when it belongs to the `sudo`, `wheel` or `admin` group, as a listed member or
//! through its primary group.
//!
//! Keys are read from the files that sshd's `AuthorizedKeysFile` names (default
//! `.ssh/authorized_keys .ssh/authorized_keys2` in the home directory) and recorded as SHA-256
//! fingerprints in the form `ssh-keygen -l` prints (`SHA256:` and unpadded base64), never as the
//! keys themselves.

use std::collections::BTreeMap;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use fleetmesh_model::facts::{Group, User};
use fleetmesh_model::Facts;
use sha2::{Digest, Sha256};

use super::context::Context;
use super::Parsed;

const NAME: &str = "accounts";

/// Groups whose members are administrators.
pub const ADMIN_GROUPS: [&str; 3] = ["sudo", "wheel", "admin"];

/// `AuthorizedKeysFile` when sshd_config does not set it.
const DEFAULT_AUTHORIZED_KEYS: [&str; 2] = [".ssh/authorized_keys", ".ssh/authorized_keys2"];

/// Largest `authorized_keys` file read (1 MiB).
const AUTHORIZED_KEYS_MAX_BYTES: u64 = 1024 * 1024;

/// Collects users and groups into `facts.users` and `facts.groups`.
pub fn collect(ctx: &Context, facts: &mut Facts) {
    let mut users = match ctx.read_text(facts, NAME, "/etc/passwd") {
        Some(text) => parse_passwd(&text).into_value(facts, NAME, "/etc/passwd"),
        None => BTreeMap::new(),
    };
    let groups = match ctx.read_text(facts, NAME, "/etc/group") {
        Some(text) => parse_group(&text).into_value(facts, NAME, "/etc/group"),
        None => BTreeMap::new(),
    };

    mark_admins(&mut users, &groups);

    // Authorized keys.
    let key_files = match ctx.read_text(facts, NAME, "/etc/ssh/sshd_config") {
        Some(config) => authorized_keys_files(&config),
        None => DEFAULT_AUTHORIZED_KEYS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    for (name, user) in users.iter_mut() {
        if ctx.expired() {
            ctx.record_expired(facts, NAME, None);
            break;
        }
        if user.home.is_empty() {
            continue;
        }
        for pattern in &key_files {
            let path = expand_key_path(pattern, name, user);
            let Some(text) = ctx.read_text_limited(facts, NAME, &path, AUTHORIZED_KEYS_MAX_BYTES)
            else {
                continue;
            };
            let fingerprints = parse_authorized_keys(&text).into_value(facts, NAME, &path);
            user.authorized_keys.extend(fingerprints);
        }
    }

    facts.users = users;
    facts.groups = groups;
}

/// Parses `/etc/passwd`. The password field is not kept; NIS `+`/`-` lines are skipped.
pub fn parse_passwd(text: &str) -> Parsed<BTreeMap<String, User>> {
    let mut parsed = Parsed::<BTreeMap<String, User>>::default();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() || line.starts_with('#') || line.starts_with(['+', '-']) {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() != 7 {
            parsed.problems.push(format!(
                "line {number}: expected 7 fields, found {}",
                fields.len()
            ));
            continue;
        }
        let (Ok(uid), Ok(gid)) = (fields[2].parse::<u32>(), fields[3].parse::<u32>()) else {
            parsed.problems.push(format!(
                "line {number}: user {:?} has an invalid uid or gid",
                fields[0]
            ));
            continue;
        };
        let user = User {
            uid,
            gid,
            gecos: (!fields[4].is_empty()).then(|| fields[4].to_string()),
            home: fields[5].to_string(),
            shell: fields[6].to_string(),
            admin: false,
            authorized_keys: Vec::new(),
        };
        parsed.value.insert(fields[0].to_string(), user);
    }
    parsed
}

/// Parses `/etc/group`. The password field is not kept.
pub fn parse_group(text: &str) -> Parsed<BTreeMap<String, Group>> {
    let mut parsed = Parsed::<BTreeMap<String, Group>>::default();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() || line.starts_with('#') || line.starts_with(['+', '-']) {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() != 4 {
            parsed.problems.push(format!(
                "line {number}: expected 4 fields, found {}",
                fields.len()
            ));
            continue;
        }
        let Ok(gid) = fields[2].parse::<u32>() else {
            parsed.problems.push(format!(
                "line {number}: group {:?} has an invalid gid",
                fields[0]
            ));
            continue;
        };
        let members = fields[3]
            .split(',')
            .map(str::trim)
            .filter(|member| !member.is_empty())
            .map(str::to_string)
            .collect();
        parsed
            .value
            .insert(fields[0].to_string(), Group { gid, members });
    }
    parsed
}

/// Sets `admin` on members of the administrative groups.
pub fn mark_admins(users: &mut BTreeMap<String, User>, groups: &BTreeMap<String, Group>) {
    let admin_groups: Vec<&Group> = ADMIN_GROUPS
        .iter()
        .filter_map(|name| groups.get(*name))
        .collect();
    for (name, user) in users.iter_mut() {
        user.admin = admin_groups.iter().any(|group| {
            group.gid == user.gid || group.members.iter().any(|member| member == name)
        });
    }
}

/// Returns the `AuthorizedKeysFile` patterns from sshd_config text. sshd uses the first value
/// it reads, and settings inside `Match` blocks apply only to some users, so reading stops at
/// the first `Match`.
pub fn authorized_keys_files(config: &str) -> Vec<String> {
    for line in config.lines() {
        let line = line.trim();
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        if keyword.eq_ignore_ascii_case("Match") {
            break;
        }
        if keyword.eq_ignore_ascii_case("AuthorizedKeysFile") {
            let files: Vec<String> = words
                .filter(|word| !word.eq_ignore_ascii_case("none"))
                .map(str::to_string)
                .collect();
            return files;
        }
    }
    DEFAULT_AUTHORIZED_KEYS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Expands `%h`, `%u`, `%U` and `%%` in an `AuthorizedKeysFile` pattern; a relative result is
/// taken relative to the home directory, as sshd does.
fn expand_key_path(pattern: &str, name: &str, user: &User) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(&user.home),
            Some('u') => out.push_str(name),
            Some('U') => out.push_str(&user.uid.to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    if out.starts_with('/') {
        out
    } else {
        format!("{}/{}", user.home.trim_end_matches('/'), out)
    }
}

/// Parses `authorized_keys` contents into SHA-256 fingerprints, in file order.
///
/// A line is `[options] keytype base64 [comment]`; options may hold quoted spaces. A line whose
/// key does not decode, or whose decoded key names another type, is a problem and is skipped.
pub fn parse_authorized_keys(text: &str) -> Parsed<Vec<String>> {
    let mut parsed = Parsed::<Vec<String>>::default();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match fingerprint_line(line) {
            Ok(fingerprint) => parsed.value.push(fingerprint),
            Err(reason) => parsed
                .problems
                .push(format!("line {}: {reason}", index + 1)),
        }
    }
    parsed
}

fn fingerprint_line(line: &str) -> Result<String, String> {
    let words = split_options_aware(line);
    let position = words
        .iter()
        .position(|word| is_key_type(word))
        .ok_or_else(|| "no known key type found".to_string())?;
    let key_type = &words[position];
    let encoded = words
        .get(position + 1)
        .ok_or_else(|| format!("{key_type} key has no key data"))?;
    let blob = STANDARD
        .decode(encoded)
        .or_else(|_| STANDARD_NO_PAD.decode(encoded))
        .map_err(|_| format!("{key_type} key data is not valid base64"))?;
    if blob_key_type(&blob) != Some(key_type.as_bytes()) {
        return Err(format!("{key_type} key data names a different key type"));
    }
    Ok(format!(
        "SHA256:{}",
        STANDARD_NO_PAD.encode(Sha256::digest(&blob))
    ))
}

fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-")
        || word.starts_with("ecdsa-sha2-")
        || word.starts_with("sk-ssh-")
        || word.starts_with("sk-ecdsa-")
}

/// Reads the key type string that opens an SSH public key blob (a u32 length, then bytes).
fn blob_key_type(blob: &[u8]) -> Option<&[u8]> {
    let length = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    blob.get(4..4usize.checked_add(length)?)
}

/// Splits on white space outside double quotes.
fn split_options_aware(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in line.chars() {
        if escaped {
            current.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                current.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an `authorized_keys` line and its key blob for the ed25519 key `key`.
    fn ed25519_line(key: [u8; 32], prefix: &str) -> (String, Vec<u8>) {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&key);
        (
            format!(
                "{prefix}ssh-ed25519 {} admin@laptop",
                STANDARD.encode(&blob)
            ),
            blob,
        )
    }

    #[test]
    fn authorized_keys_with_options() {
        let (plain, blob) = ed25519_line([7; 32], "");
        let (with_options, _) = ed25519_line([7; 32], "command=\"echo a b\",no-pty ");
        let text = format!("# keys\n{plain}\n{with_options}\nssh-rsa !!!notbase64\n");
        let parsed = parse_authorized_keys(&text);
        let expected = format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&blob)));
        assert_eq!(parsed.value, vec![expected.clone(), expected]);
        assert_eq!(parsed.problems.len(), 1);
    }

    #[test]
    fn passwd_skips_password_field_and_bad_lines() {
        let parsed = parse_passwd("root:$6$hash:0:0:root:/root:/bin/bash\nbroken\nx:y:z:0:::\n");
        let root = &parsed.value["root"];
        assert_eq!(root.uid, 0);
        assert_eq!(root.home, "/root");
        assert!(!format!("{root:?}").contains("$6$"));
        assert_eq!(parsed.problems.len(), 2);
    }

    #[test]
    fn admins_by_member_and_primary_group() {
        let mut users = parse_passwd("a:x:1000:1000::/home/a:/bin/sh\nb:x:1001:10::/home/b:/bin/sh\nc:x:1002:1002::/home/c:/bin/sh\n").value;
        let groups = parse_group("sudo:x:27:a\nwheel:x:10:\n").value;
        mark_admins(&mut users, &groups);
        assert!(users["a"].admin);
        assert!(users["b"].admin);
        assert!(!users["c"].admin);
    }

    #[test]
    fn authorized_keys_file_setting() {
        let config = "AuthorizedKeysFile /etc/ssh/keys/%u .ssh/authorized_keys\nMatch user x\nAuthorizedKeysFile none\n";
        assert_eq!(
            authorized_keys_files(config),
            vec!["/etc/ssh/keys/%u", ".ssh/authorized_keys"]
        );
        let user = User {
            home: "/home/a".to_string(),
            ..User::default()
        };
        assert_eq!(
            expand_key_path("/etc/ssh/keys/%u", "a", &user),
            "/etc/ssh/keys/a"
        );
        assert_eq!(
            expand_key_path(".ssh/authorized_keys", "a", &user),
            "/home/a/.ssh/authorized_keys"
        );
    }
}
