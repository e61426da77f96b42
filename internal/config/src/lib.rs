//! skein's one configuration file: its schema and defaults, loading it (TOML file, then
//! `SKEIN_<SECTION>__<KEY>` environment overrides), and validation that names every problem.
//!
//! This crate knows nothing of what the parts do with their settings; it only guarantees that a
//! [`Config`] that passed [`load`] has well-formed values, so the typed accessors never fail.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// Where `skein run` and `skein config check` look when no path is given.
pub const DEFAULT_PATH: &str = "/etc/skein/config.toml";

/// The commented default configuration; also shipped as the package's conffile.
pub const DEFAULT_TOML: &str = include_str!("../default.toml");

/// Prefix of environment overrides: `SKEIN_<SECTION>__<KEY>`.
const ENV_PREFIX: &str = "SKEIN_";

/// The whole configuration. Field names are the file's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub node: Node,
    pub cluster: Cluster,
    pub cni: Cni,
    pub ipam: Ipam,
    pub overlay: Overlay,
    pub proxy: Proxy,
    pub dns: Dns,
    pub policy: Policy,
    pub dashboard: Dashboard,
    pub store: Store,
    pub log: Log,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Node {
    pub name: String,
    pub underlay_interface: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cluster {
    pub kubeconfig: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub domain: String,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            kubeconfig: String::new(),
            pod_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            domain: "cluster.local".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cni {
    pub socket: PathBuf,
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub bridge: String,
    pub mtu: String,
    pub portmap: bool,
}

impl Default for Cni {
    fn default() -> Self {
        Self {
            socket: "/run/skein/cni.sock".into(),
            conf_dir: "/etc/cni/net.d".into(),
            bin_dir: "/opt/cni/bin".into(),
            bridge: "skein0".into(),
            mtu: "auto".into(),
            portmap: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ipam {
    pub gc_interval: String,
}

impl Default for Ipam {
    fn default() -> Self {
        Self {
            gc_interval: "5m".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Overlay {
    pub mode: String,
    pub interface: String,
    pub listen_port: u16,
    pub mtu: String,
    pub persistent_keepalive: String,
}

impl Default for Overlay {
    fn default() -> Self {
        Self {
            mode: "auto".into(),
            interface: "skein-wg".into(),
            listen_port: 51820,
            mtu: "auto".into(),
            persistent_keepalive: "0s".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Proxy {
    pub enabled: bool,
    pub nodeport_addresses: Vec<String>,
}

impl Default for Proxy {
    fn default() -> Self {
        Self {
            enabled: true,
            nodeport_addresses: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub enabled: bool,
    pub cluster_ip: String,
    pub upstreams: Vec<String>,
    pub ttl: String,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            enabled: true,
            cluster_ip: "10.43.0.10".into(),
            upstreams: Vec::new(),
            ttl: "5s".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    pub enabled: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dashboard {
    pub listen: String,
    pub allow_remote: bool,
}

impl Default for Dashboard {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9610".into(),
            allow_remote: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Store {
    pub path: PathBuf,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            path: "/var/lib/skein/state.db".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Log {
    pub level: String,
    pub format: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One thing wrong with a configuration: the key (dotted, e.g. `cluster.pod_cidr`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.key, self.message)
    }
}

/// Where the configuration came from, named in every error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file that was read.
    File(PathBuf),
    /// The default path did not exist: built-in defaults.
    Defaults(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults(p) => write!(f, "built-in defaults ({} does not exist)", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{origin}: {message}")]
    Type { origin: String, message: String },
    #[error("{} problem{} in {origin}:\n{}", .problems.len(), if .problems.len() == 1 { "" } else { "s" }, list(.problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A configuration that passed validation, and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    /// Environment variables that overrode a key, by name.
    pub overrides: Vec<String>,
}

/// Reads the file at `path` (or [`DEFAULT_PATH`] when `None`; a missing default file means
/// built-in defaults, a missing explicit file is an error), applies the `SKEIN_*__*` variables
/// from `env`, and validates the result.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let (file_path, explicit) = match path {
        // Absolute, so messages and the status page say which file was meant.
        Some(p) => (
            std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
            true,
        ),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    let text = match std::fs::read_to_string(&file_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
        Err(source) => {
            return Err(ConfigError::Read {
                path: file_path,
                source,
            });
        }
    };
    let source = match text {
        Some(_) => Source::File(file_path.clone()),
        None => Source::Defaults(file_path.clone()),
    };
    let text = text.unwrap_or_default();

    // Unknown keys are found on the file's own key tree, so the error can name the file.
    let file_keys = toml_keys(&text).map_err(|message| ConfigError::Syntax {
        path: file_path.clone(),
        message,
    })?;
    // (variable, dotted key, value), sorted by variable so errors come in a stable order.
    let env_vars: BTreeMap<String, (String, String)> = env
        .into_iter()
        .filter_map(|(name, value)| env_key(&name).map(|key| (name, (key, value))))
        .collect();
    let known = known_keys();
    let mut unknown = Vec::new();
    let sections: BTreeSet<&str> = known.iter().filter_map(|k| k.split('.').next()).collect();
    for key in &file_keys {
        // An empty known section (`[proxy]` with nothing under it) is fine.
        if !known.contains(key) && !sections.contains(key.as_str()) {
            unknown.push(Problem {
                key: key.clone(),
                message: unknown_message(key, &known),
            });
        }
    }
    let mut env_map = config::Map::new();
    let mut overrides = Vec::new();
    for (name, (key, value)) in env_vars {
        if known.contains(&key) {
            env_map.insert(name.clone(), value);
            overrides.push(name);
        } else {
            unknown.push(Problem {
                key: format!("{name} (environment)"),
                message: format!(": no such key `{key}`{}", suggestion(&key, &known)),
            });
        }
    }
    let built = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("SKEIN")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("proxy.nodeport_addresses")
                .with_list_parse_key("dns.upstreams")
                .try_parsing(true)
                .source(Some(env_map)),
        )
        .build()
        .map_err(|e| ConfigError::Type {
            origin: source.to_string(),
            message: e.to_string(),
        })?;
    let config: Config = built.try_deserialize().map_err(|e| ConfigError::Type {
        origin: source.to_string(),
        message: e.to_string(),
    })?;
    // Unknown keys and bad values are reported together, so one run shows every problem.
    let mut problems = unknown;
    problems.extend(config.problems());
    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            origin: source.to_string(),
            problems,
        });
    }
    Ok(Loaded {
        config,
        source,
        overrides,
    })
}

/// `SKEIN_CLUSTER__POD_CIDR` -> `cluster.pod_cidr`. Variables without a `__` (such as a test
/// switch `SKEIN_TEST_...`) are not configuration and are left alone.
fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    let (section, key) = rest.split_once("__")?;
    Some(format!("{}.{}", section.to_lowercase(), key.to_lowercase()))
}

/// Every dotted key the schema has, read off the serialized defaults so it cannot drift.
pub fn known_keys() -> BTreeSet<String> {
    let value = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut keys = BTreeSet::new();
    flatten_json("", &value, &mut keys);
    keys
}

fn flatten_json(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_json(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

fn toml_keys(text: &str) -> Result<BTreeSet<String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut keys = BTreeSet::new();
    flatten_toml("", &toml::Value::Table(table), &mut keys);
    Ok(keys)
}

fn flatten_toml(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(map) => {
            if map.is_empty() && !prefix.is_empty() {
                out.insert(prefix.to_string());
            }
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_toml(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

fn unknown_message(key: &str, known: &BTreeSet<String>) -> String {
    let sections: BTreeSet<&str> = known.iter().filter_map(|k| k.split('.').next()).collect();
    match key.split_once('.') {
        None if sections.contains(key) => format!(": `{key}` is a section, not a value"),
        None => format!(
            ": unknown key (keys belong in a section: {})",
            sections.into_iter().collect::<Vec<_>>().join(", ")
        ),
        Some((section, _)) if !sections.contains(section) => format!(
            ": unknown section `{section}`{}",
            suggestion(section, &sections.iter().map(|s| s.to_string()).collect())
        ),
        Some(_) => format!(": unknown key{}", suggestion(key, known)),
    }
}

/// "; did you mean `x`?" for the closest known name, when one is close.
fn suggestion(key: &str, known: &BTreeSet<String>) -> String {
    known
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn problem(key: &str, value: impl fmt::Display, why: &str) -> Problem {
    Problem {
        key: key.to_string(),
        message: format!(" = \"{value}\": {why}"),
    }
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

/// A valid Linux interface name: 1 to 15 bytes, no '/', ':' or whitespace.
fn check_ifname(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 15 {
        return Err("an interface name has 1 to 15 characters");
    }
    if s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) || s == "." || s == ".." {
        return Err("an interface name has no '/', ':' or spaces");
    }
    Ok(())
}

fn check_upstream(s: &str) -> Result<SocketAddr, &'static str> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| "not an address (expected \"IP\" or \"IP:port\")")
}

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The typed accessors below read values that [`load`] has validated (the defaults are valid too),
/// so they do not fail on a loaded configuration.
impl Config {
    /// Every semantic problem, in key order; empty when the configuration is valid.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut check = |key: &str, value: &str, r: Result<(), &'static str>| {
            if let Err(why) = r {
                out.push(problem(key, value, why));
            }
        };
        check(
            "node.name",
            &self.node.name,
            check_node_name(&self.node.name),
        );
        if !self.node.underlay_interface.is_empty() {
            let v = &self.node.underlay_interface;
            check("node.underlay_interface", v, check_ifname(v));
        }
        let kc = &self.cluster.kubeconfig;
        check("cluster.kubeconfig", kc, relative_path(Path::new(kc), true));
        let pod = parse_cidr(&self.cluster.pod_cidr);
        check("cluster.pod_cidr", &self.cluster.pod_cidr, pod.map(drop));
        let svc = parse_cidr(&self.cluster.service_cidr);
        check(
            "cluster.service_cidr",
            &self.cluster.service_cidr,
            svc.map(drop),
        );
        if let (Ok(pod), Ok(svc)) = (pod, svc)
            && (pod.contains(&svc.network()) || svc.contains(&pod.network()))
        {
            let v = &self.cluster.service_cidr;
            check("cluster.service_cidr", v, Err("overlaps cluster.pod_cidr"));
        }
        let d = &self.cluster.domain;
        check("cluster.domain", d, check_domain(d));
        for (key, path) in [
            ("cni.socket", &self.cni.socket),
            ("cni.conf_dir", &self.cni.conf_dir),
            ("cni.bin_dir", &self.cni.bin_dir),
            ("store.path", &self.store.path),
        ] {
            check(key, &path.display().to_string(), relative_path(path, false));
        }
        check(
            "cni.bridge",
            &self.cni.bridge,
            check_ifname(&self.cni.bridge),
        );
        check("cni.mtu", &self.cni.mtu, parse_mtu(&self.cni.mtu).map(drop));
        let gc = &self.ipam.gc_interval;
        check("ipam.gc_interval", gc, parse_duration(gc).map(drop));
        let mode = &self.overlay.mode;
        check("overlay.mode", mode, parse_overlay_mode(mode).map(drop));
        let ifname = &self.overlay.interface;
        check("overlay.interface", ifname, check_ifname(ifname));
        if self.overlay.interface == self.cni.bridge {
            check(
                "overlay.interface",
                ifname,
                Err("is the same name as cni.bridge"),
            );
        }
        if self.overlay.listen_port == 0 {
            check(
                "overlay.listen_port",
                "0",
                Err("expected a port from 1 to 65535"),
            );
        }
        check(
            "overlay.mtu",
            &self.overlay.mtu,
            parse_mtu(&self.overlay.mtu).map(drop),
        );
        let ka = &self.overlay.persistent_keepalive;
        check(
            "overlay.persistent_keepalive",
            ka,
            parse_duration(ka).map(drop),
        );
        for (i, a) in self.proxy.nodeport_addresses.iter().enumerate() {
            check(
                &format!("proxy.nodeport_addresses[{i}]"),
                a,
                parse_cidr(a).map(drop),
            );
        }
        let ip = &self.dns.cluster_ip;
        match ip.parse::<IpAddr>() {
            Err(_) => check("dns.cluster_ip", ip, Err("not an IP address")),
            Ok(addr) => {
                if let Ok(svc) = svc
                    && !svc.contains(&addr)
                {
                    check("dns.cluster_ip", ip, Err("is outside cluster.service_cidr"));
                }
            }
        }
        for (i, u) in self.dns.upstreams.iter().enumerate() {
            check(
                &format!("dns.upstreams[{i}]"),
                u,
                check_upstream(u).map(drop),
            );
        }
        check(
            "dns.ttl",
            &self.dns.ttl,
            parse_duration(&self.dns.ttl).map(drop),
        );
        let listen = &self.dashboard.listen;
        match listen.parse::<SocketAddr>() {
            Err(_) => check(
                "dashboard.listen",
                listen,
                Err("not an address (expected IP:port)"),
            ),
            Ok(addr) if !addr.ip().is_loopback() && !self.dashboard.allow_remote => check(
                "dashboard.listen",
                listen,
                Err(
                    "is not a loopback address; set dashboard.allow_remote = true to serve the \
                     status page beyond this machine",
                ),
            ),
            Ok(_) => {}
        }
        let level = &self.log.level;
        check("log.level", level, check_log_level(level));
        check(
            "log.format",
            &self.log.format,
            parse_log_format(&self.log.format).map(drop),
        );
        out
    }

    pub fn pod_cidr(&self) -> IpNet {
        parse_cidr(&self.cluster.pod_cidr).expect("cluster.pod_cidr is checked by load()")
    }

    pub fn service_cidr(&self) -> IpNet {
        parse_cidr(&self.cluster.service_cidr).expect("cluster.service_cidr is checked by load()")
    }

    pub fn dashboard_listen(&self) -> SocketAddr {
        self.dashboard
            .listen
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9610)))
    }

    pub fn overlay_mode(&self) -> OverlayMode {
        parse_overlay_mode(&self.overlay.mode).unwrap_or(OverlayMode::Auto)
    }

    pub fn cni_mtu(&self) -> Mtu {
        parse_mtu(&self.cni.mtu).unwrap_or(Mtu::Auto)
    }

    pub fn overlay_mtu(&self) -> Mtu {
        parse_mtu(&self.overlay.mtu).unwrap_or(Mtu::Auto)
    }

    /// `overlay.persistent_keepalive` in seconds; `None` when off.
    pub fn overlay_keepalive(&self) -> Option<u16> {
        parse_duration(&self.overlay.persistent_keepalive)
            .ok()
            .map(|d| d.as_secs().min(u64::from(u16::MAX)) as u16)
            .filter(|s| *s > 0)
    }

    pub fn log_format(&self) -> LogFormat {
        parse_log_format(&self.log.format).unwrap_or(LogFormat::Text)
    }

    pub fn ipam_gc_interval(&self) -> Duration {
        parse_duration(&self.ipam.gc_interval).unwrap_or(Duration::from_secs(300))
    }

    /// The node name to use: the configured one, else `hostname`.
    pub fn node_name(&self, hostname: &str) -> String {
        if self.node.name.is_empty() {
            hostname.to_lowercase()
        } else {
            self.node.name.clone()
        }
    }

    /// The effective configuration as TOML, for `skein config check`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
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

/// A level name, or a tracing filter made of `target=level` directives.
fn check_log_level(s: &str) -> Result<(), &'static str> {
    let ok = !s.is_empty()
        && s.split(',').all(|directive| {
            let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
            LOG_LEVELS.contains(&level.trim())
        });
    if ok {
        Ok(())
    } else {
        Err("expected error, warn, info, debug, trace, or e.g. \"info,skein_store=debug\"")
    }
}

/// A Kubernetes node name: a DNS subdomain (RFC 1123), lower case; empty means the hostname.
fn check_node_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Ok(());
    }
    check_domain(s).map_err(|_| "not a valid node name (lower-case letters, digits, '-' and '.')")
}

fn check_domain(s: &str) -> Result<(), &'static str> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.len() <= 253 && s.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("not a DNS name (lower-case labels of letters, digits and '-', joined by '.')")
    }
}

fn relative_path(p: &Path, empty_ok: bool) -> Result<(), &'static str> {
    if p.as_os_str().is_empty() {
        return if empty_ok {
            Ok(())
        } else {
            Err("must not be empty")
        };
    }
    if p.is_absolute() {
        Ok(())
    } else {
        Err("must be an absolute path")
    }
}
