//! Client settings shared by several adapters: the HTTP client, Kafka, MQTT (with TLS),
//! InfluxDB's API and reader, and secrets.

pub mod http;
pub mod influx;
pub mod kafka;
pub mod mqtt;
pub mod secret;
