//! `Token::decode` on arbitrary bytes: a value or a typed error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = gatehouse_protocol::Token::decode(data); });
