//! Redaction of secrets in tracked file contents, so that a file's history can be shown without
//! handing out the passwords and keys in it.
//!
//! What is replaced with `[REDACTED]`:
//! - the body of PEM private key blocks (`-----BEGIN ... PRIVATE KEY-----`), keeping the
//!   BEGIN and END lines so a reader sees that a key is there;
//! - the value of settings whose name ends in a secret-like word (`password`, `passwd`,
//!   `secret`, `token`, `psk`, `apikey`, `authtok`, ...), in `name = value`, `name: value`,
//!   `name value` and `export NAME=value` lines, also inside comments;
//! - the value of settings whose name ends in `key`, unless the value is a path (`HostKey
//!   /etc/ssh/ssh_host_ed25519_key` stays readable);
//! - passwords in URLs (`https://user:secret@host`);
//! - the password field of `passwd` and `group` lines, unless it is a placeholder (`x`, `*`,
//!   `!`).
//!
//! Settings such as `PasswordAuthentication yes` end in another word and are kept. The rules
//! favour redacting too much over too little; a line they miss is still hashed, not hidden.

use std::sync::LazyLock;

use regex::Regex;

/// The text that replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Endings of normalized setting names (lower case, without `_`, `-` and `.`) that hold secrets.
const SECRET_NAME_ENDINGS: [&str; 18] = [
    "password",
    "passwd",
    "passphrase",
    "pass",
    "pwd",
    "pw",
    "secret",
    "token",
    "apikey",
    "authkey",
    "privatekey",
    "secretkey",
    "accesskey",
    "presharedkey",
    "psk",
    "credential",
    "credentials",
    "authtok",
];

/// Setting names that end in a secret-like word but are not secrets.
const NOT_SECRET_NAMES: [&str; 2] = ["bypass", "compass"];

static URL_CREDENTIALS: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@").ok());

/// Redacts secrets in the text of the file at `path` (the path on the machine).
pub fn redact(path: &str, text: &str) -> String {
    let colon_table = path.ends_with("/passwd") || path.ends_with("/group");
    let mut out = String::with_capacity(text.len());
    let mut in_private_key = false;

    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];

        if in_private_key {
            if is_pem_private_key_marker(body, "-----END") {
                in_private_key = false;
                out.push_str(line);
            }
            continue;
        }
        if is_pem_private_key_marker(body, "-----BEGIN") {
            in_private_key = true;
            out.push_str(line);
            out.push_str(REDACTED);
            out.push_str(if ending.is_empty() { "\n" } else { ending });
            continue;
        }

        let redacted = if colon_table {
            redact_colon_table_line(body)
        } else {
            redact_setting(body)
        };
        let redacted = redact_url_credentials(&redacted);
        out.push_str(&redacted);
        out.push_str(ending);
    }
    out
}

fn is_pem_private_key_marker(line: &str, marker: &str) -> bool {
    line.contains(marker) && line.contains("PRIVATE KEY-----")
}

/// Replaces the password field (the second) of a `passwd` or `group` line.
fn redact_colon_table_line(line: &str) -> String {
    let mut fields: Vec<&str> = line.split(':').collect();
    if fields.len() >= 3 {
        let password = fields[1];
        let placeholder = password.is_empty()
            || password == "x"
            || password.chars().all(|c| c == '*' || c == '!');
        if !placeholder {
            fields[1] = REDACTED;
        }
    }
    fields.join(":")
}

fn redact_url_credentials(line: &str) -> String {
    match URL_CREDENTIALS.as_ref() {
        Some(pattern) if line.contains("://") => pattern
            .replace_all(line, format!("${{1}}{REDACTED}@").as_str())
            .into_owned(),
        _ => line.to_string(),
    }
}

/// Redacts the value of a `name = value`, `name: value` or `name value` line when the name
/// is secret-like. Returns the line unchanged otherwise.
pub fn redact_setting(line: &str) -> String {
    // Leading white space, comment markers and `export`.
    let trimmed = line.trim_start();
    let mut prefix_len = line.len() - trimmed.len();
    let mut rest = trimmed;
    let uncommented = rest.trim_start_matches(['#', ';']).trim_start();
    prefix_len += rest.len() - uncommented.len();
    rest = uncommented;
    if let Some(after) = rest.strip_prefix("export ") {
        prefix_len += rest.len() - after.len();
        rest = after;
    }

    // The name, possibly quoted as in JSON.
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'');
    let name_start = quote.map_or(0, char::len_utf8);
    let name_len = rest[name_start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .unwrap_or(rest.len() - name_start);
    if name_len == 0 {
        return line.to_string();
    }
    let name = &rest[name_start..name_start + name_len];
    let mut after_name = &rest[name_start + name_len..];
    if let Some(quote) = quote {
        match after_name.strip_prefix(quote) {
            Some(after_quote) => after_name = after_quote,
            None => return line.to_string(),
        }
    }

    // The separator: `=` or `:` with optional spaces, or spaces alone.
    let spaced = after_name.trim_start();
    let separator_len = match spaced.chars().next() {
        Some('=' | ':') => {
            let after_mark = spaced[1..].trim_start();
            after_name.len() - after_mark.len()
        }
        Some(_) if spaced.len() < after_name.len() => after_name.len() - spaced.len(),
        _ => return line.to_string(),
    };
    let value = after_name[separator_len..].trim_end();
    if value.is_empty() || !is_secret_setting(name, value) {
        return line.to_string();
    }

    let head_len =
        prefix_len + name_start + name_len + quote.map_or(0, char::len_utf8) + separator_len;
    let trailing_comma = if value.ends_with(',') { "," } else { "" };
    format!("{}{REDACTED}{trailing_comma}", &line[..head_len])
}

/// Returns whether a setting with this name and value contains a secret.
pub fn is_secret_setting(name: &str, value: &str) -> bool {
    let normalized: String = name
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | '.'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if NOT_SECRET_NAMES
        .iter()
        .any(|word| normalized.ends_with(word))
    {
        return false;
    }
    if SECRET_NAME_ENDINGS
        .iter()
        .any(|ending| normalized.ends_with(ending))
    {
        return true;
    }
    let value = value.trim_matches(['"', '\'']);
    let is_path = value.starts_with('/') || value.starts_with("~/") || value.starts_with("./");
    normalized.ends_with("key") && !is_path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_with_secret_names() {
        assert_eq!(
            redact_setting("password = hunter2"),
            "password = [REDACTED]"
        );
        assert_eq!(
            redact_setting("  db_password: hunter2"),
            "  db_password: [REDACTED]"
        );
        assert_eq!(
            redact_setting("export API_TOKEN=abc"),
            "export API_TOKEN=[REDACTED]"
        );
        assert_eq!(redact_setting("rootpw s3cret"), "rootpw [REDACTED]");
        assert_eq!(redact_setting("#psk=\"wifi\""), "#psk=[REDACTED]");
        assert_eq!(
            redact_setting("  \"client_secret\": \"abc\","),
            "  \"client_secret\": [REDACTED],"
        );
        assert_eq!(
            redact_setting("aws_secret_access_key=AKIA"),
            "aws_secret_access_key=[REDACTED]"
        );
    }

    #[test]
    fn settings_that_stay() {
        for line in [
            "PasswordAuthentication yes",
            "PermitRootLogin yes",
            "HostKey /etc/ssh/ssh_host_ed25519_key",
            "PubkeyAuthentication yes",
            "PASS_MAX_DAYS 99999",
            "proxy_bypass = localhost",
            "# The password is set below",
            "password=",
        ] {
            assert_eq!(redact_setting(line), line);
        }
    }

    #[test]
    fn pem_private_key_block() {
        let text = "before\n-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\nBBBB\n-----END OPENSSH PRIVATE KEY-----\nafter\n";
        let out = redact("/etc/app/key.pem", text);
        assert_eq!(
            out,
            "before\n-----BEGIN OPENSSH PRIVATE KEY-----\n[REDACTED]\n-----END OPENSSH PRIVATE KEY-----\nafter\n"
        );
    }

    #[test]
    fn url_credentials() {
        let out = redact(
            "/etc/apt/auth",
            "deb https://user:s3cret@repo.example.com/debian stable main\n",
        );
        assert_eq!(
            out,
            "deb https://user:[REDACTED]@repo.example.com/debian stable main\n"
        );
    }

    #[test]
    fn passwd_hash_field() {
        let out = redact(
            "/etc/passwd",
            "root:$6$salt$hash:0:0:root:/root:/bin/bash\nbin:x:2:2::/bin:/bin/false\n",
        );
        assert_eq!(
            out,
            "root:[REDACTED]:0:0:root:/root:/bin/bash\nbin:x:2:2::/bin:/bin/false\n"
        );
    }
}
