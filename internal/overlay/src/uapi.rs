//! The cross-platform WireGuard control protocol ("UAPI": `get=1` / `set=1` over a unix socket
//! in /var/run/wireguard), as skein speaks it to its own userspace device.
//!
//! wireguard-control's userspace backend reconnects by name on every call and starts
//! `$WG_USERSPACE_IMPLEMENTATION` (or `wireguard-go`) when the socket is missing, so a device that
//! died between a check and a call would be replaced by a stranger. Here the check and the
//! command share one connection: connect, ask the kernel who listens (`SO_PEERCRED`), refuse
//! anything but skein's own device in this network namespace, then talk.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use wireguard_control::Key;
use zeroize::{Zeroize, Zeroizing};

use crate::device::{DeviceChange, DeviceState, OverlayError, PeerState};
use crate::peers::PeerChange;
use crate::secret::PrivateKey;

/// How long a device may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Room reserved up front for a `get=1` answer, so that the buffer holding the device's
/// private key is seldom moved (a move would leave an unwiped copy behind); a device with
/// hundreds of peers still works, its answer just grows the buffer.
const ANSWER_CAPACITY: usize = 64 * 1024;

/// Keys of the control protocol whose values are secret: never quoted in an error.
const SECRET_KEYS: [&str; 2] = ["private_key", "preshared_key"];

/// The control socket of interface `name`.
pub fn socket_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/wireguard").join(format!("{name}.sock"))
}

/// A connection to `name`'s control socket whose listener was checked to be skein's own device
/// (`skein wireguard`) in this process's network namespace.
#[derive(Debug)]
pub struct Owned {
    stream: UnixStream,
    pub pid: u32,
}

pub fn connect_owned(name: &str) -> Result<Owned, OverlayError> {
    let socket = socket_path(name);
    let stream = UnixStream::connect(&socket).map_err(|e| OverlayError::DeviceMissing {
        interface: name.to_string(),
        socket: socket.display().to_string(),
        cause: e.to_string(),
    })?;
    let creds = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| OverlayError::Stranger {
        socket: socket.display().to_string(),
        pid: 0,
        program: format!("unknown (cannot read its credentials: {e})"),
    })?;
    let pid = u32::try_from(creds.pid()).unwrap_or(0);
    check_owner(pid).map_err(|program| OverlayError::Stranger {
        socket: socket.display().to_string(),
        pid,
        program,
    })?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    Ok(Owned { stream, pid })
}

/// Ok when `pid` is `skein wireguard` from a binary named like ours, in our network namespace;
/// otherwise a description of what it is instead.
fn check_owner(pid: u32) -> Result<(), String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.display()
                .to_string()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .unwrap_or_default();
    let file_name = |p: &str| p.rsplit('/').next().unwrap_or_default().to_string();
    let ours = std::env::current_exe()
        .map(|p| file_name(&p.display().to_string()))
        .unwrap_or_else(|_| "skein".into());
    let described = if args.is_empty() {
        format!("pid {pid}")
    } else {
        args.join(" ")
    };
    if file_name(&exe) != ours || args.get(1).map(String::as_str) != Some("wireguard") {
        return Err(described);
    }
    let ns = |p: String| std::fs::read_link(p).ok();
    if ns(format!("/proc/{pid}/ns/net")) != ns("/proc/self/ns/net".into()) {
        return Err(format!("{described} (in another network namespace)"));
    }
    Ok(())
}

impl Owned {
    /// `get=1`: the device's key, port and peers. The answer carries the device's private key,
    /// so it is read into buffers that are wiped when dropped.
    pub fn get(mut self) -> Result<DeviceState, OverlayError> {
        self.stream
            .write_all(b"get=1\n\n")
            .map_err(|e| OverlayError::Control(format!("asking the device for its state: {e}")))?;
        let mut answer = Zeroizing::new(Vec::with_capacity(ANSWER_CAPACITY));
        let mut chunk = Zeroizing::new([0u8; 4096]);
        // The answer ends with an empty line (or the device closes the connection).
        while !answer.ends_with(b"\n\n") {
            let n = self
                .stream
                .read(&mut chunk[..])
                .map_err(|e| OverlayError::Control(format!("reading the device's state: {e}")))?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        chunk.zeroize();
        let text = std::str::from_utf8(&answer)
            .map_err(|_| OverlayError::Control("the device's state is not text".to_string()))?;
        parse_get(text, SystemTime::now())
    }

    /// `set=1` with `body` (from [`render_set`]; it may carry the private key, so it is
    /// never quoted).
    pub fn set(mut self, body: &str) -> Result<(), OverlayError> {
        self.stream
            .write_all(body.as_bytes())
            .map_err(|e| OverlayError::Control(format!("configuring the device: {e}")))?;
        let mut line = String::new();
        BufReader::new(&self.stream)
            .read_line(&mut line)
            .map_err(|e| OverlayError::Control(format!("reading the device's answer: {e}")))?;
        match line.trim_end() {
            "errno=0" => Ok(()),
            other => Err(OverlayError::Control(format!(
                "the device refused the configuration: {other:?}"
            ))),
        }
    }
}

fn hex(key: &Key) -> String {
    key.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Key> {
    Key::from_hex(s).ok()
}

/// The `set=1` request for a private key, a listen port and peer changes. Updates are a remove
/// and an add in the same request (boringtun cannot modify a peer in place; one request is one
/// critical section, so no packet sees the peer missing). Wiped when dropped: it may carry the
/// private key.
pub fn render_set(change: &DeviceChange) -> Zeroizing<String> {
    let keepalive = change.keepalive;
    // Sized for the whole request so the private key's text is never moved by a regrowth.
    let mut out = Zeroizing::new(String::with_capacity(128 + 256 * change.peers.len()));
    out.push_str("set=1\n");
    if let Some(k) = &change.private_key {
        out.push_str("private_key=");
        out.push_str(&k.to_hex());
        out.push('\n');
    }
    if let Some(p) = change.listen_port {
        out.push_str(&format!("listen_port={p}\n"));
    }
    let add = |out: &mut String, key: &Key, endpoint: Option<SocketAddr>, ips: &[IpNet]| {
        out.push_str(&format!("public_key={}\n", hex(key)));
        if let Some(e) = endpoint {
            out.push_str(&format!("endpoint={e}\n"));
        }
        out.push_str(&format!(
            "persistent_keepalive_interval={}\n",
            keepalive.unwrap_or(0)
        ));
        for ip in ips {
            out.push_str(&format!("allowed_ip={ip}\n"));
        }
    };
    for peer in &change.peers {
        match peer {
            PeerChange::Add {
                public_key,
                endpoint,
                allowed_ips,
            } => add(&mut out, public_key, Some(*endpoint), allowed_ips),
            PeerChange::Update {
                public_key,
                endpoint,
                current_endpoint,
                allowed_ips,
                ..
            } => {
                out.push_str(&format!("public_key={}\nremove=true\n", hex(public_key)));
                add(
                    &mut out,
                    public_key,
                    endpoint.or(*current_endpoint),
                    allowed_ips,
                );
            }
            PeerChange::Remove { public_key } => {
                out.push_str(&format!("public_key={}\nremove=true\n", hex(public_key)));
            }
        }
    }
    out.push('\n');
    out
}

/// Parses a `get=1` answer. The handshake time is an absolute UNIX time in the protocol
/// (wireguard-go, the kernel), but boringtun 0.7 sends the time since the handshake; a value
/// before 2001 can only be the latter.
pub fn parse_get(text: &str, now: SystemTime) -> Result<DeviceState, OverlayError> {
    let mut state = DeviceState::default();
    let mut peer: Option<PeerState> = None;
    let mut hs_sec: Option<u64> = None;
    let finish = |peer: &mut Option<PeerState>, hs: &mut Option<u64>, state: &mut DeviceState| {
        if let Some(mut p) = peer.take() {
            p.last_handshake_age = hs.take().filter(|s| *s > 0 || p.rx_bytes > 0).map(|s| {
                if s > 1_000_000_000 {
                    now.duration_since(UNIX_EPOCH + Duration::from_secs(s))
                        .unwrap_or_default()
                } else {
                    Duration::from_secs(s)
                }
            });
            state.peers.push(p);
        }
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let bad = || {
            OverlayError::Control(if SECRET_KEYS.contains(&k) {
                format!("the device answered a malformed {k} (its value is secret, not shown)")
            } else {
                format!("the device answered {line:?}")
            })
        };
        match k {
            "errno" if v != "0" => {
                return Err(OverlayError::Control(format!(
                    "the device answered errno={v}"
                )));
            }
            "private_key" => {
                state.public_key = Some(PrivateKey::from_hex(v).ok_or_else(bad)?.public());
            }
            "own_public_key" => state.public_key = Some(unhex(v).ok_or_else(bad)?),
            "listen_port" => state.listen_port = v.parse().map_err(|_| bad())?,
            "public_key" => {
                finish(&mut peer, &mut hs_sec, &mut state);
                peer = Some(PeerState::new(unhex(v).ok_or_else(bad)?));
            }
            _ => {
                let Some(p) = peer.as_mut() else { continue };
                match k {
                    "endpoint" => p.endpoint = v.parse().ok(),
                    "allowed_ip" => p.allowed_ips.push(v.parse().map_err(|_| bad())?),
                    "rx_bytes" => p.rx_bytes = v.parse().map_err(|_| bad())?,
                    "tx_bytes" => p.tx_bytes = v.parse().map_err(|_| bad())?,
                    "persistent_keepalive_interval" => {
                        p.keepalive = v.parse().ok().filter(|n: &u16| *n > 0)
                    }
                    "last_handshake_time_sec" => hs_sec = v.parse().ok(),
                    _ => {}
                }
            }
        }
    }
    finish(&mut peer, &mut hs_sec, &mut state);
    Ok(state)
}
