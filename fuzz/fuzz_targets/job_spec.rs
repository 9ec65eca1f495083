//! The job spec users submit (JSON to the hub's API, YAML to `scaler jobs submit`): decoding,
//! validation and the conversion into the agent's job request must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{JobSpec, Logger};

fn exercise(spec: &JobSpec) {
    if spec.validate().is_ok() {
        let _ = spec.display_name();
        let _ = spec.to_job_request("job-1", Logger::default());
        let _ = spec.without_secrets();
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<JobSpec>(data) {
        exercise(&spec);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = serde_yaml::from_str::<JobSpec>(text) {
            exercise(&spec);
        }
    }
});
