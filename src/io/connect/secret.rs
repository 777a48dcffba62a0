//! Secrets in configuration: passwords and tokens of MQTT, InfluxDB and the bridge.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret string: never printed, not even in debug output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}
