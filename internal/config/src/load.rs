//! Loading: the file (or built-in defaults), `SKEIN_<SECTION>__<KEY>` overrides from the
//! environment, unknown keys found on the file's own key tree, and every problem reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::suggest::{suggestion, unknown_message};
use crate::{Config, DEFAULT_PATH, Problem, Settings};

/// Prefix of environment overrides: `SKEIN_<SECTION>__<KEY>`.
const ENV_PREFIX: &str = "SKEIN_";

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
    /// The file as written (for `skein config check` to print back).
    pub config: Config,
    /// What the parts get: every value parsed and checked.
    pub settings: Settings,
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
    let settings = Settings::from_config(&config);
    if let Err(bad) = &settings {
        problems.extend(bad.iter().cloned());
    }
    match settings {
        Ok(settings) if problems.is_empty() => Ok(Loaded {
            config,
            settings,
            source,
            overrides,
        }),
        _ => Err(ConfigError::Invalid {
            origin: source.to_string(),
            problems,
        }),
    }
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

pub(crate) fn toml_keys(text: &str) -> Result<BTreeSet<String>, String> {
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
