//! `gatehouse_mdoc::cbor::decode` on arbitrary bytes: a tree that keeps its input, or a typed
//! error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = gatehouse_mdoc::cbor::decode(data).map(|n| assert_eq!(n.raw, data)); });
