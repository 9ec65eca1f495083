//! What the agent's two benchmarks (`agent.rs`, `containers.rs`) share: their size knobs read
//! from the environment, the median of repeated rounds, and the file of printable lines their
//! throughput figures push through a job. A folder of its own so Cargo does not take it for a
//! third benchmark.

use std::io::Write;

/// `name` from the environment as a number, or `default`.
pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// A file of printable lines (100 bytes each with the newline) drawn from `alphabet`,
/// `megabytes` MB in all.
pub(crate) fn make_data(path: &std::path::Path, megabytes: usize, alphabet: &[u8]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut line = [0u8; 100];
    for index in 0..megabytes * 10_000 {
        for (offset, byte) in line[..99].iter_mut().enumerate() {
            *byte = alphabet[(index * 7 + offset * 13) % alphabet.len()];
        }
        line[99] = b'\n';
        file.write_all(&line).unwrap();
    }
    file.flush().unwrap();
}
