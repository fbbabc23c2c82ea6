#![no_main]
//! The configuration parser: TOML text → `Config` with every validation.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::config(data));
