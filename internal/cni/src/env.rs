//! The `CNI_*` environment: which command, for which container, interface and namespace, and
//! the pod's identity from `CNI_ARGS`. Pure: [`Env`] is a map its caller fills.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::CniError;

/// The CNI variables of an invocation. [`Env::from_process`] reads the real ones; tests build
/// one from pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process's `CNI_*` variables; nothing else is read, so nothing else can leak into a
    /// request.
    pub fn from_process() -> Self {
        std::env::vars_os()
            .filter_map(|(name, value)| {
                let name = name.into_string().ok()?;
                // Runtimes pass ASCII; a stray invalid byte then fails validation visibly rather
                // than making the variable look unset.
                name.starts_with("CNI_")
                    .then(|| (name, value.to_string_lossy().into_owned()))
            })
            .collect()
    }

    /// A variable's value; `None` if unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// A variable's value, treating set-but-empty as unset.
    fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    fn required(&self, name: &str) -> Result<&str, CniError> {
        self.non_empty(name)
            .ok_or_else(|| CniError::env(name, "is not set (or empty)"))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    const ALL: [Self; 6] = [
        Self::Add,
        Self::Del,
        Self::Check,
        Self::Status,
        Self::Gc,
        Self::Version,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Gc => "GC",
            Self::Version => "VERSION",
        }
    }

    /// Reads `CNI_COMMAND`; unset or unknown is error code 4.
    pub fn from_env(env: &Env) -> Result<Self, CniError> {
        let value = env.required("CNI_COMMAND")?;
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == value)
            .ok_or_else(|| {
                CniError::env(
                    "CNI_COMMAND",
                    format!(
                        "{value:?} is not one of {}",
                        Self::ALL.map(Self::as_str).join(", ")
                    ),
                )
            })
    }
}

/// Who the pod is, from `CNI_ARGS`; Kubernetes runtimes (containerd, CRI-O) always send all
/// four, other callers may send none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The sandbox ("pause") container's ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_container_id: Option<String>,
}

impl PodIdentity {
    /// Parses `CNI_ARGS` (`K=V;K=V`). As in libcni, a key skein does not know is an error unless
    /// `IgnoreUnknown` is true, wherever it stands in the list.
    pub fn from_cni_args(args: &str) -> Result<Self, CniError> {
        let mut pairs = Vec::new();
        // Empty pieces (a trailing `;`) carry nothing, so they are skipped rather than refused.
        for piece in args.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = piece.split_once('=') else {
                return Err(CniError::env(
                    "CNI_ARGS",
                    format!("{piece:?} is not KEY=VALUE"),
                ));
            };
            pairs.push((key, value));
        }
        let ignore_unknown = match pairs.iter().rev().find(|(k, _)| *k == "IgnoreUnknown") {
            None => false,
            Some((_, value)) => parse_bool(value).ok_or_else(|| {
                CniError::env(
                    "CNI_ARGS",
                    format!("IgnoreUnknown={value:?} is not a boolean (1, true, 0, false)"),
                )
            })?,
        };
        let mut pod = Self::default();
        for (key, value) in pairs {
            let slot = match key {
                "K8S_POD_NAMESPACE" => &mut pod.namespace,
                "K8S_POD_NAME" => &mut pod.name,
                "K8S_POD_UID" => &mut pod.uid,
                "K8S_POD_INFRA_CONTAINER_ID" => &mut pod.infra_container_id,
                "IgnoreUnknown" => continue,
                _ if ignore_unknown => continue,
                _ => {
                    return Err(CniError::env(
                        "CNI_ARGS",
                        format!(
                            "unknown key {key:?} (skein knows K8S_POD_NAMESPACE, K8S_POD_NAME, \
                             K8S_POD_UID and K8S_POD_INFRA_CONTAINER_ID; IgnoreUnknown=1 skips \
                             the rest)"
                        ),
                    ));
                }
            };
            *slot = (!value.is_empty()).then(|| value.to_owned());
        }
        Ok(pod)
    }
}

/// Go's `strconv.ParseBool`, which libcni uses for `IgnoreUnknown`.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The validated environment of one command. Fields a command does not need are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Invocation {
    pub container_id: String,
    pub ifname: String,
    /// `CNI_NETNS`; may be empty for `DEL`.
    pub netns: String,
    pub pod: PodIdentity,
}

impl Invocation {
    /// Reads and checks the variables `command` needs (as the spec requires: `ADD` and `CHECK`
    /// the container, namespace and interface; `DEL` the container and interface; `STATUS` and
    /// `GC` nothing). skein delegates to no other plugin, so it has no use for `CNI_PATH`.
    pub fn from_env(env: &Env, command: Command) -> Result<Self, CniError> {
        match command {
            Command::Status | Command::Gc | Command::Version => Ok(Self::default()),
            Command::Add | Command::Check | Command::Del => {
                let container_id = env.required("CNI_CONTAINERID")?;
                check_container_id(container_id)
                    .map_err(|problem| CniError::env("CNI_CONTAINERID", problem))?;
                let ifname = env.required("CNI_IFNAME")?;
                check_ifname(ifname).map_err(|problem| CniError::env("CNI_IFNAME", problem))?;
                let netns = if command == Command::Del {
                    env.non_empty("CNI_NETNS").unwrap_or_default()
                } else {
                    env.required("CNI_NETNS")?
                };
                if !netns.is_empty() && !netns.starts_with('/') {
                    return Err(CniError::env(
                        "CNI_NETNS",
                        format!("must be an absolute path, found {netns:?}"),
                    ));
                }
                let pod = match env.get("CNI_ARGS") {
                    Some(args) => PodIdentity::from_cni_args(args)?,
                    None => PodIdentity::default(),
                };
                Ok(Self {
                    container_id: container_id.to_owned(),
                    ifname: ifname.to_owned(),
                    netns: netns.to_owned(),
                    pod,
                })
            }
        }
    }
}

/// The spec's container ID rule: a letter or digit, then letters, digits, `_`, `.` or `-`.
pub(crate) fn check_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(format!(
            "must start with a letter or digit and hold only letters, digits, `_`, `.` and `-`; \
             found {id:?}"
        ))
    }
}

/// The spec's interface name rule is Linux's; skein's one name validator is stricter (no
/// characters that would need quoting where the name reaches a rule or a path).
pub(crate) fn check_ifname(name: &str) -> Result<(), String> {
    skein_names::IfName::new(name)
        .map(drop)
        .map_err(|e| e.to_string())
}
