//! The `gatehouse` binary's commands: the command line ([`args`]), one module per command
//! family, and the leaves they share ([`output`], [`runtime`], [`exit`]).
//!
//! Dependencies point one way: `main.rs` → a command module → [`args`] and the leaves; no
//! module here uses `main.rs`, and the leaves use none of the command modules.

pub mod args;
pub mod demo;
pub mod dev_pki;
pub mod exit;
pub mod issuer;
pub mod mdoc;
pub mod output;
pub mod reference;
pub mod runtime;
pub mod scan;
pub mod serve;
pub mod tools;
pub mod wallet;
