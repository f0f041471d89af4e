//! The `gatehouse` command.
fn main() {}
