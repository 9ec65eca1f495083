//! The hub's user API from the command line: `scaler jobs`, `scaler agent-types`, `scaler agents`.
//! It depends on the wire types in `protocol::views` only, never on the hub server; times are shown
//! as local date-times with the duration since the job was queued.

use super::HubAccess;
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use protocol::views::{
    AgentTypeView, AgentView, CreatedAgentType, IdentityPolicy, JobView, LogPage, NewAgentType,
};
use protocol::{JobSpec, LogEvent};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub(crate) enum JobsCommand {
    /// Submit a job from a YAML/JSON job spec, or from --command.
    Submit {
        /// The job spec file (YAML or JSON).
        file: Option<PathBuf>,
        /// A command to run (repeat for several); instead of a file.
        #[arg(long = "command", short = 'c', conflicts_with = "file")]
        commands: Vec<String>,
        /// The agent type for --command jobs.
        #[arg(long, default_value = protocol::spec::DEFAULT_AGENT_TYPE)]
        agent_type: String,
        /// Follow the job's log until it finishes; exit 0 only if it passed.
        #[arg(long)]
        follow: bool,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (queued, assigned, running, finished).
        #[arg(long)]
        state: Option<String>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one job: state, result, agent, times.
    Show {
        /// The job's id.
        id: String,
    },
    /// Print a job's log.
    Logs {
        /// The job's id.
        id: String,
        /// Keep printing until the job finishes.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print the raw JSON events instead of text.
        #[arg(long)]
        raw: bool,
    },
    /// Stop a job (queued: at once; running: its agent stops it).
    Stop {
        /// The job's id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum AgentTypesCommand {
    /// Create an agent type and print its registration token (shown only once).
    Create {
        /// The new agent type's name (letters, digits, `-` and `_`).
        name: String,
        #[command(flatten)]
        rule: super::registration_rule::RegistrationRuleArgs,
        /// Default time limit, in seconds, of this type's jobs that set none [default: the hub's
        /// --job-time-limit].
        #[arg(long)]
        execution_time_limit: Option<u64>,
    },
    /// List the agent types.
    List,
}

#[derive(Subcommand)]
pub(crate) enum AgentsCommand {
    /// List connected agents: type, state, job, GPUs, host.
    List,
    /// Ask an agent to shut down at its next sync (after its current job).
    Shutdown {
        /// The agent's name.
        name: String,
    },
}

struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    fn new(access: &HubAccess) -> Result<Client> {
        let token = match &access.token {
            Some(token) => token.clone(),
            None => {
                let path = access.data_dir.join("admin-token");
                std::fs::read_to_string(&path)
                    .map(|text| text.trim().to_string())
                    .with_context(|| format!("no admin token: pass --token, set FLOTILLA_ADMIN_TOKEN, or point --data-dir at the hub's data directory ({} is unreadable)", path.display()))?
            }
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client {
            base: access.hub_url().trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .map_err(|error| anyhow!("cannot reach the hub at {}: {error}", self.base))?;
        let status = response.status();
        let text = response.text()?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(text);
            bail!(
                "the hub refused {method} {path} (HTTP {}): {message}",
                status.as_u16()
            );
        }
        if text.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text)
            .with_context(|| format!("the hub answered {url} with invalid JSON"))
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(serde_json::from_value(self.call(
            reqwest::Method::GET,
            path,
            None,
        )?)?)
    }

    fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        Ok(serde_json::from_value(self.call(
            reqwest::Method::POST,
            path,
            body,
        )?)?)
    }
}

/// A Unix time as a local date-time (`2026-12-01 17:04:05 CET`).
fn local_time(unix: i64) -> String {
    match jiff::Timestamp::from_second(unix) {
        Ok(at) => at
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => unix.to_string(),
    }
}

/// A step of a job's timeline: its local time and how long after the job was queued.
fn since_queued(queued_at: i64, at: Option<i64>) -> String {
    match at {
        Some(at) => format!(
            "{}  (+{})",
            local_time(at),
            duration((at - queued_at).max(0))
        ),
        None => "-".into(),
    }
}

/// Seconds as `45s`, `3m 05s`, `2h 01m`.
fn duration(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn result_text(job: &JobView) -> &'static str {
    job.result.map(|result| result.as_str()).unwrap_or("-")
}

fn print_job(job: &JobView) {
    println!(
        "id:          {}\nname:        {}\nagent type:  {}",
        job.id, job.name, job.agent_type
    );
    println!(
        "state:       {}\nresult:      {}",
        job.state,
        result_text(job)
    );
    println!(
        "reason:      {}\nattempts:    {}\nagent:       {}",
        job.reason.as_deref().unwrap_or("-"),
        job.attempts,
        job.agent.as_deref().unwrap_or("-")
    );
    println!(
        "queued at:   {}\nassigned at: {}\nstarted at:  {}\nfinished at: {}",
        local_time(job.queued_at),
        since_queued(job.queued_at, job.assigned_at),
        since_queued(job.queued_at, job.started_at),
        since_queued(job.queued_at, job.finished_at)
    );
    println!(
        "log lines:   {}{}",
        job.log_lines,
        if job.log_trimmed { " (trimmed)" } else { "" }
    );
}

fn print_jobs(jobs: &[JobView]) {
    println!(
        "{:<36}  {:<10}  {:<8}  {:<10}  {:<8}  {:<23}  NAME",
        "ID", "STATE", "RESULT", "TYPE", "ATTEMPTS", "QUEUED"
    );
    for job in jobs {
        println!(
            "{:<36}  {:<10}  {:<8}  {:<10}  {:<8}  {:<23}  {}",
            job.id,
            job.state.to_string(),
            result_text(job),
            job.agent_type,
            job.attempts,
            local_time(job.queued_at),
            job.name
        );
    }
}

/// Prints a job's log from the start; with `follow`, until the job has finished.
fn print_logs(client: &Client, id: &str, follow: bool, raw: bool) -> Result<()> {
    let mut start_from = 0;
    let mut renderer = protocol::events::TextRenderer::default();
    let mut stdout = std::io::stdout().lock();
    loop {
        let wait = if follow { 20 } else { 0 };
        let page: LogPage = client.get(&format!(
            "/jobs/{id}/logs?start_from={start_from}&wait={wait}"
        ))?;
        for line in &page.lines {
            if raw {
                writeln!(stdout, "{line}")?;
            } else if let Ok(event) = serde_json::from_str::<LogEvent>(line) {
                stdout.write_all(renderer.render(&event).as_bytes())?;
            }
        }
        stdout.flush()?;
        start_from = page.next_start_from;
        if !follow || (page.job_finished && page.lines.is_empty()) {
            return Ok(());
        }
    }
}

/// `jobs submit`: prints the id, or with `follow` the log, and exits 0 only if the job passed.
fn submit(client: &Client, spec: JobSpec, follow: bool) -> Result<i32> {
    let job: JobView = client.post("/jobs", Some(serde_json::to_value(&spec)?))?;
    if !follow {
        println!("{}", job.id);
        return Ok(0);
    }
    eprintln!("job {} queued", job.id);
    print_logs(client, &job.id, true, false)?;
    let job: JobView = client.get(&format!("/jobs/{}", job.id))?;
    Ok(if job.result == Some(protocol::JobResult::Passed) {
        0
    } else {
        1
    })
}

pub(crate) fn jobs(access: &HubAccess, command: JobsCommand) -> Result<i32> {
    let client = Client::new(access)?;
    match command {
        JobsCommand::Submit {
            file,
            commands,
            agent_type,
            follow,
        } => {
            let spec = match (file, commands.is_empty()) {
                (Some(file), _) => super::load_job_spec(&file)?,
                (None, false) => JobSpec::from_commands(&agent_type, &commands),
                (None, true) => bail!("give a job spec file or at least one --command"),
            };
            submit(&client, spec, follow)
        }
        JobsCommand::List { state, limit } => {
            let query = match state {
                Some(state) => format!("/jobs?state={state}&limit={limit}"),
                None => format!("/jobs?limit={limit}"),
            };
            print_jobs(&client.get::<Vec<JobView>>(&query)?);
            Ok(0)
        }
        JobsCommand::Show { id } => {
            print_job(&client.get(&format!("/jobs/{id}"))?);
            Ok(0)
        }
        JobsCommand::Logs { id, follow, raw } => {
            print_logs(&client, &id, follow, raw)?;
            Ok(0)
        }
        JobsCommand::Stop { id } => {
            let job: JobView = client.post(&format!("/jobs/{id}/stop"), None)?;
            println!("{} {}", job.id, job.state);
            Ok(0)
        }
    }
}

pub(crate) fn agent_types(access: &HubAccess, command: AgentTypesCommand) -> Result<i32> {
    let client = Client::new(access)?;
    match command {
        AgentTypesCommand::Create {
            name,
            rule,
            execution_time_limit,
        } => {
            let request = NewAgentType {
                name: name.clone(),
                identity: rule.policy(),
                execution_time_limit,
            };
            let created: CreatedAgentType =
                client.post("/agent_types", Some(serde_json::to_value(&request)?))?;
            println!("{}", created.registration_token);
            eprintln!(
                "agent type '{name}' created; the registration token above is shown only once"
            );
        }
        AgentTypesCommand::List => {
            let types: Vec<AgentTypeView> = client.get("/agent_types")?;
            println!("{:<24}  REGISTRATION RULE", "NAME");
            for agent_type in types {
                println!(
                    "{:<24}  {}",
                    agent_type.name,
                    rule_text(&agent_type.identity)
                );
            }
        }
    }
    Ok(0)
}

/// An agent type's registration rule in one line.
fn rule_text(policy: &IdentityPolicy) -> String {
    let mut parts = Vec::new();
    if policy.require_instance_identity {
        let regions = match policy.allowed_regions.is_empty() {
            true => "any region".to_string(),
            false => format!("regions {}", policy.allowed_regions.join(",")),
        };
        parts.push(format!(
            "instance identity of accounts {} ({regions})",
            policy.allowed_accounts.join(",")
        ));
    }
    if policy.single_job_only() {
        parts.push("single-job agents only".to_string());
    }
    match parts.is_empty() {
        true => "-".to_string(),
        false => parts.join("; "),
    }
}

pub(crate) fn agents(access: &HubAccess, command: AgentsCommand) -> Result<i32> {
    let client = Client::new(access)?;
    match command {
        AgentsCommand::List => {
            let agents: Vec<AgentView> = client.get("/agents")?;
            println!(
                "{:<32}  {:<10}  {:<18}  {:<36}  HOST",
                "NAME", "TYPE", "STATE", "JOB"
            );
            for agent in agents {
                let gpus = match agent.gpus.first() {
                    Some(first) => format!("{} x {}", agent.gpus.len(), first.name),
                    None => "-".to_string(),
                };
                println!(
                    "{:<32}  {:<10}  {:<18}  {:<36}  {:<24}  {}",
                    agent.name,
                    agent.agent_type,
                    agent.state,
                    agent.job_id.as_deref().unwrap_or("-"),
                    gpus,
                    agent.hostname
                );
            }
        }
        AgentsCommand::Shutdown { name } => {
            client.call(
                reqwest::Method::POST,
                &format!("/agents/{name}/shutdown"),
                None,
            )?;
            println!("{name} will shut down at its next sync");
        }
    }
    Ok(0)
}
