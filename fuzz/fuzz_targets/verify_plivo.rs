#![no_main]
//! The plivo verifier (then, when it passes, the normalizer); input format: see `switchboard_fuzz::verify`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchboard_fuzz::verify("plivo", data);
});
