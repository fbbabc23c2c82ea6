#![no_main]
//! The telegram normalizer; input format: see `switchboard_fuzz::normalize`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::normalize("telegram", data));
