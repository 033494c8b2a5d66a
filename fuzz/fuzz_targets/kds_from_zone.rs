#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| meshzone_fuzz_targets::kds_from_zone(data));
