//! Operating system release and kernel.
//!
//! The release comes from `os-release` (`/etc/os-release`, then `/usr/lib/os-release`), read
//! with the shell-style quoting that the os-release manual page defines. Older systems without
//! it fall back to `/etc/lsb-release`, `/etc/redhat-release`, `/etc/debian_version` and
//! `/etc/alpine-release`; `release_source` names the file used.

use std::collections::BTreeMap;

use fleetmesh_model::facts::Os;
use fleetmesh_model::Facts;

use super::context::Context;
use super::Parsed;
use crate::collect::add_error;

const NAME: &str = "os";

/// Builds the release from the text of a distribution release file.
type ReleaseReader = fn(&str) -> Os;

/// Collects the release and kernel into `facts.os`.
pub fn collect(ctx: &Context, facts: &mut Facts) {
    let mut os = read_release(ctx, facts).unwrap_or_default();

    os.kernel_release = ctx.read_attribute("/proc/sys/kernel/osrelease");
    os.kernel_version = ctx.read_attribute("/proc/sys/kernel/version");
    if os.kernel_release.is_none() || os.kernel_version.is_none() {
        if let Some(banner) = ctx.read_attribute("/proc/version") {
            let (release, version) = parse_proc_version(&banner);
            os.kernel_release = os.kernel_release.or(release);
            os.kernel_version = os.kernel_version.or(version);
        }
    }

    facts.os = os;
}

fn read_release(ctx: &Context, facts: &mut Facts) -> Option<Os> {
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Some(text) = ctx.read_text(facts, NAME, path) {
            let fields = parse_os_release(&text).into_value(facts, NAME, path);
            let mut os = os_from_fields(fields);
            os.release_source = Some(path.to_string());
            return Some(os);
        }
    }

    let fallbacks: [(&str, ReleaseReader); 4] = [
        ("/etc/lsb-release", os_from_lsb_release),
        ("/etc/redhat-release", os_from_redhat_release),
        ("/etc/debian_version", os_from_debian_version),
        ("/etc/alpine-release", os_from_alpine_release),
    ];
    for (path, read) in fallbacks {
        if let Some(text) = ctx.read_text(facts, NAME, path) {
            let mut os = read(&text);
            os.release_source = Some(path.to_string());
            return Some(os);
        }
    }

    add_error(
        facts,
        NAME,
        None,
        "no os-release, lsb-release or distribution release file found",
    );
    None
}

/// Parses `os-release` contents into its fields.
///
/// Values follow shell quoting: double quotes (where `\"`, `\\`, `\$` and `` \` `` are
/// escapes), single quotes (taken literally), and backslash escapes outside quotes. Lines that
/// are not `KEY=value` are reported as problems and skipped; a later assignment of a key wins.
pub fn parse_os_release(text: &str) -> Parsed<BTreeMap<String, String>> {
    let mut parsed = Parsed::<BTreeMap<String, String>>::default();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            parsed
                .problems
                .push(format!("line {number}: expected KEY=value"));
            continue;
        };
        if !is_variable_name(key) {
            parsed
                .problems
                .push(format!("line {number}: invalid variable name {key:?}"));
            continue;
        }
        let value = unquote_shell_value(raw, number, &mut parsed.problems);
        parsed.value.insert(key.to_string(), value);
    }
    parsed
}

fn is_variable_name(key: &str) -> bool {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads one shell word with quotes and escapes removed. Text after unquoted white space is
/// ignored (a trailing `# comment` quietly, anything else as a problem).
fn unquote_shell_value(raw: &str, line: usize, problems: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.peek() {
                            Some(&next @ ('"' | '\\' | '$' | '`')) => {
                                out.push(next);
                                chars.next();
                            }
                            _ => out.push('\\'),
                        },
                        other => out.push(other),
                    }
                }
                if !closed {
                    problems.push(format!("line {line}: missing closing double quote"));
                }
            }
            '\'' => {
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '\'' {
                        closed = true;
                        break;
                    }
                    out.push(c);
                }
                if !closed {
                    problems.push(format!("line {line}: missing closing single quote"));
                }
            }
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            c if c.is_whitespace() => {
                let rest: String = chars.collect();
                let rest = rest.trim();
                if !rest.is_empty() && !rest.starts_with('#') {
                    problems.push(format!(
                        "line {line}: text after the value was ignored (quote values that contain spaces)"
                    ));
                }
                break;
            }
            other => out.push(other),
        }
    }
    out
}

/// Builds the typed release from os-release fields.
pub fn os_from_fields(fields: BTreeMap<String, String>) -> Os {
    let get = |key: &str| fields.get(key).filter(|value| !value.is_empty()).cloned();
    Os {
        id: get("ID"),
        id_like: fields
            .get("ID_LIKE")
            .map(|value| value.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        name: get("NAME"),
        version: get("VERSION"),
        version_id: get("VERSION_ID"),
        version_codename: get("VERSION_CODENAME"),
        pretty_name: get("PRETTY_NAME"),
        release_fields: fields,
        ..Os::default()
    }
}

/// Builds the release from `/etc/lsb-release` (`DISTRIB_ID`, `DISTRIB_RELEASE`, ...).
pub fn os_from_lsb_release(text: &str) -> Os {
    let fields = parse_os_release(text).value;
    let get = |key: &str| fields.get(key).filter(|value| !value.is_empty()).cloned();
    Os {
        id: get("DISTRIB_ID").map(|id| id.to_lowercase()),
        name: get("DISTRIB_ID"),
        version_id: get("DISTRIB_RELEASE"),
        version_codename: get("DISTRIB_CODENAME"),
        pretty_name: get("DISTRIB_DESCRIPTION"),
        release_fields: fields,
        ..Os::default()
    }
}

/// Builds the release from a line such as `CentOS Linux release 7.9.2009 (Core)`.
pub fn os_from_redhat_release(text: &str) -> Os {
    let line = text.lines().next().unwrap_or("").trim();
    let (name, rest) = line.split_once(" release ").unwrap_or((line, ""));
    let version_id = rest.split_whitespace().next().map(str::to_string);
    let codename = rest
        .split_once('(')
        .and_then(|(_, tail)| tail.split_once(')'))
        .map(|(inside, _)| inside.to_string());
    let lower = name.to_lowercase();
    let id = [
        ("red hat", "rhel"),
        ("centos", "centos"),
        ("fedora", "fedora"),
        ("rocky", "rocky"),
        ("alma", "almalinux"),
        ("oracle", "ol"),
        ("scientific", "scientific"),
    ]
    .iter()
    .find(|(needle, _)| lower.contains(needle))
    .map(|(_, id)| (*id).to_string());
    Os {
        id,
        name: (!name.is_empty()).then(|| name.to_string()),
        version_id,
        version_codename: codename,
        pretty_name: (!line.is_empty()).then(|| line.to_string()),
        ..Os::default()
    }
}

/// Builds the release from `/etc/debian_version` (`12.5`, or `bookworm/sid` on testing).
pub fn os_from_debian_version(text: &str) -> Os {
    let version = text.lines().next().unwrap_or("").trim().to_string();
    let numeric = version.chars().next().is_some_and(|c| c.is_ascii_digit());
    Os {
        id: Some("debian".to_string()),
        name: Some("Debian GNU/Linux".to_string()),
        version_id: numeric.then(|| version.split('.').next().unwrap_or("").to_string()),
        pretty_name: Some(format!("Debian GNU/Linux {version}")),
        version: (!version.is_empty()).then_some(version),
        ..Os::default()
    }
}

/// Builds the release from `/etc/alpine-release` (`3.19.1`).
pub fn os_from_alpine_release(text: &str) -> Os {
    let version = text.lines().next().unwrap_or("").trim().to_string();
    Os {
        id: Some("alpine".to_string()),
        name: Some("Alpine Linux".to_string()),
        pretty_name: Some(format!("Alpine Linux {version}")),
        version_id: (!version.is_empty()).then_some(version),
        ..Os::default()
    }
}

/// Splits the `/proc/version` banner into the kernel release and the build version
/// (`uname -r` and `uname -v`).
pub fn parse_proc_version(banner: &str) -> (Option<String>, Option<String>) {
    let release = banner
        .strip_prefix("Linux version ")
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string);
    // The build version starts at the `#` that follows the closing bracket of the compiler.
    let version = banner
        .rfind(") #")
        .map(|at| banner[at + 2..].trim().to_string())
        .filter(|version| !version.is_empty());
    (release, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quoting() {
        let text = "A=plain\nB=\"double \\\"q\\\" \\$x \\\\ \\n\"\nC='single \\ $x'\nD=a\\ b\nE=\"x\" # note\n";
        let parsed = parse_os_release(text);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.value["A"], "plain");
        assert_eq!(parsed.value["B"], "double \"q\" $x \\ \\n");
        assert_eq!(parsed.value["C"], "single \\ $x");
        assert_eq!(parsed.value["D"], "a b");
        assert_eq!(parsed.value["E"], "x");
    }

    #[test]
    fn os_release_bad_lines_are_problems() {
        let parsed = parse_os_release("ID=debian\nnot a line\n1X=2\nNAME=\"open\n");
        assert_eq!(parsed.value["ID"], "debian");
        assert_eq!(parsed.value["NAME"], "open");
        assert_eq!(parsed.problems.len(), 3);
    }

    #[test]
    fn redhat_release_line() {
        let os = os_from_redhat_release("CentOS Linux release 7.9.2009 (Core)\n");
        assert_eq!(os.id.as_deref(), Some("centos"));
        assert_eq!(os.version_id.as_deref(), Some("7.9.2009"));
        assert_eq!(os.version_codename.as_deref(), Some("Core"));
    }

    #[test]
    fn proc_version_banner() {
        let banner = "Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)";
        let (release, version) = parse_proc_version(banner);
        assert_eq!(release.as_deref(), Some("6.1.0-18-amd64"));
        assert_eq!(
            version.as_deref(),
            Some("#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)")
        );
    }
}
