//! `split_frame` and `Request::decode` on an arbitrary frame.
#![no_main]

use gatehouse_protocol::{split_frame, Request};

libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = split_frame(data).map(|(kind, body)| Request::decode(kind, body)); });
