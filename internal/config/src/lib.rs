//! skein's one configuration file: its schema and defaults ([`Config`], `default.toml`), loading
//! it (TOML file, then `SKEIN_<SECTION>__<KEY>` environment overrides), and the typed
//! [`Settings`] the parts receive, built by one validation pass that names every problem.
//!
//! This crate knows nothing of what the parts do with their settings.

use std::fmt;

mod load;
mod schema;
mod settings;
mod suggest;
#[cfg(test)]
mod tests;

pub use load::{ConfigError, Loaded, Source, known_keys, load};
pub use schema::*;
pub use settings::*;

/// Where `skein run` and `skein config check` look when no path is given.
pub const DEFAULT_PATH: &str = "/etc/skein/config.toml";

/// The commented default configuration; also shipped as the package's conffile.
pub const DEFAULT_TOML: &str = include_str!("../default.toml");

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

impl Config {
    /// The effective configuration as TOML, for `skein config check`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}
