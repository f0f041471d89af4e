//! `RevocationList::decode` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = gatehouse_protocol::RevocationList::decode(data); });
