#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blocker::fuzzing::sync_response(data));
