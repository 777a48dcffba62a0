//! What feeds the dataflow: the input handles every command builds ([`inputs`]), Kafka
//! partitions, checkpoints and the registry feed ([`kafka`]), recorded files cut into chunks
//! ([`mod@file`]) and the simulated fleet ([`fleet`]).

pub mod file;
pub mod fleet;
pub mod inputs;
pub mod kafka;
