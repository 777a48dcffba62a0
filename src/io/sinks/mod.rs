//! Where outputs go: Kafka topics ([`kafka`]), InfluxDB ([`influx`]), files ([`files`]),
//! notification channels ([`notify`]) and the live view ([`live_view`]); [`deliver`] hands a
//! stream's completed times to any of them in order.

pub mod deliver;
pub mod files;
pub mod influx;
pub mod kafka;
pub mod live_view;
pub mod notify;
pub mod warehouse;
