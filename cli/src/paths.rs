//! Default locations.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Returns the default data directory: `/var/lib/fleetmesh` for root, otherwise
/// `$XDG_DATA_HOME/fleetmesh` or `$HOME/.local/share/fleetmesh`.
pub fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/fleetmesh");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("fleetmesh");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/fleetmesh");
    }
    PathBuf::from(".fleetmesh")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}
