//! The warehouse's model, for `iotpipe etl`: mergeable aggregates rolled up the hierarchy
//! ([`rollup`]) and the device dimension over event time ([`dimension`]).
//!
//! Batch computations rather than dataflow stages: the windows the ETL reads are closed, and
//! what it computes is recomputed whole for each day that changed. Pure like the rest of
//! `dataflow`: rows in, rows out.

pub mod dimension;
pub mod rollup;
