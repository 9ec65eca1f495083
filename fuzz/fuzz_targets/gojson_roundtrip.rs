//! The Go-compatible JSON encoder (`protocol::gojson`) against serde_json: any value serde_json
//! reads, encoded the Go way, must read back as the same value as serde_json's own encoding of it
//! does, with `<`, `>` and `&` escaped; and any bytes written as a Go string must read back as the
//! per-byte lossy UTF-8 text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::gojson;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let encoded = gojson::to_go_json(&value).expect("a JSON value encodes");
        let decoded: serde_json::Value =
            serde_json::from_slice(&encoded).expect("Go-style JSON is JSON");
        // The oracle is serde_json's own encoding read back, not `value`: serde_json's default
        // float parsing is not exact for long decimals (the first crash found here: a 45-digit
        // number read as 6.6666666666666665e44, whose shortest form reads as ...67e44).
        let plain = serde_json::to_vec(&value).expect("a JSON value encodes");
        let expected: serde_json::Value = serde_json::from_slice(&plain).expect("JSON is JSON");
        assert_eq!(decoded, expected);
        for forbidden in [b'<', b'>', b'&'] {
            assert!(!encoded.contains(&forbidden), "HTML-safe: {encoded:?}");
        }
    }
    let mut out = Vec::new();
    gojson::write_go_string_bytes(&mut out, data);
    let text: String = serde_json::from_slice(&out).expect("a Go string is a JSON string");
    assert_eq!(text, gojson::utf8_lossy_per_byte(data));
});
