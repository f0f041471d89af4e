//! `from_qr_text` on arbitrary UTF-8 text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = std::str::from_utf8(data).map(gatehouse_protocol::from_qr_text); });
