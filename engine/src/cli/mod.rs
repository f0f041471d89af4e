//! The `gatehouse` binary's commands: the command line ([`args`]), the commands that are more
//! than a call into the library (the demo, the issuer and wallet tools), and the leaves they
//! share ([`output`], [`runtime`], [`exit`]).

pub mod args;
pub mod demo;
pub mod exit;
pub mod output;
pub mod runtime;
pub mod tools;
