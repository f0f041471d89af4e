//! `split_frame` and `Response::decode` on an arbitrary frame.
#![no_main]

use gatehouse_protocol::{split_frame, Response};

libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = split_frame(data).map(|(kind, body)| Response::decode(kind, body)); });
