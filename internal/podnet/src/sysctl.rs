//! Sysctls under /proc/sys (of this network namespace, for net.*).

use crate::PodNetError;

/// Writes a sysctl under /proc/sys (of this network namespace, for net.*) when it differs;
/// `true` when it had to be written.
pub fn set_sysctl(key: &str, value: &str) -> Result<bool, PodNetError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current.trim() == value {
        return Ok(false);
    }
    std::fs::write(&path, value)
        .map(|()| true)
        .map_err(|source| PodNetError::Io {
            action: format!("setting {key} = {value}"),
            source,
        })
}

/// Whether this kernel filters bridged traffic through the IP hooks at all (`br_netfilter`
/// loaded or built in): without it the `net.bridge.*` sysctls do not exist.
pub fn has_br_netfilter() -> bool {
    std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
}
