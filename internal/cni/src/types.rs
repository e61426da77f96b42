//! The CNI documents: the network configuration on stdin, the `ADD` result, the error object and
//! the `VERSION` answer, in the schemas of spec versions 1.0.0 and 1.1.0. All pure.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::CniError;
use crate::wire::DEFAULT_SOCKET;

/// The spec versions skein speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];

/// Keys under which a runtime passes `GC`'s still-valid attachments: the spec and libcni named
/// the key differently in 1.1.0's first releases, and libcni now sends both with one list.
const ATTACHMENT_KEYS: [&str; 2] = ["cni.dev/valid-attachments", "cni.dev/attachments"];

/// A CNI spec version skein speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CniVersion {
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// What skein answers in when the request names no version it speaks.
    pub const LATEST: Self = Self::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a `cniVersion`; any version but 1.0.0 and 1.1.0 is error code 1.
    pub fn parse(version: &str) -> Result<Self, CniError> {
        match version {
            "1.0.0" => Ok(Self::V1_0_0),
            "1.1.0" => Ok(Self::V1_1_0),
            other => Err(CniError::IncompatibleVersion {
                requested: other.to_owned(),
            }),
        }
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for CniVersion {
    type Error = CniError;

    fn try_from(version: String) -> Result<Self, CniError> {
        Self::parse(&version)
    }
}

impl From<CniVersion> for String {
    fn from(version: CniVersion) -> String {
        version.as_str().to_owned()
    }
}

/// One attachment of `GC`'s still-valid list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration the runtime passes on stdin: the spec's keys, skein's own
/// (`socket`), and everything else kept in `raw` for the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    /// The `type` key: the plugin binary's name.
    pub plugin_type: String,
    /// The daemon's socket (`socket`, default [`DEFAULT_SOCKET`]).
    pub socket: PathBuf,
    /// The previous plugin's result; the runtime sends it with `CHECK` and `DEL`.
    pub prev_result: Option<Value>,
    /// Capability arguments (`runtimeConfig`: port mappings, bandwidth and the like).
    pub runtime_config: Option<Value>,
    /// `GC`'s still-valid attachments from both keys, or `None` if neither key is present.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The whole configuration object as given.
    pub raw: Map<String, Value>,
}

impl NetConf {
    /// Parses the configuration from stdin's bytes: code 6 for malformed JSON (with its line and
    /// column), 1 for a version skein does not speak, 7 for an invalid key, 2 for an unsupported
    /// one.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        Self::from_value(decode_stdin(stdin)?)
    }

    /// Like [`NetConf::parse`], for a configuration already decoded.
    pub fn from_value(value: Value) -> Result<Self, CniError> {
        let Value::Object(raw) = value else {
            return Err(CniError::Decoding {
                what: "the network configuration on stdin".into(),
                problem: format!("expected a JSON object, found {}", kind(&value)),
            });
        };
        // The version first: the other keys' meaning depends on it.
        let cni_version = CniVersion::parse(required_str(&raw, "cniVersion")?)?;
        let name = required_str(&raw, "name")?;
        if !is_cni_name(name) {
            return Err(CniError::config(
                "name",
                format!(
                    "must start with a letter or digit and hold only letters, digits, `_`, `.` \
                     and `-`; found {name:?}"
                ),
            ));
        }
        let plugin_type = required_str(&raw, "type")?;
        if plugin_type.is_empty() {
            return Err(CniError::config("type", "must not be empty"));
        }
        if let Some(ipam) = raw.get("ipam") {
            return Err(CniError::UnsupportedField {
                key: "ipam".into(),
                value: excerpt(ipam),
                reason: "skein's daemon assigns pod addresses itself; remove the `ipam` section"
                    .into(),
            });
        }
        let socket = match raw.get("socket") {
            None => PathBuf::from(DEFAULT_SOCKET),
            Some(Value::String(path)) if path.starts_with('/') => PathBuf::from(path),
            Some(Value::String(path)) => {
                return Err(CniError::config(
                    "socket",
                    format!("must be an absolute path, found {path:?}"),
                ));
            }
            Some(other) => {
                return Err(CniError::config(
                    "socket",
                    format!("must be a string, found {}", kind(other)),
                ));
            }
        };
        let mut valid_attachments: Option<Vec<Attachment>> = None;
        for key in ATTACHMENT_KEYS {
            if let Some(list) = raw.get(key) {
                let all = valid_attachments.get_or_insert_with(Vec::new);
                for attachment in parse_attachments(key, list)? {
                    if !all.contains(&attachment) {
                        all.push(attachment);
                    }
                }
            }
        }
        Ok(Self {
            cni_version,
            name: name.to_owned(),
            plugin_type: plugin_type.to_owned(),
            socket,
            prev_result: raw.get("prevResult").cloned(),
            runtime_config: raw.get("runtimeConfig").cloned(),
            valid_attachments,
            raw,
        })
    }

    /// The hostPort mappings of `runtimeConfig.portMappings` (none without them). Read for ADD
    /// only: a DEL must succeed whatever its configuration holds.
    pub fn port_mappings(&self) -> Result<Vec<crate::PortMapping>, CniError> {
        crate::parse_port_mappings(self.runtime_config.as_ref())
    }
}

/// Decodes stdin as JSON, saying where it is malformed.
pub(crate) fn decode_stdin(stdin: &[u8]) -> Result<Value, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::Decoding {
            what: "the network configuration on stdin".into(),
            problem: "stdin is empty".into(),
        });
    }
    serde_json::from_slice(stdin).map_err(|e| CniError::Decoding {
        what: "the network configuration on stdin".into(),
        problem: e.to_string(),
    })
}

fn required_str<'a>(raw: &'a Map<String, Value>, key: &str) -> Result<&'a str, CniError> {
    match raw.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(CniError::config(
            key,
            format!("must be a string, found {}", kind(other)),
        )),
        None => Err(CniError::config(key, "is missing")),
    }
}

fn parse_attachments(key: &str, list: &Value) -> Result<Vec<Attachment>, CniError> {
    let Value::Array(items) = list else {
        return Err(CniError::config(
            key,
            format!(
                "must be a list of {{\"containerID\", \"ifname\"}} objects, found {}",
                kind(list)
            ),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |name: &str| match item.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(Value::String(_)) => Err(CniError::config(
                    &format!("{key}[{i}].{name}"),
                    "must not be empty",
                )),
                Some(other) => Err(CniError::config(
                    &format!("{key}[{i}].{name}"),
                    format!("must be a string, found {}", kind(other)),
                )),
                None => Err(CniError::config(
                    &format!("{key}[{i}].{name}"),
                    "is missing",
                )),
            };
            Ok(Attachment {
                container_id: field("containerID")?,
                ifname: field("ifname")?,
            })
        })
        .collect()
}

/// The spec's rule for network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn is_cni_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// "a string", "an object", …: for messages about a value of the wrong type.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A value's compact JSON, cut short so one bad key cannot flood the runtime's log.
fn excerpt(value: &Value) -> String {
    const MAX: usize = 120;
    let text = value.to_string();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The `ADD` result, in the 1.1.0 schema (a superset of 1.0.0's); [`AddResult::to_json`] writes
/// it in either.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AddResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// An interface the plugin created or touched.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for a pod's interface; `None` for the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// 1.1.0 only.
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address and prefix length in CIDR notation, host bits kept (`10.42.1.7/24`).
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into [`AddResult::interfaces`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0 only, like the four below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

/// DNS settings the runtime may pass on to the pod's resolver configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl AddResult {
    /// The result as printed on stdout, in `version`'s schema: 1.0.0 has no interface `mtu`,
    /// `socketPath` or `pciID` and no route `mtu`, `advmss`, `priority`, `table` or `scope`, so
    /// those are left out rather than sent to a runtime that does not know them.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut result = self.clone();
        if version == CniVersion::V1_0_0 {
            for interface in &mut result.interfaces {
                interface.mtu = None;
                interface.socket_path = None;
                interface.pci_id = None;
            }
            for route in &mut result.routes {
                route.mtu = None;
                route.advmss = None;
                route.priority = None;
                route.table = None;
                route.scope = None;
            }
        }
        let mut object = Map::new();
        object.insert("cniVersion".into(), version.as_str().into());
        // Serializing plain structs of strings, numbers and addresses cannot fail.
        let body = serde_json::to_value(&result).expect("an AddResult serializes");
        if let Value::Object(fields) = body {
            object.extend(fields);
        }
        Value::Object(object)
    }

    /// Reads a result back, e.g. `prevResult` for `CHECK`.
    pub fn from_json(value: &Value) -> Result<Self, serde_json::Error> {
        Self::deserialize(value)
    }

    /// Checks what the spec requires of the result that types cannot: each address's interface
    /// index must point into `interfaces`.
    pub fn check(&self) -> Result<(), String> {
        for (i, ip) in self.ips.iter().enumerate() {
            if let Some(index) = ip.interface
                && index >= self.interfaces.len()
            {
                return Err(format!(
                    "ips[{i}] ({}) names interface {index}, but the result lists {} interface(s)",
                    ip.address,
                    self.interfaces.len()
                ));
            }
        }
        Ok(())
    }
}

/// The error object printed on stdout with exit status 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorObject {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// The `VERSION` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    /// Answers in the requested version when skein speaks it, else in [`CniVersion::LATEST`].
    pub fn for_request(requested: Option<&str>) -> Self {
        let version = requested
            .and_then(|v| CniVersion::parse(v).ok())
            .unwrap_or(CniVersion::LATEST);
        Self {
            cni_version: version.as_str().to_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}
