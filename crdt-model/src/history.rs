//! History and diff: what each change of a node document did to its facts, and how two states
//! of the facts differ.
//!
//! A difference is reported per fact, at the level an engineer reads it. An item that appears or
//! disappears in a collection (a package, a service, a tracked file) is one `added` or `removed`
//! entry carrying the whole item. A field that changes inside an item is one `changed` entry with
//! the old and the new value. Text content (tracked files) also carries the changed lines.
//!
//! Paths name a fact from the document root, for example
//! `["facts", "packages", "openssl:amd64", "version"]`. [`FactChange`] splits them into the
//! fact kind (`packages`), the item (`openssl:amd64`) and the field inside it (`version`).

use std::collections::BTreeSet;

use automerge::{legacy, AutoCommit, ChangeHash, PatchAction, Prop, ReadDoc};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// A change walk that passes this many changes falls back to automerge's diff of the states,
/// which costs one scan of the document instead of one step per operation.
pub const CHANGES_WALKED_MAX: usize = 1024;

/// Text longer than this many lines on both sides is reported as wholly replaced instead of
/// line by line, so a diff stays cheap (the line comparison is quadratic).
const LINE_DIFF_CELLS_MAX: usize = 4_000_000;

/// Kind of change to a fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The fact is new.
    Added,
    /// The fact is gone.
    Removed,
    /// The fact has another value.
    Changed,
}

impl Action {
    /// Returns the lower-case name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Added => "added",
            Action::Removed => "removed",
            Action::Changed => "changed",
        }
    }

    /// Returns the one-character sign used in text output: `+`, `-` or `~`.
    pub fn sign(self) -> char {
        match self {
            Action::Added => '+',
            Action::Removed => '-',
            Action::Changed => '~',
        }
    }
}

/// One line that differs between two versions of a text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineEdit {
    /// `-` for a line only in the old text, `+` for a line only in the new text.
    pub op: char,
    /// Line number, counted from 1, in the old text for `-` and in the new text for `+`.
    pub line: usize,
    /// The line without its line break.
    pub text: String,
}

/// One fact that differs between two states.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FactChange {
    /// Fact kind: a section of the facts (`packages`, `os`, `tracked_files`), or `identity` or
    /// `compliance`.
    pub kind: String,
    /// Item inside the kind: a collection key (`openssl:amd64`, `/etc/ssh/sshd_config`) or a
    /// field of a single-valued section (`kernel_release`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// Field inside the item, dotted for nested fields (`addresses.10.0.0.5/24.scope`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What happened.
    pub action: Action,
    /// The value before, absent for `added`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Json>,
    /// The value after, absent for `removed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Json>,
    /// For text that changed, the lines that differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<LineEdit>,
}

impl FactChange {
    fn new(path: &[String], action: Action, old: Option<&Json>, new: Option<&Json>) -> FactChange {
        let (kind, item, field) = split_path(path);
        let lines = match (old, new) {
            (Some(Json::String(a)), Some(Json::String(b))) if is_text(a) || is_text(b) => {
                line_diff(a, b)
            }
            _ => Vec::new(),
        };
        FactChange {
            kind,
            item,
            field,
            action,
            old: old.cloned(),
            new: new.cloned(),
            lines,
        }
    }

    /// Returns the fact's path as `kind/item/field`, the form `--path` filters match. A leading
    /// `/` of the item (file paths) is dropped, so `tracked_files/etc/ssh/sshd_config` names a file.
    pub fn path(&self) -> String {
        let mut out = self.kind.clone();
        if let Some(item) = &self.item {
            out.push('/');
            out.push_str(item.trim_start_matches('/'));
        }
        if let Some(field) = &self.field {
            out.push('/');
            out.push_str(field);
        }
        out
    }

    /// Reports whether the fact lies under `filter`: a kind, then optionally an item, then
    /// optionally a field, separated by `/`. An item part also matches the item's name without
    /// its architecture, so `packages/openssl` finds `openssl:amd64` but not `openssl-dev:amd64`,
    /// and an item whose name contains `/` matches a leading part of its name.
    pub fn matches(&self, filter: &str) -> bool {
        let filter = filter.trim_matches('/');
        let rest = match strip_part(filter, &self.kind) {
            None => return false,
            Some(None) => return true,
            Some(Some(rest)) => rest.trim_start_matches('/'),
        };
        let Some(item) = &self.item else {
            return false;
        };
        let item = item.trim_start_matches('/');
        // An item with `/` in its name (a file path, a compliance `policy/check` key) also
        // matches a leading part of it: `tracked_files/etc/ssh` selects every file under it.
        if item.starts_with(&format!("{rest}/")) {
            return true;
        }
        let after_item = strip_part(rest, item).or_else(|| {
            item.split_once(':')
                .and_then(|(name, _)| strip_part(rest, name))
        });
        match after_item {
            None => false,
            Some(None) => true,
            Some(Some(field_filter)) => {
                let field_filter = field_filter.replace('/', ".");
                self.field.as_deref().is_some_and(|field| {
                    field == field_filter || field.starts_with(&format!("{field_filter}."))
                })
            }
        }
    }
}

/// Matches `part` at the start of `text`: `Some(None)` when `text` is exactly `part`,
/// `Some(Some(rest))` when `part/` starts `text`, and `None` otherwise.
fn strip_part<'a>(text: &'a str, part: &str) -> Option<Option<&'a str>> {
    if text == part {
        return Some(None);
    }
    text.strip_prefix(part)
        .and_then(|rest| rest.strip_prefix('/'))
        .map(Some)
}

/// One change and the facts it changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// The author's sequence number of the change.
    pub seq: u64,
    /// Commit time in seconds since the Unix epoch, as the author's clock gave it.
    pub time: i64,
    /// The change hash in hex.
    pub hash: String,
    /// The facts it changed.
    pub facts: Vec<FactChange>,
}

/// Compares two states of a document (or two documents) and returns every fact that differs,
/// sorted by kind, item and field. `skip` is asked for each path from the root before it is
/// compared; paths it accepts are left out with everything under them.
pub fn diff_values(
    old: Option<&Json>,
    new: Option<&Json>,
    skip: &dyn Fn(&[String]) -> bool,
) -> Vec<FactChange> {
    diff_from(Vec::new(), old, new, skip)
}

/// Like [`diff_values`] for values found at `path` from the root.
pub(crate) fn diff_from(
    mut path: Vec<String>,
    old: Option<&Json>,
    new: Option<&Json>,
    skip: &dyn Fn(&[String]) -> bool,
) -> Vec<FactChange> {
    let mut out = Vec::new();
    diff_at(&mut path, old, new, skip, &mut out);
    out
}

fn diff_at(
    path: &mut Vec<String>,
    old: Option<&Json>,
    new: Option<&Json>,
    skip: &dyn Fn(&[String]) -> bool,
    out: &mut Vec<FactChange>,
) {
    if skip(path) {
        return;
    }
    let empty = serde_json::Map::new();
    let shallow = path.len() < item_depth(path);
    let maps = match (old, new) {
        (None, None) => return,
        (Some(a), Some(b)) if a == b => return,
        (Some(Json::Object(a)), Some(Json::Object(b))) => Some((a, b)),
        (None, Some(Json::Object(b))) if shallow => Some((&empty, b)),
        (Some(Json::Object(a)), None) if shallow => Some((a, &empty)),
        _ => None,
    };
    match maps {
        Some((a, b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                path.push(key.clone());
                diff_at(path, a.get(key), b.get(key), skip, out);
                path.pop();
            }
        }
        None => {
            let action = match (old, new) {
                (None, _) => Action::Added,
                (_, None) => Action::Removed,
                _ => Action::Changed,
            };
            out.push(FactChange::new(path, action, old, new));
        }
    }
}

/// Returns how many path parts from the root name one item. Above that depth an object that
/// appears or disappears is opened up, so that each item inside it is reported on its own.
fn item_depth(path: &[String]) -> usize {
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    match parts.as_slice() {
        [] => 1,
        ["facts", "hardware", "block_devices", ..] | ["facts", "os", "release_fields", ..] => 4,
        ["facts", ..] => 3,
        _ => 2,
    }
}

/// Splits a path from the root into kind, item and field.
fn split_path(path: &[String]) -> (String, Option<String>, Option<String>) {
    let mut parts: &[String] = path;
    if parts.first().is_some_and(|first| first == "facts") && parts.len() > 1 {
        parts = &parts[1..];
    }
    let (kind, rest) = match parts {
        [section, collection, rest @ ..]
            if section == "hardware" && collection == "block_devices" =>
        {
            ("block_devices".to_string(), rest)
        }
        [kind, rest @ ..] => (kind.clone(), rest),
        [] => (String::new(), parts),
    };
    let item = rest.first().cloned();
    let field = (rest.len() > 1).then(|| rest[1..].join("."));
    (kind, item, field)
}

/// Reports whether `text` spans lines and so gets a line diff.
fn is_text(text: &str) -> bool {
    text.contains('\n')
}

/// Lists the lines that differ between `old` and `new`, in order: the longest common
/// subsequence of lines stays, the rest is removed or added.
pub fn line_diff(old: &str, new: &str) -> Vec<LineEdit> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let a_mid = &a[prefix..a.len() - suffix];
    let b_mid = &b[prefix..b.len() - suffix];

    let mut out = Vec::new();
    let removed = |index: usize, out: &mut Vec<LineEdit>| {
        out.push(LineEdit {
            op: '-',
            line: prefix + index + 1,
            text: a_mid[index].to_string(),
        });
    };
    let added = |index: usize, out: &mut Vec<LineEdit>| {
        out.push(LineEdit {
            op: '+',
            line: prefix + index + 1,
            text: b_mid[index].to_string(),
        });
    };

    if a_mid.len().saturating_mul(b_mid.len()) > LINE_DIFF_CELLS_MAX {
        (0..a_mid.len()).for_each(|index| removed(index, &mut out));
        (0..b_mid.len()).for_each(|index| added(index, &mut out));
        return out;
    }

    // lengths[i][j]: longest common subsequence of a_mid[i..] and b_mid[j..].
    let width = b_mid.len() + 1;
    let mut lengths = vec![0u32; (a_mid.len() + 1) * width];
    for i in (0..a_mid.len()).rev() {
        for j in (0..b_mid.len()).rev() {
            lengths[i * width + j] = if a_mid[i] == b_mid[j] {
                lengths[(i + 1) * width + j + 1] + 1
            } else {
                lengths[(i + 1) * width + j].max(lengths[i * width + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a_mid.len() || j < b_mid.len() {
        if i < a_mid.len() && j < b_mid.len() && a_mid[i] == b_mid[j] {
            i += 1;
            j += 1;
        } else if j == b_mid.len()
            || (i < a_mid.len() && lengths[(i + 1) * width + j] >= lengths[i * width + j + 1])
        {
            removed(i, &mut out);
            i += 1;
        } else {
            added(j, &mut out);
            j += 1;
        }
    }
    out
}

/// Turns paths from [`changed_paths`] into the items they write. Each item is a list of map keys
/// from the root, cut at the item level (see [`item_depth`]) and at the first list index. The
/// list has no duplicates and no path that lies under another path of the list.
pub(crate) fn touched_items(paths: &[Vec<Prop>]) -> Vec<Vec<String>> {
    let mut items: BTreeSet<Vec<String>> = BTreeSet::new();
    for props in paths {
        let mut path = Vec::new();
        for prop in props {
            match prop {
                Prop::Map(key) => path.push(key.clone()),
                Prop::Seq(_) => break,
            }
        }
        path.truncate(item_depth(&path));
        items.insert(path);
    }
    // A path under another listed path is compared as part of that one.
    let mut out: Vec<Vec<String>> = Vec::new();
    for path in items {
        if !out.iter().any(|kept| path.starts_with(kept)) {
            out.push(path);
        }
    }
    out
}

/// Lists the paths from the root (object path plus the key written) of every operation in the
/// changes between `before` and `after`. Paths come from the changes' own operations, so the
/// cost grows with the changes, not the document. When an operation cannot be resolved, or more
/// than [`CHANGES_WALKED_MAX`] changes lie between, they come from automerge's diff instead.
pub fn changed_paths(
    doc: &mut AutoCommit,
    before: &[ChangeHash],
    after: &[ChangeHash],
) -> Vec<Vec<Prop>> {
    if let Some(paths) = paths_from_operations(doc, before, after) {
        return paths;
    }
    let mut out = Vec::new();
    for patch in doc.diff(before, after) {
        let mut path: Vec<Prop> = patch.path.into_iter().map(|(_, prop)| prop).collect();
        match patch.action {
            PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => {
                path.push(Prop::Map(key));
            }
            PatchAction::Conflict { prop } | PatchAction::Increment { prop, .. } => {
                path.push(prop);
            }
            _ => {}
        }
        out.push(path);
    }
    out
}

fn paths_from_operations(
    doc: &AutoCommit,
    before: &[ChangeHash],
    after: &[ChangeHash],
) -> Option<Vec<Vec<Prop>>> {
    let mut out = Vec::new();
    let mut seen: BTreeSet<ChangeHash> = before.iter().copied().collect();
    let mut pending: Vec<ChangeHash> = after.to_vec();
    let mut walked = 0;
    while let Some(hash) = pending.pop() {
        if !seen.insert(hash) {
            continue;
        }
        walked += 1;
        if walked > CHANGES_WALKED_MAX {
            return None;
        }
        let change = ReadDoc::get_change_by_hash(doc, &hash)?;
        pending.extend_from_slice(change.deps());
        for op in change.decode().operations {
            let mut props = Vec::new();
            if let legacy::ObjectId::Id(id) = &op.obj {
                // NOTE: `import_obj` is hidden from automerge's documentation. It is the only
                // public way from a change's object id to the document's id in 0.12.
                let obj = doc.import_obj(&id.to_string()).ok()?;
                let parents = doc.parents(&obj).ok()?;
                props.extend(parents.path().into_iter().map(|(_, prop)| prop));
            }
            props.push(match op.key {
                legacy::Key::Map(key) => Prop::Map(key.to_string()),
                legacy::Key::Seq(_) => Prop::Seq(0),
            });
            out.push(props);
        }
    }
    Some(out)
}

/// Tracked files whose content names the machine itself, so they differ between any two machines.
pub const MACHINE_SPECIFIC_FILES: [&str; 4] = [
    "/etc/hostname",
    "/etc/HOSTNAME",
    "/etc/machine-id",
    "/etc/hosts",
];

/// Reports whether a path from the root names a fact that differs between machines by nature
/// (names, ids, boot time, hardware serial, addresses, free space, tracked files' modification
/// times, and the tracked files of
/// [`MACHINE_SPECIFIC_FILES`]). Comparisons of two machines leave these out unless asked for
/// everything.
pub fn is_machine_specific(path: &[String]) -> bool {
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    matches!(
        parts.as_slice(),
        ["identity", ..]
            | [
                "facts",
                "system",
                "hostname" | "fqdn" | "machine_id" | "boot_time",
                ..
            ]
            | ["facts", "hardware", "serial", ..]
            | ["facts", "mounts", _, "free_bytes", ..]
            | ["facts", "interfaces", _, "mac" | "addresses", ..]
            | ["facts", "tracked_files", _, "mtime", ..]
    ) || matches!(parts.as_slice(), ["facts", "tracked_files", file, ..] if MACHINE_SPECIFIC_FILES.contains(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn never(_: &[String]) -> bool {
        false
    }

    #[test]
    fn new_section_is_reported_per_item() {
        let new =
            json!({"facts": {"packages": {"a:amd64": {"version": "1"}, "b": {"version": "2"}}}});
        let out = diff_values(None, Some(&new), &never);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].path(), "packages/a:amd64");
        assert_eq!(out[0].action, Action::Added);
        assert_eq!(out[0].new, Some(json!({"version": "1"})));
        assert_eq!(out[1].path(), "packages/b");
    }

    #[test]
    fn changed_field_carries_old_and_new() {
        let old = json!({"facts": {"packages": {"openssl:amd64": {"version": "3.0.11", "arch": "amd64"}}}});
        let new = json!({"facts": {"packages": {"openssl:amd64": {"version": "3.0.13", "arch": "amd64"}}}});
        let out = diff_values(Some(&old), Some(&new), &never);
        assert_eq!(out.len(), 1);
        let change = &out[0];
        assert_eq!(change.kind, "packages");
        assert_eq!(change.item.as_deref(), Some("openssl:amd64"));
        assert_eq!(change.field.as_deref(), Some("version"));
        assert_eq!(change.action, Action::Changed);
        assert_eq!(change.old, Some(json!("3.0.11")));
        assert_eq!(change.new, Some(json!("3.0.13")));
    }

    #[test]
    fn removed_item_is_one_entry() {
        let old = json!({"facts": {"services": {"nginx.service": {"enabled": "enabled"}}}});
        let new = json!({"facts": {"services": {}}});
        let out = diff_values(Some(&old), Some(&new), &never);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].action, Action::Removed);
        assert_eq!(out[0].path(), "services/nginx.service");
    }

    #[test]
    fn block_devices_and_release_fields_are_items() {
        let new = json!({"facts": {
            "hardware": {"block_devices": {"sda": {"size_bytes": 1}}},
            "os": {"release_fields": {"ID": "debian"}}
        }});
        let out = diff_values(None, Some(&new), &never);
        let paths: Vec<String> = out.iter().map(FactChange::path).collect();
        assert_eq!(paths, ["block_devices/sda", "os/release_fields/ID"]);
    }

    #[test]
    fn text_content_gets_changed_lines() {
        let old = json!({"facts": {"tracked_files": {"/etc/ssh/sshd_config": {
            "content": "Port 22\nPermitRootLogin yes\nUsePAM yes\n"}}}});
        let new = json!({"facts": {"tracked_files": {"/etc/ssh/sshd_config": {
            "content": "Port 22\nPermitRootLogin no\nUsePAM yes\n"}}}});
        let out = diff_values(Some(&old), Some(&new), &never);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].lines,
            vec![
                LineEdit {
                    op: '-',
                    line: 2,
                    text: "PermitRootLogin yes".into()
                },
                LineEdit {
                    op: '+',
                    line: 2,
                    text: "PermitRootLogin no".into()
                },
            ]
        );
    }

    #[test]
    fn line_diff_handles_insertions_and_deletions() {
        let edits = line_diff("a\nb\nc\nd\n", "a\nc\nx\nd\ne\n");
        let rendered: Vec<String> = edits
            .iter()
            .map(|e| format!("{}{} {}", e.op, e.line, e.text))
            .collect();
        assert_eq!(rendered, ["-2 b", "+3 x", "+5 e"]);
    }

    #[test]
    fn skip_leaves_out_machine_specific_facts() {
        let a = json!({"facts": {"system": {"hostname": "a", "timezone": "UTC"},
                                 "interfaces": {"eth0": {"mac": "x", "mtu": 1500}}}});
        let b = json!({"facts": {"system": {"hostname": "b", "timezone": "Europe/Paris"},
                                 "interfaces": {"eth0": {"mac": "y", "mtu": 1500}}}});
        let out = diff_values(Some(&a), Some(&b), &is_machine_specific);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].path(), "system/timezone");
    }

    #[test]
    fn path_filter_matches_parts_and_package_names() {
        let old = json!({"facts": {"packages": {"openssl:amd64": {"version": "1"},
                                                "openssl-dev:amd64": {"version": "1"}}}});
        let new = json!({"facts": {"packages": {"openssl:amd64": {"version": "2"},
                                                "openssl-dev:amd64": {"version": "2"}}}});
        let out = diff_values(Some(&old), Some(&new), &never);
        let hits: Vec<String> = out
            .iter()
            .filter(|c| c.matches("packages/openssl"))
            .map(FactChange::path)
            .collect();
        assert_eq!(hits, ["packages/openssl:amd64/version"]);
        assert!(out.iter().all(|c| c.matches("packages")));
        assert!(out[1].matches("packages/openssl/version"));
        assert!(!out[1].matches("packages/openssl/arch"));
        assert!(!out[0].matches("services"));

        let file = FactChange::new(
            &[
                "facts".into(),
                "tracked_files".into(),
                "/etc/ssh/sshd_config".into(),
                "mode".into(),
            ],
            Action::Changed,
            Some(&json!("0644")),
            Some(&json!("0600")),
        );
        assert_eq!(file.path(), "tracked_files/etc/ssh/sshd_config/mode");
        assert!(file.matches("tracked_files/etc/ssh/sshd_config"));
        assert!(file.matches("tracked_files//etc/ssh/sshd_config/mode"));
        assert!(file.matches("tracked_files/etc/ssh"));
        assert!(!file.matches("tracked_files/etc/ss"));
    }
}
