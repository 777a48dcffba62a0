//! iotpipe: an IoT telemetry pipeline on timely and differential dataflow.
//!
//! - [`dataflow`]: the pure pipeline, streams in and streams out.
//! - [`io`]: adapters between the world and the pipeline: sources, sinks, servers and the
//!   client settings and support they share.
//! - [`commands`]: `replay`, `run`, `bridge` and `loadgen`, each a config and a run function.

#![warn(missing_docs)]

pub mod commands;
pub mod dataflow;
pub mod io;
