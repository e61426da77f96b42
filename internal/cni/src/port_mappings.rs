//! `runtimeConfig.portMappings`: the hostPort mappings a runtime passes to a plugin that
//! declares the `portMappings` capability (the CNI conventions' `{hostPort, containerPort,
//! protocol, hostIP}` objects), read into typed values. Pure.
//!
//! Runtimes differ in the details: containerd and CRI-O send the protocol in lower case, others
//! as Kubernetes spells it (`TCP`); an unset `hostIP` comes as `""` or not at all. A protocol left
//! out is TCP, as in a Pod's spec. Every error names the request field (`runtimeConfig.
//! portMappings[1].hostPort`) and the value found.

use std::fmt;
use std::net::IpAddr;

use serde_json::Value;

use crate::CniError;
use crate::types::kind;

/// Where the mappings are in the network configuration.
pub const PORT_MAPPINGS_FIELD: &str = "runtimeConfig.portMappings";

/// A mapping's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Self; 3] = [Self::Tcp, Self::Udp, Self::Sctp];

    /// The lower-case name, as containerd sends it and skein stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    /// `tcp`, `udp` or `sctp` in any case.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One hostPort: traffic to the node on `host_port` (over `protocol`, to `host_ip` only when
/// set) goes to the pod's `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// `None`: any of the node's addresses. An unspecified address (`0.0.0.0`, `::`) is kept:
    /// it means any address of its family only, as the reference portmap plugin reads it.
    pub host_ip: Option<IpAddr>,
}

impl fmt::Display for PortMapping {
    /// `8080/tcp -> 80`, or `198.18.0.11:8080/tcp -> 80` with a host IP.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}/{} -> {}",
            self.host_port, self.protocol, self.container_port
        )
    }
}

/// Reads the mappings from a configuration's `runtimeConfig` (none when it or its
/// `portMappings` is absent). Two mappings of one host port, protocol and host IP are refused:
/// one of them could never be served.
pub fn parse_port_mappings(runtime_config: Option<&Value>) -> Result<Vec<PortMapping>, CniError> {
    let list = match runtime_config {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(config)) => match config.get("portMappings") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(list) => list,
        },
        Some(other) => {
            return Err(CniError::config(
                "runtimeConfig",
                format!("must be an object, found {}", kind(other)),
            ));
        }
    };
    let Value::Array(items) = list else {
        return Err(CniError::config(
            PORT_MAPPINGS_FIELD,
            format!(
                "must be a list of {{\"hostPort\", \"containerPort\", \"protocol\", \"hostIP\"}} \
                 objects, found {}",
                kind(list)
            ),
        ));
    };
    let mut mappings: Vec<PortMapping> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mapping = parse_one(i, item)?;
        if let Some(first) = mappings.iter().position(|m| same_claim(m, &mapping)) {
            return Err(CniError::config(
                &format!("{PORT_MAPPINGS_FIELD}[{i}]"),
                format!(
                    "repeats {PORT_MAPPINGS_FIELD}[{first}]: hostPort {}/{}{} twice",
                    mapping.host_port,
                    mapping.protocol,
                    mapping
                        .host_ip
                        .map(|ip| format!(" on {ip}"))
                        .unwrap_or_default()
                ),
            ));
        }
        mappings.push(mapping);
    }
    Ok(mappings)
}

fn same_claim(a: &PortMapping, b: &PortMapping) -> bool {
    (a.host_port, a.protocol, a.host_ip) == (b.host_port, b.protocol, b.host_ip)
}

fn parse_one(i: usize, item: &Value) -> Result<PortMapping, CniError> {
    let field = |name: &str| format!("{PORT_MAPPINGS_FIELD}[{i}].{name}");
    let Value::Object(object) = item else {
        return Err(CniError::config(
            &format!("{PORT_MAPPINGS_FIELD}[{i}]"),
            format!("must be an object, found {}", kind(item)),
        ));
    };
    let port = |name: &str| -> Result<u16, CniError> {
        match object.get(name) {
            None | Some(Value::Null) => Err(CniError::config(&field(name), "is missing")),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    CniError::config(
                        &field(name),
                        format!("must be a port from 1 to 65535, found {n}"),
                    )
                }),
            Some(other) => Err(CniError::config(
                &field(name),
                format!("must be a port from 1 to 65535, found {}", kind(other)),
            )),
        }
    };
    let host_port = port("hostPort")?;
    let container_port = port("containerPort")?;
    let protocol = match object.get("protocol") {
        None | Some(Value::Null) => Protocol::Tcp,
        Some(Value::String(text)) if text.is_empty() => Protocol::Tcp,
        Some(Value::String(text)) => Protocol::parse(text).ok_or_else(|| {
            CniError::config(
                &field("protocol"),
                format!("must be tcp, udp or sctp, found {text:?}"),
            )
        })?,
        Some(other) => {
            return Err(CniError::config(
                &field("protocol"),
                format!("must be a string, found {}", kind(other)),
            ));
        }
    };
    let host_ip = match object.get("hostIP") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.is_empty() => None,
        Some(Value::String(text)) => Some(text.parse::<IpAddr>().map_err(|_| {
            CniError::config(
                &field("hostIP"),
                format!("must be an IP address or empty, found {text:?}"),
            )
        })?),
        Some(other) => {
            return Err(CniError::config(
                &field("hostIP"),
                format!("must be a string, found {}", kind(other)),
            ));
        }
    };
    Ok(PortMapping {
        host_port,
        container_port,
        protocol,
        host_ip,
    })
}
