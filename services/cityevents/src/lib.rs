//! The City Events launcher's library: what it builds from each row of the module table, the
//! defaults it gives each service and the all-in-one mode, so tests run exactly what the binary
//! runs.

pub mod all_in_one;
pub mod modules;
