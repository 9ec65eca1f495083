//! The job role's decisions, pure and table-tested: the STS session's name, tags and session
//! policy for a job, when cached credentials need a refresh, who is calling the endpoint (the
//! owner of a loopback connection, from the kernel's `/proc/net/tcp` table), and the JSON the
//! container credential provider expects.

use std::net::SocketAddrV4;

/// Credentials last 15 minutes (STS's minimum); the endpoint asks STS again when fewer than
/// this many seconds are left, so a caller never gets credentials about to expire.
pub(crate) const REFRESH_BEFORE_SECS: i64 = 300;
/// How long the assumed credentials last (seconds).
pub(crate) const SESSION_SECS: i32 = 900;

/// What a job's STS session is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    pub tags: Vec<Tag>,
    /// The session policy (JSON), narrowing the job role to this job's project in the cache.
    pub policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// Who the job is, as far as its session is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobIdentity<'a> {
    pub job_id: &'a str,
    /// The job's `SEMAPHORE_PROJECT_ID` (from the job request): its part of the cache.
    pub project_id: Option<&'a str>,
    pub stack: &'a str,
    pub agent_type: &'a str,
}

/// What the job role may reach, as far as the session policy narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach<'a> {
    /// The toolbox cache's bucket ("": none).
    pub cache_bucket: &'a str,
    /// ECR repositories (names) the job may pull from and push to (`job-ecr-repositories`).
    pub ecr_repositories: &'a [String],
}

/// The session for a job: its name is the job id (STS's characters only, 2–64 of them), its tags
/// name the stack, agent type and job, and its policy allows the cache bucket's objects under the
/// job's project (the toolbox's `cache` keeps them under `<project id>/`) and the named ECR
/// repositories, nothing else.
pub fn session(identity: &JobIdentity<'_>, reach: &Reach<'_>) -> Session {
    let tags = [
        ("flotilla:stack", identity.stack),
        ("flotilla:agent-type", identity.agent_type),
        ("flotilla:job-id", identity.job_id),
    ]
    .into_iter()
    .map(|(key, value)| Tag {
        key: key.to_string(),
        value: tag_value(value),
    })
    .collect();
    Session {
        name: session_name(identity.job_id),
        tags,
        policy: session_policy(reach, identity.project_id),
    }
}

/// A role session name from a job id: `[A-Za-z0-9_+=,.@-]`, 2 to 64 characters.
pub(crate) fn session_name(job_id: &str) -> String {
    let mut name: String = job_id
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                true => c,
                false => '-',
            },
        )
        .take(64)
        .collect();
    if name.len() < 2 {
        name = format!("job-{name}");
    }
    name
}

/// A session tag value: STS's characters (letters, digits, spaces and `_.:/=+-@`), at most 256.
fn tag_value(value: &str) -> String {
    value
        .chars()
        .map(|c| match c.is_alphanumeric() || " _.:/=+-@".contains(c) {
            true => c,
            false => '-',
        })
        .take(256)
        .collect()
}

/// The session policy: the cache's objects under the project and listing that prefix, and the
/// named ECR repositories. A job that may reach nothing (no project or no cache, no repository)
/// gets a policy that denies everything, so its credentials can do nothing but say who they are.
/// The session policy only narrows: the stack's job role policy is what allows.
pub(crate) fn session_policy(reach: &Reach<'_>, project_id: Option<&str>) -> String {
    let project = project_id.filter(|p| is_safe_prefix(p));
    let mut statements = Vec::new();
    if let (false, Some(project)) = (reach.cache_bucket.is_empty(), project) {
        let bucket = reach.cache_bucket;
        statements.push(serde_json::json!({
            "Sid": "CacheObjectsOfThisProject",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": format!("arn:aws:s3:::{bucket}/{project}/*"),
        }));
        statements.push(serde_json::json!({
            "Sid": "ListThisProjectsCache",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": format!("arn:aws:s3:::{bucket}"),
            "Condition": {"StringLike": {"s3:prefix": [format!("{project}/*"), project]}},
        }));
    }
    let repositories: Vec<String> = reach
        .ecr_repositories
        .iter()
        .filter(|name| is_repository_name(name))
        .map(|name| format!("arn:aws:ecr:*:*:repository/{name}"))
        .collect();
    if !repositories.is_empty() {
        statements.push(serde_json::json!({
            "Sid": "EcrLogin",
            "Effect": "Allow",
            "Action": "ecr:GetAuthorizationToken",
            "Resource": "*",
        }));
        statements.push(serde_json::json!({
            // Narrowed to the repositories; what may be done in them is the job role's (the
            // stacks allow pulling and pushing, no administration).
            "Sid": "EcrTheNamedRepositories",
            "Effect": "Allow",
            "Action": "ecr:*",
            "Resource": repositories,
        }));
    }
    if statements.is_empty() {
        statements.push(serde_json::json!({
            "Sid": "Nothing",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
        }));
    }
    serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// An ECR repository name as ECR allows it (lower-case letters, digits, `._/-`, 2–256
/// characters): nothing that could widen an ARN (`*`, `?`, `:`).
pub(crate) fn is_repository_name(name: &str) -> bool {
    (2..=256).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._/-".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// A project id that can stand in an ARN's resource path as it is (Semaphore's are UUIDs).
fn is_safe_prefix(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether credentials that expire at `expiration` (Unix seconds) must be fetched anew at `now`.
pub(crate) fn needs_refresh(expiration: i64, now: i64) -> bool {
    expiration - now < REFRESH_BEFORE_SECS
}

/// The uid owning the TCP socket whose local address is `peer` and remote address one of
/// `servers` (the endpoint's addresses), from the text of `/proc/net/tcp`: on this machine's own
/// addresses, the process that called the endpoint (for a container on the job's rootless engine,
/// its network helper, which runs as the job user).
pub(crate) fn socket_owner(
    table: &str,
    peer: SocketAddrV4,
    servers: &[SocketAddrV4],
) -> Option<u32> {
    let peer = proc_address(peer);
    let servers: Vec<String> = servers.iter().map(|s| proc_address(*s)).collect();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let matches = fields.len() > 7
            && fields[1].eq_ignore_ascii_case(&peer)
            && servers.iter().any(|s| fields[2].eq_ignore_ascii_case(s));
        matches.then(|| fields[7].parse().ok()).flatten()
    })
}

/// `/proc/net/tcp`'s form of an IPv4 address: the address as a host-order (little-endian) hex
/// word, a colon, the port in hex.
fn proc_address(address: SocketAddrV4) -> String {
    let ip = u32::from_le_bytes(address.ip().octets());
    format!("{ip:08X}:{:04X}", address.port())
}

/// The body the container credential provider (every AWS SDK, the AWS CLI) reads.
pub(crate) fn credentials_body(
    access_key_id: &str,
    secret_access_key: &str,
    session_token: &str,
    expiration_rfc3339: &str,
) -> String {
    serde_json::json!({
        "AccessKeyId": access_key_id,
        "SecretAccessKey": secret_access_key,
        "Token": session_token,
        "Expiration": expiration_rfc3339,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn session_names_keep_stss_characters_and_length() {
        let table = [
            (
                "0f8a7a5e-6d3b-4f3e-9a37-2a9d2c1b7e10",
                "0f8a7a5e-6d3b-4f3e-9a37-2a9d2c1b7e10",
            ),
            ("job 1/2", "job-1-2"),
            ("x", "job-x"),
            ("", "job-"),
        ];
        for (job, name) in table {
            assert_eq!(session_name(job), name, "{job:?}");
        }
        assert_eq!(session_name(&"a".repeat(100)).len(), 64);
    }

    #[test]
    fn the_session_policy_allows_the_projects_cache_and_nothing_else() {
        let cache = |bucket| Reach {
            cache_bucket: bucket,
            ecr_repositories: &[],
        };
        let policy: serde_json::Value =
            serde_json::from_str(&session_policy(&cache("cache-b"), Some("p-1"))).unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements[0]["Resource"], "arn:aws:s3:::cache-b/p-1/*");
        assert_eq!(statements[1]["Resource"], "arn:aws:s3:::cache-b");
        assert_eq!(
            statements[1]["Condition"]["StringLike"]["s3:prefix"][0],
            "p-1/*"
        );
        for (bucket, project) in [
            ("", Some("p-1")),
            ("cache-b", None),
            ("cache-b", Some("*")),
            ("cache-b", Some("../other")),
        ] {
            let policy: serde_json::Value =
                serde_json::from_str(&session_policy(&cache(bucket), project)).unwrap();
            assert_eq!(
                policy["Statement"][0]["Effect"], "Deny",
                "{bucket} {project:?}"
            );
        }
    }

    #[test]
    fn named_ecr_repositories_are_pulled_from_and_pushed_to_and_nothing_wider() {
        let repositories = ["team/app".to_string(), "*".to_string(), "a:b".to_string()];
        let reach = Reach {
            cache_bucket: "",
            ecr_repositories: &repositories,
        };
        let policy: serde_json::Value =
            serde_json::from_str(&session_policy(&reach, Some("p-1"))).unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 2, "{policy}");
        assert_eq!(statements[0]["Action"], "ecr:GetAuthorizationToken");
        assert_eq!(
            statements[1]["Resource"],
            serde_json::json!(["arn:aws:ecr:*:*:repository/team/app"])
        );
        assert_eq!(statements[1]["Action"], "ecr:*");
        // Only names that would widen the ARN: nothing allowed at all.
        let wide = ["*".to_string(), "x?".to_string(), "".to_string()];
        let policy = session_policy(
            &Reach {
                cache_bucket: "",
                ecr_repositories: &wide,
            },
            None,
        );
        let policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
        assert_eq!(policy["Statement"][0]["Effect"], "Deny", "{policy}");
        assert_eq!(policy["Statement"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn sessions_are_tagged_with_stack_agent_type_and_job() {
        let identity = JobIdentity {
            job_id: "j-1",
            project_id: Some("p"),
            stack: "gpu-fleet",
            agent_type: "s1-gpu;evil",
        };
        let session = session(&identity, &Reach::default());
        let tags: Vec<(&str, &str)> = session
            .tags
            .iter()
            .map(|t| (t.key.as_str(), t.value.as_str()))
            .collect();
        assert_eq!(
            tags,
            [
                ("flotilla:stack", "gpu-fleet"),
                ("flotilla:agent-type", "s1-gpu-evil"),
                ("flotilla:job-id", "j-1")
            ]
        );
        assert_eq!(session.name, "j-1");
    }

    #[test]
    fn refresh_when_less_than_five_minutes_are_left() {
        assert!(!needs_refresh(1_000 + 900, 1_000));
        assert!(!needs_refresh(1_000 + 300, 1_000));
        assert!(needs_refresh(1_000 + 299, 1_000));
        assert!(needs_refresh(999, 1_000));
    }

    #[test]
    fn the_owner_of_a_loopback_connection_comes_from_the_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:C8D0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:D2F0 0100007F:C8D0 01 00000000:00000000 00:00000000 00000000  2001        0 2 1 0 20 4 30 10 -1
   2: 0100007F:C8D0 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
";
        let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0xC8D0);
        let peer = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0xD2F0);
        let link_local = SocketAddrV4::new(Ipv4Addr::new(169, 254, 170, 2), 0xC8D0);
        assert_eq!(socket_owner(table, peer, &[server]), Some(2001));
        assert_eq!(socket_owner(table, peer, &[link_local, server]), Some(2001));
        // The server's own end of the same connection is root's: the direction matters.
        assert_eq!(socket_owner(table, server, &[peer]), Some(0));
        let elsewhere = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0xD2F1);
        assert_eq!(socket_owner(table, elsewhere, &[server]), None);
        assert_eq!(socket_owner(table, peer, &[link_local]), None);
        assert_eq!(
            proc_address(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 80)),
            "0F02000A:0050"
        );
    }

    #[test]
    fn the_credentials_body_is_what_the_container_provider_reads() {
        let body: serde_json::Value =
            serde_json::from_str(&credentials_body("AK", "SK", "TOK", "2026-12-07T13:00:00Z"))
                .unwrap();
        assert_eq!(body["AccessKeyId"], "AK");
        assert_eq!(body["SecretAccessKey"], "SK");
        assert_eq!(body["Token"], "TOK");
        assert_eq!(body["Expiration"], "2026-12-07T13:00:00Z");
    }
}
