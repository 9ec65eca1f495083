//! What the web console reads beyond the user API: pages of jobs by filter, and one job with
//! everything its page shows (its spec, and its agent's registration and instance launch
//! times for the timeline). Reads only; the console's actions go through the user operations.

use super::user_api::job_view;
use super::{Hub, HubError, HubResult};
use crate::store::JobQuery;
use protocol::views::JobView;
use protocol::JobSpec;

/// One job as its console page shows it.
#[derive(Debug, Clone)]
pub(crate) struct JobDetail {
    pub view: JobView,
    /// The spec as submitted (secret values are the page's to mask); `None` if unreadable.
    pub spec: Option<JobSpec>,
    /// When the job's (last) agent registered.
    pub registered_at: Option<i64>,
    /// When that agent's instance was launched (EC2 agents with an identity document).
    pub launched_at: Option<i64>,
}

impl Hub {
    /// A page of jobs, newest first, each with its `seq` (the next page's `before`), and
    /// whether more follow.
    pub(crate) fn query_jobs(&self, query: &JobQuery) -> HubResult<(Vec<(i64, JobView)>, bool)> {
        let (rows, more) = self.lock().store.query_jobs(query)?;
        let jobs = rows.iter().map(|row| (row.seq, job_view(row))).collect();
        Ok((jobs, more))
    }

    /// A job with its spec and its agent's times.
    pub(crate) fn job_detail(&self, job_id: &str) -> HubResult<JobDetail> {
        let guard = self.fresh()?;
        let row = match guard.core.jobs.get(job_id) {
            Some(job) => job.row.clone(),
            None => guard
                .store
                .job(job_id)?
                .ok_or_else(|| HubError::NoSuchJob {
                    job_id: job_id.to_string(),
                })?,
        };
        let (registered_at, launched_at) = match &row.agent {
            Some(agent) => (
                guard.store.agent(agent)?.map(|agent| agent.registered_at),
                guard.store.instance_launched_at(agent)?,
            ),
            None => (None, None),
        };
        Ok(JobDetail {
            view: job_view(&row),
            spec: serde_json::from_str(&row.spec).ok(),
            registered_at,
            launched_at,
        })
    }
}
