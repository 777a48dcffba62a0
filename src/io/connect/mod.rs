//! Client settings shared by several adapters: the HTTP client, Kafka, MQTT, InfluxDB's API and
//! reader, the metadata store (PostgreSQL), TLS (one configuration for MQTT and HTTPS) and
//! secrets.

pub mod http;
pub mod influx;
pub mod kafka;
pub mod mqtt;
pub mod secret;
pub mod store;
pub mod tls;
