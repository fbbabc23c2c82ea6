#![no_main]
//! The vonage normalizer; input format: see `switchboard_fuzz::normalize`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::normalize("vonage", data));
