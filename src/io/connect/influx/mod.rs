//! InfluxDB as a client sees it: its settings ([`config`]), the 1.x or 2.x/3.x write API
//! ([`mod@write`]) and InfluxQL reads ([`query`]). The sink that batches outputs into it is
//! [`crate::io::sinks::influx`].

pub mod config;
pub mod query;
pub mod write;
