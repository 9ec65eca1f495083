//! The scaler's config (`scaler run --config`) is YAML from the operator: `scaling::config::parse`
//! must answer every text with checked fleets or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = scaling::config::parse(text, "fuzz.yml", std::path::Path::new("/"));
    }
});
