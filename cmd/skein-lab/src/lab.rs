//! What a lab is made of and where it lives: its names (everything it creates carries the
//! prefix `skl-<lab>-`, so `down` can find it even after a crash), its state file, and the
//! processes it started, each tagged with `SKEIN_LAB=<lab>` in its environment.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Root of every lab's files (a tmpfs, so a reboot clears what a crash left).
pub const LABS_DIR: &str = "/run/skein-lab";
/// Environment tag on every process a lab starts.
pub const LAB_ENV: &str = "SKEIN_LAB";
/// The underlay: 198.18.0.0/15 is reserved for benchmarking networks (RFC 2544); each lab has its
/// own copy inside its namespaces.
pub const UNDERLAY_PREFIX: u8 = 24;
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The nodes' DNS upstream (`dns.upstreams`): in the control plane's namespace, inside the lab,
/// so a name outside the cluster never reaches a resolver of the machine. Nothing answers there
/// unless a test puts a stub server on it: then such names get SERVFAIL.
pub const DNS_UPSTREAM: &str = "198.18.0.1:53";
pub const API_PORT: u16 = 6443;
pub const POD_CIDR: &str = "10.42.0.0/16";
pub const SERVICE_CIDR: &str = "10.43.0.0/16";
/// The nodes' `cluster.domain` and `dns.cluster_ip` (skein's defaults), as a kubelet's
/// `--cluster-domain` and `--cluster-dns` would give them to pods.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
pub const CLUSTER_DNS: &str = "10.43.0.10";
pub const NODE_CIDR_MASK: u8 = 24;

pub fn node_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + index as u8)
}

/// A lab name: short, so derived interface names stay within 15 characters.
/// Where the nodes' state lives: persistent storage, as a node's /var/lib/skein is (the
/// daemon refuses to keep its WireGuard key on a tmpfs such as /run).
pub const STATE_DIR: &str = "/var/lib/skein-lab";

/// The state directory of `node` in lab `lab`.
pub fn state_dir_of(lab: &str, node: &str) -> PathBuf {
    Path::new(STATE_DIR).join(lab).join(node)
}

/// The WireGuard interface of the lab's `index`th node. Control sockets of userspace WireGuard
/// share one directory across all namespaces, so the name carries the lab's: unique among
/// concurrent labs, and within 15 characters (2 + 8 + 1 + 2).
pub fn overlay_interface(lab: &str, index: usize) -> String {
    format!("sk{lab}-{index}")
}

/// The name of a node's WireGuard device process, for `stop` and `start`.
pub fn wireguard_process(node: &str) -> String {
    format!("{node}-wg")
}

pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 8
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if !ok {
        bail!("lab name {name:?}: 1 to 8 lower-case letters and digits, starting with a letter");
    }
    Ok(())
}

pub fn netns_prefix(lab: &str) -> String {
    format!("skl-{lab}-")
}

/// One process of the lab, enough to stop it and start it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Process {
    /// Network namespace it runs in; `None` for the host.
    pub netns: Option<String>,
    pub argv: Vec<String>,
    pub log: PathBuf,
    pub pid: Option<u32>,
    /// Set by `skein-lab stop`: the process is down on purpose (a kubelet stops heartbeating).
    pub stopped: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    /// Host port forwarded to the node's status page.
    pub page_port: u16,
    pub config: PathBuf,
    pub kubeconfig: PathBuf,
    /// The node's WireGuard interface (and control socket) name.
    pub overlay_interface: String,
}

/// The lab's state file, `<dir>/lab.json`: written by `up`, `stop` and `start`; read by the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    pub underlay_netns: String,
    pub control_plane_netns: String,
    /// Host port forwarded to the API server.
    pub api_port: u16,
    pub admin_kubeconfig: PathBuf,
    pub nodes: Vec<Node>,
    pub processes: BTreeMap<String, Process>,
}

impl Lab {
    pub fn dir_of(name: &str) -> PathBuf {
        Path::new(LABS_DIR).join(name)
    }

    pub fn load(name: &str) -> anyhow::Result<Self> {
        let path = Self::dir_of(name).join("lab.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no lab named {name:?} is up ({} is missing)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// Writes the state file atomically, so a reader never sees half of it.
    pub fn save(&self) -> anyhow::Result<()> {
        let path = self.dir.join("lab.json");
        let tmp = self.dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Starts (or restarts) the process `name` as recorded, detached from this one.
    pub fn spawn(&mut self, name: &str) -> anyhow::Result<u32> {
        let lab = self.name.clone();
        let process = self
            .processes
            .get_mut(name)
            .with_context(|| format!("no process {name:?}"))?;
        // A killed predecessor may take a moment to die; two at once would fight over its state.
        if let Some(old) = process.pid {
            let since = Instant::now();
            while alive(old) {
                if since.elapsed() > Duration::from_secs(10) {
                    bail!("{name} is still running (pid {old}); stop it first");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let pid = spawn_detached(&lab, process.netns.as_deref(), &process.argv, &process.log)
            .with_context(|| format!("starting {name}"))?;
        process.pid = Some(pid);
        process.stopped = false;
        Ok(pid)
    }

    /// Stops the process `name` (SIGTERM, then SIGKILL after `grace`) and marks it stopped.
    pub fn stop(&mut self, name: &str, grace: Duration) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(name)
            .with_context(|| format!("no process {name:?}"))?;
        if let Some(pid) = process.pid.take() {
            // `ip netns exec` execs the program, so the pid is the program's own.
            terminate(pid, grace);
        }
        process.stopped = true;
        Ok(())
    }
}

/// Starts `argv` (in `netns`, if given) detached from this process: its own process group, output
/// appended to `log`, tagged with the lab's name. Not waited for: init adopts it when we exit.
pub fn spawn_detached(
    lab: &str,
    netns: Option<&str>,
    argv: &[String],
    log: &Path,
) -> anyhow::Result<u32> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(argv);
            c
        }
        None => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    // Its own process group: a Ctrl-C at the terminal that ran `up` does not reach the lab.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .env(LAB_ENV, lab)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("{argv:?}"))?;
    Ok(child.id())
}

pub fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes: it only waits to be reaped. But every thread must be:
    // after a SIGKILL the main thread can be a zombie while another still finishes a system call
    // (an fsync), and until the last one exits the process keeps its files open, its state
    // directory's lock among them, so a successor started then finds the lock held.
    let running = |stat: &str| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| running(&stat))
    })
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn terminate(pid: u32, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pid_t = Pid::from_raw(pid as i32);
    if kill(pid_t, Signal::SIGTERM).is_err() {
        return;
    }
    let start = Instant::now();
    while alive(pid) && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = kill(pid_t, Signal::SIGKILL);
        let start = Instant::now();
        while alive(pid) && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every process whose environment carries `SKEIN_LAB=<lab>` (or any lab, for `None`).
pub fn tagged_processes(lab: Option<&str>) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            environ.split(|b| *b == 0).any(|var| {
                let var = String::from_utf8_lossy(var);
                match (var.strip_prefix(&format!("{LAB_ENV}=")), lab) {
                    (Some(value), Some(lab)) => value == lab,
                    (Some(_), None) => true,
                    (None, _) => false,
                }
            })
        })
        .collect()
}

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Network namespaces whose name starts with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Creates the underlay: a bridge in a namespace of its own, and one veth per member
/// (`(namespace, address)`), with loopback up everywhere. Members get `eth0`.
pub fn build_underlay(underlay: &str, members: &[(String, Ipv4Addr)]) -> anyhow::Result<()> {
    ip(&["netns", "add", underlay])?;
    ip(&["-n", underlay, "link", "set", "lo", "up"])?;
    ip(&["-n", underlay, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", underlay, "link", "set", "br0", "up"])?;
    for (i, (ns, addr)) in members.iter().enumerate() {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        let port = format!("port{i}");
        ip(&[
            "-n", underlay, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            ns,
        ])?;
        ip(&["-n", underlay, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/{UNDERLAY_PREFIX}"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        if *addr != CONTROL_PLANE_IP {
            // Nodes find their underlay interface by the default route. Nothing routes beyond the
            // underlay: the control plane namespace does not forward.
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &CONTROL_PLANE_IP.to_string(),
            ])?;
        }
    }
    Ok(())
}
