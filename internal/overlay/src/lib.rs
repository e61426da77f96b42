//! The encrypted overlay between nodes: one WireGuard interface per node whose peers are the
//! other nodes of the cluster, learnt from the `skein.dev/wireguard-*` annotations on their Node
//! objects.
//!
//! - [`key`]: the node's key pair, kept in a 0600 file in the state directory.
//! - [`secret`]: the private key's type, which never prints itself and is wiped on drop.
//! - [`rotation`]: replacing the key so that a crash at any step leaves disk and device agreeing.
//! - [`peers`]: the pure part: the desired peers and routes from a cluster snapshot, and the
//!   ordered changes that take a device from what it has to what it should have.
//! - [`device`]: the thin apply step, to kernel WireGuard (netlink, through wireguard-control) or
//!   to skein's own userspace device (its control socket, after checking who owns it).

pub mod device;
pub mod key;
pub mod peers;
pub mod rotation;
pub mod secret;
pub mod uapi;

#[cfg(test)]
mod tests;

pub use device::{
    Backend, DeviceChange, DeviceState, Overlay, OverlayError, PeerState, choose_backend,
};
pub use key::{KeyError, NodeKey};
pub use peers::{PeerChange, PeerSpec, Skipped, desired_peers, plan_peers, plan_routes};
pub use rotation::{KeyDevice, PendingKey, decide_pending, finish_pending_rotation, rotate};
pub use secret::PrivateKey;

/// Bytes WireGuard adds to each packet over IPv6 (IPv6 40 + UDP 8 + WireGuard 32); over IPv4
/// it is 60, so one figure serves both.
pub const OVERHEAD: u32 = 80;

/// The overlay's MTU: configured, else the underlay's minus WireGuard's overhead.
pub fn overlay_mtu(configured: Option<u32>, underlay_mtu: Option<u32>) -> u32 {
    configured.unwrap_or_else(|| {
        underlay_mtu
            .unwrap_or(1500)
            .saturating_sub(OVERHEAD)
            .max(576)
    })
}

/// The MTU of the interface that carries the default route, read from /proc and /sys.
pub fn underlay_mtu() -> Option<u32> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let dev = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000")).then(|| f[0].to_string())
    })?;
    std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
