//! A job trace for the simulator (`scaler simulate --trace FILE`) is CSV from anywhere:
//! `sim::trace::read_csv` must answer every text with jobs or an error, never a panic, and the
//! jobs it accepts have finite, non-negative times.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(jobs) = sim::trace::read_csv(text) {
            for job in jobs {
                assert!(job.submit_s.is_finite() && job.submit_s >= 0.0, "{job:?}");
                assert!(
                    job.duration_s.is_finite() && job.duration_s >= 0.0,
                    "{job:?}"
                );
            }
        }
    }
});
