//! skein's side of the Container Network Interface: the plugin the runtime executes, and the
//! daemon's unix socket that plugin talks to.
//!
//! The container runtime runs the `skein` binary with `CNI_COMMAND` set and the network
//! configuration on stdin ([`plugin_main`]). The plugin checks what it was given, answers
//! `VERSION` itself, and hands everything else to the daemon over a unix socket, passing the
//! pod's network namespace as an open file descriptor: the daemon may run sandboxed by systemd
//! and not see the runtime's mount of the namespace path. The daemon implements [`Handler`] and
//! runs [`serve`]; this crate does no networking of its own except one thing: a `DEL` while the
//! daemon is down removes the pod's interface directly, so a pod can always be torn down.
//!
//! Only CNI spec versions 1.0.0 and 1.1.0 are spoken ([`SUPPORTED_VERSIONS`]).

use std::fmt;

#[cfg(test)]
mod tests;

mod env;
mod plugin;
mod port_mappings;
mod server;
mod types;
mod wire;

pub use env::{Command, Env, PodIdentity};
pub use plugin::{plugin_main, run};
pub use port_mappings::{PORT_MAPPINGS_FIELD, PortMapping, Protocol, parse_port_mappings};
pub use server::{
    AddRequest, CheckRequest, DelRequest, GcRequest, Handler, RequestMetrics, bind, serve,
};
pub use types::{
    AddResult, Attachment, CniVersion, Dns, ErrorObject, Interface, IpConfig, NetConf, Route,
    SUPPORTED_VERSIONS, VersionInfo,
};
pub use wire::DEFAULT_SOCKET;

/// The spec's well-known error codes (0–99), and the few of skein's own (100 and up) that this
/// crate raises itself. The daemon's handler picks its own codes from 110 on.
pub mod code {
    /// The configuration's `cniVersion` is not one skein speaks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field in the network configuration is not supported; the message names key and value.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or gone; the runtime needs no cleanup for it.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A necessary `CNI_*` variable is missing or invalid; the message names it.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Reading, writing or opening something failed.
    pub const IO_FAILURE: u32 = 5;
    /// Input could not be decoded (malformed JSON and the like).
    pub const DECODING_FAILURE: u32 = 6;
    /// The network configuration is invalid; the message names the key.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// A transient condition; the runtime should retry later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// `STATUS`: the plugin cannot serve `ADD` requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// `STATUS`: the plugin cannot serve `ADD`, and existing pods may have limited connectivity.
    pub const NOT_AVAILABLE_IMPAIRED: u32 = 51;
    /// The daemon failed unexpectedly while serving the request (a bug in skein).
    pub const INTERNAL: u32 = 100;
    /// Plugin binary and daemon speak different versions of their socket protocol.
    pub const PROTOCOL: u32 = 101;
}

/// A CNI error: what the plugin prints (with the request's `cniVersion`, see
/// [`CniError::to_object`]) and exits 1 for. Runtimes show `msg` (the `Display` text) and
/// `details`, so the text names the variable, key, version or socket at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CniError {
    #[error(
        "CNI version {requested:?} is not supported; skein supports {}",
        SupportedList
    )]
    IncompatibleVersion { requested: String },
    #[error("unsupported field `{key}` (value {value}) in the network configuration: {reason}")]
    UnsupportedField {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    UnknownContainer(String),
    #[error("invalid environment variable {var}: {problem}")]
    InvalidEnvironment { var: String, problem: String },
    #[error("{0}")]
    Io(String),
    #[error("cannot decode {what}: {problem}")]
    Decoding { what: String, problem: String },
    #[error("invalid network configuration: `{key}` {problem}")]
    InvalidConfig { key: String, problem: String },
    #[error("{0}")]
    TryAgainLater(String),
    #[error("{0}")]
    NotAvailable(String),
    #[error("{0}")]
    NotAvailableImpaired(String),
    /// Any other code, chiefly skein's own (100 and up), with the daemon's message and details.
    #[error("{msg}")]
    Custom {
        code: u32,
        msg: String,
        details: String,
    },
}

impl CniError {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            Self::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            Self::UnsupportedField { .. } => code::UNSUPPORTED_FIELD,
            Self::UnknownContainer(_) => code::UNKNOWN_CONTAINER,
            Self::InvalidEnvironment { .. } => code::INVALID_ENVIRONMENT,
            Self::Io(_) => code::IO_FAILURE,
            Self::Decoding { .. } => code::DECODING_FAILURE,
            Self::InvalidConfig { .. } => code::INVALID_NETWORK_CONFIG,
            Self::TryAgainLater(_) => code::TRY_AGAIN_LATER,
            Self::NotAvailable(_) => code::NOT_AVAILABLE,
            Self::NotAvailableImpaired(_) => code::NOT_AVAILABLE_IMPAIRED,
            Self::Custom { code, .. } => *code,
        }
    }

    /// The error's `details`: empty but for [`CniError::Custom`], since every other variant says
    /// all it knows in its message.
    pub fn details(&self) -> &str {
        match self {
            Self::Custom { details, .. } => details,
            _ => "",
        }
    }

    /// The error as printed on stdout, in `version`'s schema (the error object is the same in
    /// every version skein speaks; only `cniVersion` differs).
    pub fn to_object(&self, version: &str) -> ErrorObject {
        ErrorObject {
            cni_version: version.to_owned(),
            code: self.code(),
            msg: self.to_string(),
            details: self.details().to_owned(),
        }
    }

    /// Shorthand for [`CniError::InvalidEnvironment`].
    pub fn env(var: &str, problem: impl Into<String>) -> Self {
        Self::InvalidEnvironment {
            var: var.to_owned(),
            problem: problem.into(),
        }
    }

    /// Shorthand for [`CniError::InvalidConfig`].
    pub fn config(key: &str, problem: impl Into<String>) -> Self {
        Self::InvalidConfig {
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Renders [`SUPPORTED_VERSIONS`] as "1.0.0, 1.1.0" inside `#[error]` messages.
struct SupportedList;

impl fmt::Display for SupportedList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, version) in SUPPORTED_VERSIONS.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(version)?;
        }
        Ok(())
    }
}
