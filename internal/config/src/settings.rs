//! Typed settings: what the parts receive. [`Settings::from_config`] parses every value of the
//! file once (CIDRs, durations, modes, addresses, names) and collects every problem with its key,
//! so no part re-parses a string or falls back to a default of its own.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use skein_names::IfName;

use crate::{Config, Problem};

/// An MTU setting: derived from the underlay, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtu {
    Auto,
    Fixed(u32),
}

/// How the overlay picks its WireGuard implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayMode {
    Auto,
    Kernel,
    Userspace,
}

impl OverlayMode {
    /// The value as written in `overlay.mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            OverlayMode::Auto => "auto",
            OverlayMode::Kernel => "kernel",
            OverlayMode::Userspace => "userspace",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the daemon's parts are configured with, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub node: NodeSettings,
    pub cluster: ClusterSettings,
    pub cni: CniSettings,
    pub ipam: IpamSettings,
    pub overlay: OverlaySettings,
    pub proxy: ProxySettings,
    pub dns: DnsSettings,
    pub policy: PolicySettings,
    pub dashboard: DashboardSettings,
    pub store: StoreSettings,
    pub log: LogSettings,
    pub daemon: DaemonSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// `None`: the machine's hostname.
    pub name: Option<String>,
    /// `None`: the address towards the API server.
    pub underlay_interface: Option<IfName>,
}

impl NodeSettings {
    /// The node name to use: the configured one, else `hostname` in lower case.
    pub fn name_or(&self, hostname: &str) -> String {
        self.name.clone().unwrap_or_else(|| hostname.to_lowercase())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `None`: found automatically (in-cluster, then the node's own kubeconfig).
    pub kubeconfig: Option<PathBuf>,
    pub pod_cidr: IpNet,
    pub service_cidr: IpNet,
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniSettings {
    pub socket: PathBuf,
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub bridge: IfName,
    pub mtu: Mtu,
    pub portmap: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamSettings {
    pub gc_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySettings {
    pub mode: OverlayMode,
    pub interface: IfName,
    pub listen_port: u16,
    pub mtu: Mtu,
    /// `None`: off.
    pub persistent_keepalive: Option<Duration>,
}

impl OverlaySettings {
    /// The keepalive in whole seconds, as WireGuard takes it.
    pub fn keepalive_seconds(&self) -> Option<u16> {
        self.persistent_keepalive
            .map(|d| u16::try_from(d.as_secs()).unwrap_or(u16::MAX))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    pub enabled: bool,
    /// Where NodePorts answer; never empty (an empty list in the file means `primary`).
    pub nodeport_addresses: Vec<NodePortAddresses>,
    /// The shortest time between two syncs of the rules: changes that arrive closer together
    /// are programmed together.
    pub min_sync_interval: Duration,
}

/// One entry of `proxy.nodeport_addresses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The Node's InternalIPs (kube-proxy's nftables default).
    Primary,
    /// The node's addresses within this CIDR.
    Cidr(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    pub enabled: bool,
    pub cluster_ip: IpAddr,
    /// The node-local address the DNS server answers on too (NodeLocal DNSCache's).
    pub listen: IpAddr,
    /// Empty: the nameservers of the node's resolv.conf.
    pub upstreams: Vec<SocketAddr>,
    pub ttl: Duration,
    pub pods: DnsPods,
}

/// `dns.pods`: which `a-b-c-d.<ns>.pod.<zone>` names answer (CoreDNS's `pods` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsPods {
    Insecure,
    Verified,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySettings {
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardSettings {
    pub listen: SocketAddr,
    pub allow_remote: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub path: PathBuf,
}

impl StoreSettings {
    /// The directory holding the database, the lock and the node's key.
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A tracing filter (checked).
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    /// How often every part compares the kernel with what it wants, whatever else happens.
    pub resync_interval: Duration,
}

/// Collects problems while values are parsed; a value that fails is `None`.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn take<T, E: fmt::Display>(
        &mut self,
        key: &str,
        raw: impl fmt::Display,
        r: Result<T, E>,
    ) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(why) => {
                self.problem(key, raw, why);
                None
            }
        }
    }

    fn problem(&mut self, key: &str, raw: impl fmt::Display, why: impl fmt::Display) {
        self.problems.push(Problem {
            key: key.to_string(),
            message: format!(" = \"{raw}\": {why}"),
        });
    }

    fn list<T, E: fmt::Display>(
        &mut self,
        key: &str,
        raw: &[String],
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Option<Vec<T>> {
        let mut out = Some(Vec::new());
        for (i, a) in raw.iter().enumerate() {
            let v = self.take(&format!("{key}[{i}]"), a, parse(a));
            match (&mut out, v) {
                (Some(list), Some(v)) => list.push(v),
                _ => out = None,
            }
        }
        out
    }
}

impl Settings {
    /// Parses and checks every value of `config`; the error lists every problem in key order.
    pub fn from_config(config: &Config) -> Result<Settings, Vec<Problem>> {
        let mut c = Checker::default();
        let built = build(config, &mut c);
        match built {
            Some(settings) if c.problems.is_empty() => Ok(settings),
            _ => Err(c.problems),
        }
    }
}

fn build(config: &Config, c: &mut Checker) -> Option<Settings> {
    let node_name = c.take("node.name", &config.node.name, node_name(&config.node.name));
    let underlay = &config.node.underlay_interface;
    let underlay_interface = if underlay.is_empty() {
        Some(None)
    } else {
        c.take(
            "node.underlay_interface",
            underlay,
            IfName::new(underlay.as_str()),
        )
        .map(Some)
    };

    let cl = &config.cluster;
    let kubeconfig = c.take(
        "cluster.kubeconfig",
        &cl.kubeconfig,
        optional_path(&cl.kubeconfig),
    );
    let pod_cidr = c.take("cluster.pod_cidr", &cl.pod_cidr, parse_cidr(&cl.pod_cidr));
    let mut service_cidr = c.take(
        "cluster.service_cidr",
        &cl.service_cidr,
        parse_cidr(&cl.service_cidr),
    );
    if let (Some(pod), Some(svc)) = (pod_cidr, service_cidr)
        && (pod.contains(&svc.network()) || svc.contains(&pod.network()))
    {
        c.problem(
            "cluster.service_cidr",
            &cl.service_cidr,
            "overlaps cluster.pod_cidr",
        );
        service_cidr = None;
    }
    let domain = c.take("cluster.domain", &cl.domain, check_domain(&cl.domain));

    let cni = &config.cni;
    let path = |c: &mut Checker, key: &str, p: &Path| c.take(key, p.display(), absolute_path(p));
    let socket = path(c, "cni.socket", &cni.socket);
    let conf_dir = path(c, "cni.conf_dir", &cni.conf_dir);
    let bin_dir = path(c, "cni.bin_dir", &cni.bin_dir);
    let store_path = path(c, "store.path", &config.store.path);
    let bridge = c.take(
        "cni.bridge",
        &cni.bridge,
        IfName::new(cni.bridge.as_str())
            .map_err(|e| e.to_string())
            .and_then(|n| {
                // Pods' host ends are `skv…`; the bridge must never look like one of them.
                if n.as_str().starts_with("skv") {
                    Err(
                        "must not start with `skv` (the prefix of pods' host interfaces)"
                            .to_string(),
                    )
                } else {
                    Ok(n)
                }
            }),
    );
    let cni_mtu = c.take("cni.mtu", &cni.mtu, parse_mtu(&cni.mtu));

    let gc = &config.ipam.gc_interval;
    let gc_interval = c.take("ipam.gc_interval", gc, parse_positive_duration(gc));

    let ov = &config.overlay;
    let mode = c.take("overlay.mode", &ov.mode, parse_overlay_mode(&ov.mode));
    let mut interface = c.take(
        "overlay.interface",
        &ov.interface,
        IfName::new(ov.interface.as_str()),
    );
    if ov.interface == cni.bridge {
        c.problem(
            "overlay.interface",
            &ov.interface,
            "is the same name as cni.bridge",
        );
        interface = None;
    }
    let listen_port = c.take(
        "overlay.listen_port",
        ov.listen_port,
        match ov.listen_port {
            0 => Err("expected a port from 1 to 65535"),
            p => Ok(p),
        },
    );
    let overlay_mtu = c.take("overlay.mtu", &ov.mtu, parse_mtu(&ov.mtu));
    let ka = &ov.persistent_keepalive;
    let keepalive = c.take(
        "overlay.persistent_keepalive",
        ka,
        parse_duration(ka).and_then(|d| match d.as_secs() {
            0 => Ok(None),
            1..=65535 => Ok(Some(Duration::from_secs(d.as_secs()))),
            _ => Err("at most 65535s (WireGuard's limit)"),
        }),
    );

    let nodeport_addresses = c
        .list(
            "proxy.nodeport_addresses",
            &config.proxy.nodeport_addresses,
            parse_nodeport_addresses,
        )
        .map(|list| {
            if list.is_empty() {
                vec![NodePortAddresses::Primary]
            } else {
                list
            }
        });
    let msi = &config.proxy.min_sync_interval;
    let min_sync_interval = c.take(
        "proxy.min_sync_interval",
        msi,
        parse_duration(msi).and_then(|d| {
            if d > Duration::from_secs(10) {
                Err("at most 10s (the rules would lag the cluster)")
            } else {
                Ok(d)
            }
        }),
    );

    let dns = &config.dns;
    let cluster_ip = c.take(
        "dns.cluster_ip",
        &dns.cluster_ip,
        dns.cluster_ip
            .parse::<IpAddr>()
            .map_err(|_| "not an IP address"),
    );
    let cluster_ip = match (cluster_ip, service_cidr) {
        (Some(ip), Some(svc)) if !svc.contains(&ip) => {
            c.problem(
                "dns.cluster_ip",
                &dns.cluster_ip,
                "is outside cluster.service_cidr",
            );
            None
        }
        (ip, _) => ip,
    };
    let dns_listen = c.take(
        "dns.listen",
        &dns.listen,
        match dns.listen.parse::<IpAddr>() {
            Err(_) => Err("not an IP address"),
            Ok(ip) if ip.is_loopback() || ip.is_unspecified() => {
                Err("must be an address pods can reach (not loopback or unspecified)")
            }
            Ok(ip) => Ok(ip),
        },
    );
    let upstreams = c.list("dns.upstreams", &dns.upstreams, parse_upstream);
    let ttl = c.take(
        "dns.ttl",
        &dns.ttl,
        parse_duration(&dns.ttl).and_then(|d| {
            if d.as_secs() > 3600 {
                Err("at most 1h")
            } else {
                Ok(d)
            }
        }),
    );
    let pods = c.take(
        "dns.pods",
        &dns.pods,
        match dns.pods.as_str() {
            "insecure" => Ok(DnsPods::Insecure),
            "verified" => Ok(DnsPods::Verified),
            "disabled" => Ok(DnsPods::Disabled),
            _ => Err("expected \"insecure\", \"verified\" or \"disabled\""),
        },
    );

    let db = &config.dashboard;
    let listen = c.take(
        "dashboard.listen",
        &db.listen,
        match db.listen.parse::<SocketAddr>() {
            Err(_) => Err("not an address (expected IP:port)"),
            Ok(addr) if !addr.ip().is_loopback() && !db.allow_remote => Err(
                "is not a loopback address; set dashboard.allow_remote = true to serve the \
                 status page beyond this machine",
            ),
            Ok(addr) => Ok(addr),
        },
    );

    let log = &config.log;
    let level = c.take("log.level", &log.level, check_log_level(&log.level));
    let format = c.take("log.format", &log.format, parse_log_format(&log.format));

    let ri = &config.daemon.resync_interval;
    let resync_interval = c.take("daemon.resync_interval", ri, parse_positive_duration(ri));

    Some(Settings {
        node: NodeSettings {
            name: node_name?,
            underlay_interface: underlay_interface?,
        },
        cluster: ClusterSettings {
            kubeconfig: kubeconfig?,
            pod_cidr: pod_cidr?,
            service_cidr: service_cidr?,
            domain: domain?,
        },
        cni: CniSettings {
            socket: socket?,
            conf_dir: conf_dir?,
            bin_dir: bin_dir?,
            bridge: bridge?,
            mtu: cni_mtu?,
            portmap: cni.portmap,
        },
        ipam: IpamSettings {
            gc_interval: gc_interval?,
        },
        overlay: OverlaySettings {
            mode: mode?,
            interface: interface?,
            listen_port: listen_port?,
            mtu: overlay_mtu?,
            persistent_keepalive: keepalive?,
        },
        proxy: ProxySettings {
            enabled: config.proxy.enabled,
            nodeport_addresses: nodeport_addresses?,
            min_sync_interval: min_sync_interval?,
        },
        dns: DnsSettings {
            enabled: dns.enabled,
            cluster_ip: cluster_ip?,
            listen: dns_listen?,
            upstreams: upstreams?,
            ttl: ttl?,
            pods: pods?,
        },
        policy: PolicySettings {
            enabled: config.policy.enabled,
        },
        dashboard: DashboardSettings {
            listen: listen?,
            allow_remote: db.allow_remote,
        },
        store: StoreSettings { path: store_path? },
        log: LogSettings {
            level: level?,
            format: format?,
        },
        daemon: DaemonSettings {
            resync_interval: resync_interval?,
        },
    })
}

fn parse_cidr(s: &str) -> Result<IpNet, &'static str> {
    let net: IpNet = s
        .parse()
        .map_err(|_| "not a CIDR (expected e.g. 10.42.0.0/16)")?;
    if net.trunc() != net {
        return Err("host bits are set (the network address is expected)");
    }
    Ok(net)
}

fn parse_nodeport_addresses(s: &str) -> Result<NodePortAddresses, &'static str> {
    if s == "primary" {
        return Ok(NodePortAddresses::Primary);
    }
    parse_cidr(s).map(NodePortAddresses::Cidr).map_err(
        |_| "expected \"primary\" (the Node's InternalIPs) or a CIDR such as 198.18.0.0/24",
    )
}

fn parse_mtu(s: &str) -> Result<Mtu, &'static str> {
    if s == "auto" {
        return Ok(Mtu::Auto);
    }
    match s.parse::<u32>() {
        Ok(n) if (576..=65535).contains(&n) => Ok(Mtu::Fixed(n)),
        _ => Err("expected \"auto\" or a number from 576 to 65535"),
    }
}

fn parse_duration(s: &str) -> Result<Duration, &'static str> {
    humantime::parse_duration(s).map_err(|_| "not a duration (expected e.g. \"30s\", \"5m\")")
}

fn parse_positive_duration(s: &str) -> Result<Duration, &'static str> {
    match parse_duration(s)? {
        d if d >= Duration::from_secs(1) => Ok(d),
        _ => Err("must be at least 1s"),
    }
}

fn parse_upstream(s: &str) -> Result<SocketAddr, &'static str> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| "not an address (expected \"IP\" or \"IP:port\")")
}

fn parse_overlay_mode(s: &str) -> Result<OverlayMode, &'static str> {
    match s {
        "auto" => Ok(OverlayMode::Auto),
        "kernel" => Ok(OverlayMode::Kernel),
        "userspace" => Ok(OverlayMode::Userspace),
        _ => Err("expected \"auto\", \"kernel\" or \"userspace\""),
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, &'static str> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected \"text\" or \"json\""),
    }
}

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// A level name, or a tracing filter made of `target=level` directives.
fn check_log_level(s: &str) -> Result<String, &'static str> {
    let ok = !s.is_empty()
        && s.split(',').all(|directive| {
            let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
            LOG_LEVELS.contains(&level.trim())
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected error, warn, info, debug, trace, or e.g. \"info,skein_store=debug\"")
    }
}

/// A Kubernetes node name: a DNS subdomain (RFC 1123), lower case; empty means the hostname.
fn node_name(s: &str) -> Result<Option<String>, &'static str> {
    if s.is_empty() {
        return Ok(None);
    }
    check_domain(s)
        .map(Some)
        .map_err(|_| "not a valid node name (lower-case letters, digits, '-' and '.')")
}

fn check_domain(s: &str) -> Result<String, &'static str> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.len() <= 253 && s.split('.').all(label_ok) {
        Ok(s.to_string())
    } else {
        Err("not a DNS name (lower-case labels of letters, digits and '-', joined by '.')")
    }
}

fn absolute_path(p: &Path) -> Result<PathBuf, &'static str> {
    if p.as_os_str().is_empty() {
        Err("must not be empty")
    } else if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Err("must be an absolute path")
    }
}

fn optional_path(s: &str) -> Result<Option<PathBuf>, &'static str> {
    if s.is_empty() {
        Ok(None)
    } else {
        absolute_path(Path::new(s)).map(Some)
    }
}
