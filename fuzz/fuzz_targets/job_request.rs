//! The job request an agent fetches (`GET /jobs/<id>`, docs/protocol.md §4.1) comes from the
//! server: its decoder must refuse bad bytes with an error, never panic, and what it accepts must
//! encode and decode back to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::JobRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<JobRequest>(data) {
        let encoded = serde_json::to_vec(&request).expect("a decoded request encodes");
        let again: JobRequest = serde_json::from_slice(&encoded).expect("and decodes again");
        assert_eq!(
            serde_json::to_value(&again).ok(),
            serde_json::to_value(&request).ok()
        );
    }
});
