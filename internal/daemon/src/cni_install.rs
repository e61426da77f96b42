//! Installs skein as the node's CNI plugin: the network configuration list (`cni.conf_dir`,
//! `10-skein.conflist`) and the plugin binary (`cni.bin_dir/skein`, this very executable). Each is
//! written to a temporary file and renamed into place, and only when its content differs, so a
//! runtime never reads half a file and a restart changes nothing. Nothing else is touched.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const CONFLIST_NAME: &str = "10-skein.conflist";
pub const PLUGIN_NAME: &str = "skein";

/// Who takes the `portMappings` capability, i.e. forwards the pods' hostPorts. Only one may:
/// both would DNAT the same packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMappings {
    /// skein's own plugin entry, and its service proxy programs them (`cni.portmap = false`).
    Skein,
    /// The reference portmap plugin, chained after skein's (`cni.portmap = true`).
    Portmap,
    /// Nobody: hostPorts are not forwarded (skein's proxy is off and portmap not chained).
    Nobody,
}

/// The network configuration list: a pure function of the configuration. `cniVersion` 1.0.0
/// keeps runtimes without 1.1 loading it; `cniVersions` lets newer ones pick 1.1.0.
pub fn conflist(socket: &Path, port_mappings: PortMappings) -> String {
    let mut skein = serde_json::json!({ "type": PLUGIN_NAME, "socket": socket });
    let mut plugins = Vec::new();
    match port_mappings {
        PortMappings::Skein => {
            // The runtime then passes the pod's hostPorts as runtimeConfig.portMappings.
            skein["capabilities"] = serde_json::json!({ "portMappings": true });
            plugins.push(skein);
        }
        PortMappings::Portmap => {
            plugins.push(skein);
            // The reference portmap plugin speaks up to 1.0.0, which the list's version is.
            plugins.push(serde_json::json!({ "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }));
        }
        PortMappings::Nobody => plugins.push(skein),
    }
    let list = serde_json::json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": "skein",
        "plugins": plugins,
    });
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
    text.push('\n');
    text
}

/// Writes `content` to `path` through a temporary file and a rename, unless it is already there.
/// Returns whether anything was written.
pub fn install_file(path: &Path, content: &[u8], mode: u32) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|have| have == content) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.skein-tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// Installs the conflist and the plugin binary; returns what it wrote, for the log.
pub fn install(
    conf_dir: &Path,
    bin_dir: &Path,
    socket: &Path,
    port_mappings: PortMappings,
) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let exe = std::env::current_exe()?;
    let binary = std::fs::read(&exe)?;
    let plugin = bin_dir.join(PLUGIN_NAME);
    // The binary first: a conflist naming a plugin that is not there yet would fail pods.
    if install_file(&plugin, &binary, 0o755)? {
        written.push(plugin);
    }
    let list = conf_dir.join(CONFLIST_NAME);
    if install_file(&list, conflist(socket, port_mappings).as_bytes(), 0o644)? {
        written.push(list);
    }
    Ok(written)
}
