//! `FrameHeader::decode` on the first six bytes of arbitrary input.
#![no_main]

use gatehouse_protocol::{FrameHeader, FRAME_HEADER_LEN};

libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = data.first_chunk::<FRAME_HEADER_LEN>().map(FrameHeader::decode); });
