//! InfluxDB output: closed windows as line protocol (`lines`), written over HTTP.

pub mod lines;
pub mod write;
