//! Short-lived AWS credentials for the job, without the instance's role (issue 26). The sealed
//! instance keeps its role away from jobs; instead, for each job the agent assumes the stack's
//! job role (STS `AssumeRole`: session name = job id, session tags = stack, agent type and job,
//! a session policy narrowing it to the job's project in the cache bucket, 15 minutes) and serves
//! the credentials through the standard container credential provider, which every AWS SDK, the
//! AWS CLI and the toolbox's `cache` read: `AWS_CONTAINER_CREDENTIALS_FULL_URI` (an endpoint on
//! loopback) and `AWS_CONTAINER_AUTHORIZATION_TOKEN` (a random token of this job's own).
//!
//! The endpoint answers only while the job runs ([`Grant`] revokes its token when dropped), only
//! with the job's token, and only to a connection owned by the job's user (the kernel's TCP
//! table names the owner of a loopback connection; [`rules::socket_owner`]). Credentials are
//! fetched at the first request, not at job start (a job that needs none costs no STS call), and
//! fetched again when fewer than five minutes are left.
//!
//! A container job's `main` container has a loopback of its own, and the SDKs accept an `http`
//! credentials URI only on loopback or on the link-local addresses that ECS and EKS use
//! (169.254.170.2, 169.254.170.23). So the sealed instance puts 169.254.170.2 on its own `lo`
//! (`ami/scripts/flotilla-seal`) and the agent listens there too (`job-role-container-listen`):
//! on the rootless engine, a container's connection leaves the job's network namespace through
//! its network helper (slirp4netns), a process of the job user's, so the kernel's TCP table names
//! the job user as its owner and the same rules apply. `main` gets the token; service containers
//! do not. On the machine's Docker (`container-engine: host`) containers' connections come from a
//! bridge and have no local owner: those jobs get no credentials from the endpoint.

pub mod rules;
mod server;

use crate::job_user::JobUser;
use protocol::JobRequest;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// The path the endpoint serves credentials at.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";
/// Where the endpoint listens unless told otherwise (`job-role-listen`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:51680";

/// The link-local addresses the AWS SDKs accept in an `http` credentials URI besides loopback
/// (ECS's and EKS Pod Identity's): where containers can reach the endpoint.
pub(crate) const CONTAINER_HOSTS: [std::net::Ipv4Addr; 2] = [
    std::net::Ipv4Addr::new(169, 254, 170, 2),
    std::net::Ipv4Addr::new(169, 254, 170, 23),
];

#[derive(Debug, Error)]
pub enum JobRoleError {
    #[error("job-role-listen must be a loopback IPv4 address and port such as {DEFAULT_LISTEN}, got '{0}'")]
    BadListen(String),
    #[error("job-role-container-listen must be 169.254.170.2 or 169.254.170.23 and a port (the link-local hosts the AWS SDKs accept), such as 169.254.170.2:51680, got '{0}'")]
    BadContainerListen(String),
    #[error("cannot listen for job credential requests on {address}: {error}")]
    Listen {
        address: String,
        error: std::io::Error,
    },
    #[error("cannot start the job credential endpoint: {0}")]
    Runtime(std::io::Error),
}

/// What the agent's configuration says about the job role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobRoleOptions {
    /// `job-role-arn`: the role assumed for each job.
    pub role_arn: String,
    /// `job-role-listen`: loopback address and port of the endpoint (port 0: any free one).
    pub listen: String,
    /// `job-role-container-listen`: the link-local address and port containers reach the endpoint
    /// at ("": container jobs get no credentials).
    pub container_listen: String,
    /// `cache-bucket`: the toolbox cache's bucket ("" : no cache variables, no S3 access).
    pub cache_bucket: String,
    /// `job-ecr-repositories`: ECR repositories (names) jobs may pull from and push to.
    pub ecr_repositories: Vec<String>,
    /// The stack and agent type, for the session's tags (`job-role-stack`, `job-role-agent-type`).
    pub stack: String,
    pub agent_type: String,
    /// The region the jobs' SDKs use.
    pub region: String,
}

/// The running endpoint. Cheap to share: jobs take [`Grant`]s from it.
#[derive(Debug, Clone)]
pub struct JobRole {
    shared: Arc<server::Shared>,
    options: JobRoleOptions,
    address: SocketAddrV4,
    container_address: Option<SocketAddrV4>,
}

/// Where a job's process calls the endpoint from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The machine itself: a shell job (the loopback address).
    Host,
    /// The job's `main` container on its rootless engine (the link-local address).
    Container,
}

impl JobRole {
    /// Binds the endpoint and serves it on a thread of its own; STS is reached with `sdk`.
    pub fn start(
        options: JobRoleOptions,
        sdk: &aws_config::SdkConfig,
    ) -> Result<JobRole, JobRoleError> {
        let (listener, address) = bind(parse_listen(&options.listen)?)?;
        let mut listeners = vec![listener];
        let mut addresses = vec![address];
        let container_address = match parse_container_listen(&options.container_listen)? {
            Some(wanted) => {
                let (listener, bound) = bind(wanted)?;
                listeners.push(listener);
                addresses.push(bound);
                Some(bound)
            }
            None => None,
        };
        let shared = Arc::new(server::Shared {
            grants: Mutex::new(Vec::new()),
            role_arn: options.role_arn.clone(),
            sts: aws_sdk_sts::Client::new(sdk),
            addresses: addresses.clone(),
        });
        server::spawn(listeners, shared.clone()).map_err(JobRoleError::Runtime)?;
        tracing::info!(
            "Serving job credentials (role {}) on {addresses:?}",
            options.role_arn
        );
        Ok(JobRole {
            shared,
            options,
            address,
            container_address,
        })
    }

    /// The endpoint's address (the port is the bound one when 0 was asked for).
    pub fn address(&self) -> SocketAddrV4 {
        self.address
    }

    /// A grant for one job: its token is accepted from `user`'s connections (the agent's own
    /// user's without one) until the grant is dropped; its `env` goes into the job, with the
    /// endpoint's address as `caller` reaches it. `None`: a container caller, and the endpoint
    /// does not listen for containers.
    pub fn grant(
        &self,
        request: &JobRequest,
        user: Option<&JobUser>,
        caller: Caller,
    ) -> Option<Grant> {
        let address = match caller {
            Caller::Host => self.address,
            Caller::Container => self.container_address?,
        };
        let project = request
            .env_vars
            .iter()
            .find(|var| var.name == "SEMAPHORE_PROJECT_ID")
            .and_then(|var| var.decode_value().ok())
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let identity = rules::JobIdentity {
            job_id: &request.job_id,
            project_id: project.as_deref(),
            stack: &self.options.stack,
            agent_type: &self.options.agent_type,
        };
        let reach = rules::Reach {
            cache_bucket: &self.options.cache_bucket,
            ecr_repositories: &self.options.ecr_repositories,
        };
        let session = rules::session(&identity, &reach);
        // SAFETY: geteuid has no preconditions.
        let uid = user.map_or_else(|| unsafe { libc::geteuid() }, |user| user.uid);
        let token = random_token();
        server::admit(&self.shared, &token, uid, session);
        Some(Grant {
            env: self.env(address, &token),
            shared: self.shared.clone(),
            token,
        })
    }

    fn env(&self, address: SocketAddrV4, token: &str) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_string(),
                format!("http://{address}{CREDENTIALS_PATH}"),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN".to_string(),
                token.to_string(),
            ),
            // The AWS CLI (v2) pages its output on a terminal, and the job's is one: it would
            // wait for a key press forever.
            ("AWS_PAGER".to_string(), String::new()),
        ];
        if !self.options.region.is_empty() {
            for name in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
                env.push((name.to_string(), self.options.region.clone()));
            }
        }
        if !self.options.cache_bucket.is_empty() {
            env.push(("SEMAPHORE_CACHE_BACKEND".to_string(), "s3".to_string()));
            env.push((
                "SEMAPHORE_CACHE_S3_BUCKET".to_string(),
                self.options.cache_bucket.clone(),
            ));
        }
        env
    }
}

/// One job's access to the endpoint, revoked when dropped (the end of the job).
#[derive(Debug)]
pub struct Grant {
    /// What the job's environment gets (the endpoint, its token, the region, the cache).
    pub env: Vec<(String, String)>,
    shared: Arc<server::Shared>,
    token: String,
}

impl Drop for Grant {
    fn drop(&mut self) {
        server::revoke(&self.shared, &self.token);
    }
}

/// 32 random bytes, hex: the job's token.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Binds `address`; returns the listener and the address bound (the port when 0 was asked for).
fn bind(address: SocketAddrV4) -> Result<(std::net::TcpListener, SocketAddrV4), JobRoleError> {
    let listener = std::net::TcpListener::bind(address).map_err(|error| JobRoleError::Listen {
        address: address.to_string(),
        error,
    })?;
    let bound = match listener.local_addr() {
        Ok(std::net::SocketAddr::V4(bound)) => bound,
        _ => address,
    };
    Ok((listener, bound))
}

/// `job-role-container-listen`: empty (none) or one of [`CONTAINER_HOSTS`] with a port.
fn parse_container_listen(listen: &str) -> Result<Option<SocketAddrV4>, JobRoleError> {
    if listen.is_empty() {
        return Ok(None);
    }
    match listen.parse::<SocketAddrV4>() {
        Ok(address) if CONTAINER_HOSTS.contains(address.ip()) => Ok(Some(address)),
        _ => Err(JobRoleError::BadContainerListen(listen.to_string())),
    }
}

fn parse_listen(listen: &str) -> Result<SocketAddrV4, JobRoleError> {
    let listen = if listen.is_empty() {
        DEFAULT_LISTEN
    } else {
        listen
    };
    match listen.parse::<SocketAddrV4>() {
        Ok(address) if address.ip().is_loopback() => Ok(address),
        _ => Err(JobRoleError::BadListen(listen.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_listens_on_loopback_only() {
        assert_eq!(parse_listen("").unwrap().to_string(), DEFAULT_LISTEN);
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
        for bad in [
            "0.0.0.0:51680",
            "10.0.0.1:80",
            "[::1]:80",
            "localhost:80",
            "x",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_container_listen("").unwrap(), None);
        for good in ["169.254.170.2:51680", "169.254.170.23:80"] {
            assert!(parse_container_listen(good).unwrap().is_some(), "{good}");
        }
        for bad in ["127.0.0.1:51680", "169.254.169.254:80", "0.0.0.0:1", "x"] {
            assert!(parse_container_listen(bad).is_err(), "{bad}");
        }
        assert_ne!(random_token(), random_token());
        assert_eq!(random_token().len(), 64);
    }
}
