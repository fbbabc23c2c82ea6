#![no_main]
//! The meta normalizer; input format: see `switchboard_fuzz::normalize`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::normalize("meta", data));
