//! `SignedCredential::decode` and `Credential::decode_payload` on arbitrary bytes.
#![no_main]

use gatehouse_protocol::{Credential, SignedCredential};

libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = (SignedCredential::decode(data), Credential::decode_payload(data)); });
