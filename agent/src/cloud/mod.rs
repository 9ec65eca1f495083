//! The agent as a citizen of an EC2 instance (`--ec2`): its name is the instance id, it waits while
//! its Auto Scaling lifecycle state is `Warmed:*` (warm pools), and a spot interruption notice is
//! treated like SIGTERM (reported as `interrupted_at`, so the server applies the grace period).
//! Everything comes from instance metadata through IMDSv2 ([`imds`]). Debug jobs: an instance
//! whose job failed may be kept a while before it is removed ([`keep_failed_for`]).

pub mod aws;
pub mod imds;

use imds::{Imds, ImdsError};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CloudError {
    #[error(transparent)]
    Imds(#[from] ImdsError),
    #[error("still {state} after {waited:?}")]
    StillWarm { state: String, waited: Duration },
    #[error("spot/instance-action: {source}: {text}")]
    BadSpotNotice {
        text: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Debug jobs (`keep-failed-instance-minutes`): how long the agent keeps its instance after its
/// last job before removing it. Only after a failed job (a passed or stopped one has nothing to
/// inspect), only when the instance is to be removed at all, and never without a setting.
pub fn keep_failed_for(
    minutes: i64,
    last_job: Option<protocol::JobResult>,
    removing: bool,
) -> Option<Duration> {
    match (removing, last_job) {
        (true, Some(protocol::JobResult::Failed)) if minutes > 0 => Some(Duration::from_secs(
            minutes.unsigned_abs().saturating_mul(60),
        )),
        _ => None,
    }
}

/// The spot notice, as `spot/instance-action` gives it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SpotNotice {
    pub action: String,
    pub time: String,
}

/// Waits until the instance's Auto Scaling lifecycle state is no longer `Warmed:*` (an instance
/// outside an ASG, which has no such state, goes on at once). Returns the last state seen.
pub fn wait_until_in_service(
    imds: &mut Imds,
    poll: Duration,
    give_up_after: Duration,
) -> Result<String, CloudError> {
    let deadline = std::time::Instant::now() + give_up_after;
    let mut announced = false;
    loop {
        let state = imds
            .get("autoscaling/target-lifecycle-state")?
            .unwrap_or_default();
        if !state.starts_with("Warmed:") {
            return Ok(state);
        }
        if !announced {
            tracing::info!(
                "Instance is in a warm pool ({state}): waiting until it is put in service"
            );
            announced = true;
        }
        if std::time::Instant::now() >= deadline {
            return Err(CloudError::StillWarm {
                state,
                waited: give_up_after,
            });
        }
        std::thread::sleep(poll);
    }
}

/// The current spot interruption notice, if any.
pub fn spot_notice(imds: &mut Imds) -> Result<Option<SpotNotice>, CloudError> {
    match imds.get("spot/instance-action")? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| CloudError::BadSpotNotice { text, source }),
    }
}

/// Polls for a spot notice every `poll` on a thread; calls `on_notice` once when one appears.
pub fn watch_spot_notices(
    mut imds: Imds,
    poll: Duration,
    on_notice: impl FnOnce(SpotNotice) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("spot-watch".into())
        .spawn(move || loop {
            match spot_notice(&mut imds) {
                Ok(Some(notice)) => {
                    tracing::warn!(
                        "Spot interruption notice: {} at {}",
                        notice.action,
                        notice.time
                    );
                    on_notice(notice);
                    return;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!("Checking for a spot interruption notice failed: {error}")
                }
            }
            std::thread::sleep(poll);
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::JobResult::{Failed, Passed, Stopped};

    #[test]
    fn only_a_failed_jobs_instance_is_kept_and_only_when_asked() {
        let minutes = |m: u64| Some(Duration::from_secs(m * 60));
        let table = [
            (30, Some(Failed), true, minutes(30)),
            (1, Some(Failed), true, minutes(1)),
            (0, Some(Failed), true, None),
            (-5, Some(Failed), true, None),
            (30, Some(Passed), true, None),
            (30, Some(Stopped), true, None),
            (30, None, true, None),
            // `ec2-keep-instance`: the instance is not removed, so there is nothing to delay.
            (30, Some(Failed), false, None),
        ];
        for (setting, last, removing, kept) in table {
            assert_eq!(
                keep_failed_for(setting, last, removing),
                kept,
                "{setting} {last:?} {removing}"
            );
        }
    }
}
