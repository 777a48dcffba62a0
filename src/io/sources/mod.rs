//! What feeds the dataflow: the input handles every command builds ([`inputs`]), Kafka
//! partitions, checkpoints and the registry topic ([`kafka`]), the metadata store's change log
//! ([`store`]), the registry view both keep ([`live_registry`]), recorded files cut into chunks
//! ([`mod@file`]) and the simulated fleet ([`fleet`]).

pub mod file;
pub mod fleet;
pub mod influx_windows;
pub mod inputs;
pub mod kafka;
pub mod live_registry;
pub mod store;
