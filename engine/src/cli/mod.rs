//! The `gatehouse` binary's commands that are more than a call into the library: the demo and
//! the issuer and wallet tools.

pub mod demo;
pub mod tools;
