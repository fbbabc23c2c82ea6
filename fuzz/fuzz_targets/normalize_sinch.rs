#![no_main]
//! The sinch normalizer; input format: see `switchboard_fuzz::normalize`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::normalize("sinch", data));
