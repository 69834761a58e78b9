#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| subsync_fuzz::normalize(subsync::config::ProviderKind::Standard, data));
