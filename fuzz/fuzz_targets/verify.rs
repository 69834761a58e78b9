#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| subsync_fuzz::verify(data));
