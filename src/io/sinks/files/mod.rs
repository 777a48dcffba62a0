//! Files: JSON Lines shapes of every output ([`jsonl`]) and the output directory of a replay
//! ([`replay`]).

pub mod jsonl;
pub mod replay;
