//! The userspace WireGuard device that stands in where the kernel has no WireGuard module:
//! `skein wireguard --interface NAME` runs it as a process of its own, so restarting the daemon
//! never cuts pod traffic (the reason Cilium dropped its in-agent userspace fallback). The daemon
//! only configures it, over the cross-platform control socket
//! `/var/run/wireguard/NAME.sock`, and re-adopts it after a restart.
//!
//! boringtun's device creates the TUN and the socket; it sets no MTU, address or route, which the
//! daemon does through rtnetlink.

use skein_names::IfName;
use std::path::PathBuf;
use std::time::Duration;

use boringtun::device::{DeviceConfig, DeviceHandle};

/// Where every userspace WireGuard (boringtun, wireguard-go) keeps its control socket. One
/// directory for the whole machine, whatever the network namespace: names must be unique.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "another WireGuard device already serves {name} ({socket} answers); stop it first — \
         starting would remove its control socket"
    )]
    SocketInUse { name: String, socket: String },
    #[error(
        "a network interface named {name} already exists in this network namespace; \
         a userspace device needs a name of its own"
    )]
    LinkExists { name: String },
    #[error("cannot start the userspace WireGuard device {name}: {cause}")]
    Start { name: String, cause: String },
}

/// Whether the running kernel has WireGuard (built in or loaded; `modprobe wireguard` at boot,
/// e.g. through modules-load.d, makes `overlay.mode = auto` pick it).
pub fn kernel_has_wireguard() -> bool {
    std::path::Path::new("/sys/module/wireguard").exists()
}

/// The control socket of interface `name`.
pub fn socket_path(name: &str) -> PathBuf {
    PathBuf::from(SOCKET_DIR).join(format!("{name}.sock"))
}

/// Runs the device `name` in the calling process's network namespace until SIGTERM or SIGINT,
/// or until its control socket is removed. `threads` packet workers.
///
/// Refuses when a live socket of that name exists (boringtun would delete it and orphan the
/// other device) or when a link of that name is present (opening a multi-queue TUN of an
/// existing name would join the other device's queues).
pub fn run(name: &IfName, threads: usize) -> Result<(), DeviceError> {
    // Checked by skein's one name validator: safe in the socket path and for the kernel.
    let name = name.as_str();
    let socket = socket_path(name);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(DeviceError::SocketInUse {
            name: name.to_string(),
            socket: socket.display().to_string(),
        });
    }
    if nix::net::if_::if_nametoindex(name).is_ok() {
        return Err(DeviceError::LinkExists {
            name: name.to_string(),
        });
    }
    // The control socket configures the device, keys included: only root may use it. It takes
    // its mode from the umask when boringtun binds it (0777 masked), so the umask is narrowed to
    // 0177 for the bind; the directory is made first, where the bind's umask would leave it
    // untraversable. The process creates no other file; the unit's UMask=0077 covers the rest.
    let _ = std::fs::create_dir_all(SOCKET_DIR);
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let config = DeviceConfig {
        n_threads: threads.max(1),
        use_connected_socket: true,
        use_multi_queue: true,
        uapi_fd: -1,
    };
    let device = DeviceHandle::new(name, config);
    nix::sys::stat::umask(umask | nix::sys::stat::Mode::from_bits_truncate(0o077));
    let mut device = device.map_err(|e| DeviceError::Start {
        name: name.to_string(),
        cause: format!("{e:?}"),
    })?;
    tracing::info!(interface = name, socket = %socket.display(), threads, "userspace WireGuard device up");
    device.wait();
    // The workers end on a signal or when the socket vanished; give in-flight packets a moment.
    std::thread::sleep(Duration::from_millis(10));
    tracing::info!(interface = name, "userspace WireGuard device stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
