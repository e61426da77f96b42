//! The apply step: reads what the WireGuard device has and writes changes to it, for both
//! backends. Blocking calls (the control socket, the WireGuard netlink family); the daemon runs
//! them off its async threads.

use skein_config::OverlayMode;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use wireguard_control::{
    Backend as WgBackend, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder,
};

use crate::peers::PeerChange;
use crate::secret::{self, PrivateKey};
use crate::uapi;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(
        "the userspace WireGuard device {interface} is not running ({socket}: {cause}); \
         start it: systemctl start skein-wireguard (or `skein wireguard --interface {interface}`)"
    )]
    DeviceMissing {
        interface: String,
        socket: String,
        cause: String,
    },
    #[error(
        "{socket} belongs to {program} (pid {pid}), not to skein's own WireGuard device; \
         refusing to configure another program's WireGuard. Stop it, or set overlay.interface \
         to another name"
    )]
    Stranger {
        socket: String,
        pid: u32,
        program: String,
    },
    #[error("overlay.interface {interface:?}: {why}")]
    Name { interface: String, why: String },
    #[error("kernel WireGuard on {interface}: {cause}")]
    Kernel { interface: String, cause: String },
    #[error("{0}")]
    Control(String),
}

/// Which WireGuard implementation carries the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The kernel module, configured over netlink.
    Kernel,
    /// skein's own userspace device (`skein wireguard`), configured over its control socket.
    Userspace,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        }
    }
}

/// Picks the backend for `overlay.mode` and says why, for the page. `kernel_available`: the
/// running kernel has the WireGuard module.
pub fn choose_backend(
    mode: OverlayMode,
    kernel_available: bool,
    interface: &str,
) -> (Backend, String) {
    let socket = uapi::socket_path(interface);
    match mode {
        OverlayMode::Kernel => (Backend::Kernel, "overlay.mode = kernel".into()),
        OverlayMode::Userspace => (Backend::Userspace, "overlay.mode = userspace".into()),
        _ if socket.exists() => (
            Backend::Userspace,
            format!(
                "overlay.mode = auto and a userspace device serves {interface} ({})",
                socket.display()
            ),
        ),
        _ if kernel_available => (
            Backend::Kernel,
            "overlay.mode = auto and the kernel has WireGuard".into(),
        ),
        _ => (
            Backend::Userspace,
            "overlay.mode = auto and the kernel has no WireGuard module".into(),
        ),
    }
}

/// What a device has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub public_key: Option<Key>,
    pub listen_port: u16,
    pub peers: Vec<PeerState>,
}

/// One peer as the device has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: Key,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub last_handshake_age: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub keepalive: Option<u16>,
}

impl PeerState {
    pub fn new(public_key: Key) -> Self {
        Self {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            last_handshake_age: None,
            rx_bytes: 0,
            tx_bytes: 0,
            keepalive: None,
        }
    }
}

/// One write to a device: the private key and listen port when they change, and peer changes.
/// `Debug` is safe to log: the private key shows itself redacted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChange {
    pub private_key: Option<PrivateKey>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerChange>,
    /// `overlay.persistent_keepalive`, for every peer written.
    pub keepalive: Option<u16>,
}

impl DeviceChange {
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none() && self.listen_port.is_none() && self.peers.is_empty()
    }
}

/// One node's WireGuard device.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub interface: String,
    pub backend: Backend,
}

impl Overlay {
    pub fn new(interface: &str, backend: Backend) -> Result<Self, OverlayError> {
        InterfaceName::from_str_checked(interface)?;
        Ok(Self {
            interface: interface.to_string(),
            backend,
        })
    }

    /// The device's key, port and peers. For the userspace backend this also proves the device
    /// is skein's own (see [`uapi`]).
    pub fn read(&self) -> Result<DeviceState, OverlayError> {
        match self.backend {
            Backend::Userspace => uapi::connect_owned(&self.interface)?.get(),
            Backend::Kernel => {
                let name = self.ifname()?;
                let mut device = wireguard_control::Device::get(&name, WgBackend::Kernel)
                    .map_err(|e| self.kernel(e))?;
                // The kernel answers with the private key too; only its public half is kept.
                if let Some(private) = device.private_key.take() {
                    secret::wipe(private);
                }
                let now = std::time::SystemTime::now();
                Ok(DeviceState {
                    public_key: device.public_key,
                    listen_port: device.listen_port.unwrap_or(0),
                    peers: device
                        .peers
                        .into_iter()
                        .map(|p| PeerState {
                            public_key: p.config.public_key,
                            endpoint: p.config.endpoint,
                            allowed_ips: p
                                .config
                                .allowed_ips
                                .iter()
                                .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
                                .collect(),
                            last_handshake_age: p
                                .stats
                                .last_handshake_time
                                .and_then(|t| now.duration_since(t).ok()),
                            rx_bytes: p.stats.rx_bytes,
                            tx_bytes: p.stats.tx_bytes,
                            keepalive: p.config.persistent_keepalive_interval,
                        })
                        .collect(),
                })
            }
        }
    }

    /// Writes `change` to the device; nothing when it is empty.
    pub fn apply(&self, change: &DeviceChange) -> Result<(), OverlayError> {
        if change.is_empty() {
            return Ok(());
        }
        match self.backend {
            Backend::Userspace => {
                uapi::connect_owned(&self.interface)?.set(&uapi::render_set(change))
            }
            Backend::Kernel => self.apply_kernel(change),
        }
    }

    fn apply_kernel(&self, change: &DeviceChange) -> Result<(), OverlayError> {
        let DeviceChange {
            private_key,
            listen_port,
            peers: changes,
            keepalive,
        } = change;
        let keepalive = *keepalive;
        let name = self.ifname()?;
        let peer = |key: &Key| {
            let b = PeerConfigBuilder::new(key);
            match keepalive {
                Some(k) => b.set_persistent_keepalive_interval(k),
                None => b.unset_persistent_keepalive(),
            }
        };
        let with_ips = |b: PeerConfigBuilder, ips: &[IpNet]| {
            ips.iter()
                .fold(b, |b, ip| b.add_allowed_ip(ip.addr(), ip.prefix_len()))
        };
        // First pass: key, port, new peers, and the new allowed IPs of changed peers added to
        // the old ones — nothing is taken away yet.
        let mut first = DeviceUpdate::new();
        if let Some(k) = private_key {
            first = first.set_private_key(k.to_wireguard_control());
        }
        if let Some(p) = *listen_port {
            first = first.set_listen_port(p);
        }
        let mut second = DeviceUpdate::new();
        for change in changes {
            match change {
                PeerChange::Add {
                    public_key,
                    endpoint,
                    allowed_ips,
                } => {
                    first = first
                        .add_peer(with_ips(peer(public_key), allowed_ips).set_endpoint(*endpoint));
                }
                PeerChange::Update {
                    public_key,
                    endpoint,
                    allowed_ips,
                    ..
                } => {
                    let mut b = with_ips(peer(public_key), allowed_ips);
                    if let Some(e) = endpoint {
                        b = b.set_endpoint(*e);
                    }
                    first = first.add_peer(b);
                    // Second pass: exactly the new set.
                    second = second
                        .add_peer(with_ips(peer(public_key), allowed_ips).replace_allowed_ips());
                }
                PeerChange::Remove { public_key } => {
                    second = second.remove_peer_by_key(public_key);
                }
            }
        }
        first
            .apply(&name, WgBackend::Kernel)
            .map_err(|e| self.kernel(e))?;
        second
            .apply(&name, WgBackend::Kernel)
            .map_err(|e| self.kernel(e))
    }

    fn ifname(&self) -> Result<InterfaceName, OverlayError> {
        InterfaceName::from_str_checked(&self.interface)
    }

    fn kernel(&self, e: std::io::Error) -> OverlayError {
        OverlayError::Kernel {
            interface: self.interface.clone(),
            cause: e.to_string(),
        }
    }
}

trait Checked: Sized {
    fn from_str_checked(s: &str) -> Result<Self, OverlayError>;
}

impl Checked for InterfaceName {
    fn from_str_checked(s: &str) -> Result<Self, OverlayError> {
        s.parse().map_err(|e| OverlayError::Name {
            interface: s.to_string(),
            why: format!("{e:?}"),
        })
    }
}
