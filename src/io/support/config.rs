//! Configuration files.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or a field is unknown or of the wrong type; the message names the
    /// field and its line.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        source: toml::de::Error,
    },
    /// An environment override does not fit its field.
    #[error(transparent)]
    Env(#[from] EnvOverrideError),
}

/// Reads a TOML file into `T` (whose structs deny unknown fields, so a typo is an error).
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    load_toml_with_overrides(path, &[], |_| None)
}

/// Reads a TOML file into `T`, with the fields `env` finds among `overrides` set first (see
/// [`apply_env_overrides`]).
pub fn load_toml_with_overrides<T: DeserializeOwned>(
    path: &Path,
    overrides: &[EnvOverride],
    env: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_toml_with_overrides(path, &text, overrides, env)
}

/// Parses TOML `text` as [`load_toml_with_overrides`] does; `path` only names it in errors.
pub fn parse_toml_with_overrides<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    overrides: &[EnvOverride],
    env: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let toml_error = |source| ConfigError::Toml {
        path: path.to_owned(),
        source,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(toml_error)?;
    apply_env_overrides(&mut table, overrides, env)?;
    toml::Value::Table(table).try_into().map_err(toml_error)
}

/// The TOML type an environment override is read as.
#[derive(Clone, Copy, Debug)]
pub enum OverrideKind {
    /// Taken as it is.
    Text,
    /// A whole number.
    Integer,
}

/// An environment variable that sets one field of a configuration file.
#[derive(Clone, Copy, Debug)]
pub struct EnvOverride {
    /// The variable.
    pub variable: &'static str,
    /// The field's path below the top-level table, e.g. `["kafka", "brokers"]`.
    pub path: &'static [&'static str],
    /// How its value is read.
    pub kind: OverrideKind,
}

/// An override variable's value does not fit its field.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct EnvOverrideError {
    /// The variable.
    pub variable: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Sets every field of `table` whose variable `env` finds, creating sections on the way, so the
/// file's own validation then applies to the overridden values as well.
pub fn apply_env_overrides(
    table: &mut toml::Table,
    overrides: &[EnvOverride],
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), EnvOverrideError> {
    for o in overrides {
        let Some(text) = env(o.variable) else {
            continue;
        };
        let value = match o.kind {
            OverrideKind::Text => toml::Value::String(text),
            OverrideKind::Integer => {
                toml::Value::Integer(text.trim().parse().map_err(|_| EnvOverrideError {
                    variable: o.variable,
                    message: format!("{text:?} is not a whole number"),
                })?)
            }
        };
        let (field, sections) = o.path.split_last().expect("a field path is not empty");
        let mut section = &mut *table;
        for name in sections {
            let entry = section
                .entry(name.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            section = match entry {
                toml::Value::Table(inner) => inner,
                _ => {
                    return Err(EnvOverrideError {
                        variable: o.variable,
                        message: format!("`{name}` in the file is not a section"),
                    });
                }
            };
        }
        section.insert(field.to_string(), value);
    }
    Ok(())
}

/// An override read as text.
pub const fn text(variable: &'static str, path: &'static [&'static str]) -> EnvOverride {
    EnvOverride {
        variable,
        path,
        kind: OverrideKind::Text,
    }
}

/// An override read as a whole number.
pub const fn integer(variable: &'static str, path: &'static [&'static str]) -> EnvOverride {
    EnvOverride {
        variable,
        path,
        kind: OverrideKind::Integer,
    }
}
