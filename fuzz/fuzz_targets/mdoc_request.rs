//! `Request::decode` of a VerifyMdoc body (kind 0x04) on arbitrary bytes and, when it decodes,
//! `session_transcript_bytes` on its transcript.
#![no_main]

use gatehouse_protocol::{kind, Request};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(Request::VerifyMdoc(m)) = Request::decode(kind::VERIFY_MDOC, data) else {
        return;
    };
    let _ = gatehouse_mdoc::session_transcript_bytes(&m.transcript);
});
