//! Upstream's `RetryWithConstantWait` (spec §2.9): N attempts, a fixed delay, no backoff.

use std::time::Duration;

/// Calls `attempt` up to `max_attempts` times with `delay` between failures. The error after the
/// last attempt reads `[<task>] failed after [<n>] attempts - giving up: <err>`.
pub fn with_constant_wait<T, E: std::fmt::Display>(
    task: &str,
    max_attempts: u32,
    delay: Duration,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, String> {
    let mut number = 1;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(error) if number >= max_attempts => {
                return Err(format!(
                    "[{task}] failed after [{number}] attempts - giving up: {error}"
                ));
            }
            Err(error) => {
                log::warn!(
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
        let result: Result<(), String> = with_constant_wait("t", 5, Duration::ZERO, || {
            calls += 1;
            Err::<(), _>("nope")
        });
        assert_eq!(calls, 5);
        assert_eq!(
            result.unwrap_err(),
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
