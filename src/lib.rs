//! iotpipe: an IoT telemetry pipeline on timely and differential dataflow.
//!
//! - [`dataflow`]: the pure pipeline, streams in and streams out.
//! - [`io`]: sources and sinks that adapt files, devices and servers to it.

#![warn(missing_docs)]

pub mod dataflow;
pub mod io;
