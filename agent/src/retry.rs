//! Upstream's `RetryWithConstantWait` (docs/protocol.md §2.9): N attempts, a fixed delay, no
//! backoff. Hand-written on purpose: retry crates (`backon`, `tokio-retry`) are built around
//! back-off policies and async futures, while this is a dozen lines whose exact log line and
//! attempt count upstream's tests and log readers expect.

use std::time::Duration;

/// Every attempt failed; `last` is the last attempt's error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("[{task}] failed after [{attempts}] attempts - giving up: {last}")]
pub(crate) struct GaveUp<E: std::fmt::Display> {
    pub task: String,
    pub attempts: u32,
    pub last: E,
}

/// Calls `attempt` up to `max_attempts` times with `delay` between failures.
pub(crate) fn with_constant_wait<T, E: std::fmt::Display>(
    task: &str,
    max_attempts: u32,
    delay: Duration,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, GaveUp<E>> {
    let mut number = 1;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(error) if number >= max_attempts => {
                return Err(GaveUp {
                    task: task.to_string(),
                    attempts: number,
                    last: error,
                });
            }
            Err(error) => {
                tracing::warn!(
                    "[{task}] attempt [{number}] failed with [{error}] - retrying in {delay:?}"
                );
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                number += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_attempts_means_exactly_that_many_calls() {
        let mut calls = 0;
        let result = with_constant_wait("t", 5, Duration::ZERO, || {
            calls += 1;
            Err::<(), _>("nope")
        });
        assert_eq!(calls, 5);
        assert_eq!(
            result.unwrap_err().to_string(),
            "[t] failed after [5] attempts - giving up: nope"
        );

        let mut calls = 0;
        let value = with_constant_wait("t", 5, Duration::ZERO, || {
            calls += 1;
            if calls < 4 {
                Err("later")
            } else {
                Ok(calls)
            }
        });
        assert_eq!(value, Ok(4));
    }
}
