//! The hub's user API from the command line: `scaler jobs`, `scaler agent-types`, `scaler agents`.

use crate::HubAccess;
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use hub::hub::{AgentView, JobView, LogPage};
use protocol::{JobSpec, LogEvent};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum JobsCommand {
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
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one job.
    Show { id: String },
    /// Print a job's log.
    Logs {
        id: String,
        /// Keep printing until the job finishes.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print the raw JSON events instead of text.
        #[arg(long)]
        raw: bool,
    },
    /// Stop a job (queued: at once; running: its agent stops it).
    Stop { id: String },
}

#[derive(Subcommand)]
pub enum AgentTypesCommand {
    /// Create an agent type and print its registration token (shown only once).
    Create {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
pub enum AgentsCommand {
    List,
    /// Ask an agent to shut down at its next sync (after its current job).
    Shutdown {
        name: String,
    },
}

struct Client {
    base: String,
    token: String,
    http: ureq::Agent,
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
        let http = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(90))
            .build();
        Ok(Client {
            base: access.hub.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let request = self
            .http
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token));
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match response {
            Ok(response) => {
                let text = response.into_string()?;
                if text.is_empty() {
                    return Ok(serde_json::Value::Null);
                }
                serde_json::from_str(&text)
                    .with_context(|| format!("the hub answered {url} with invalid JSON"))
            }
            Err(ureq::Error::Status(code, response)) => {
                let text = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or(text);
                Err(anyhow!(
                    "the hub refused {method} {path} (HTTP {code}): {message}"
                ))
            }
            Err(error) => Err(anyhow!("cannot reach the hub at {}: {error}", self.base)),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(serde_json::from_value(self.call("GET", path, None)?)?)
    }
}

fn parse_spec(file: &PathBuf) -> Result<JobSpec> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let spec: JobSpec = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid job spec", file.display()))?
    } else {
        serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a valid job spec", file.display()))?
    };
    spec.validate()
        .with_context(|| format!("{} is not a valid job spec", file.display()))?;
    Ok(spec)
}

fn time(value: Option<i64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn print_jobs(jobs: &[JobView]) {
    println!(
        "{:<36}  {:<10}  {:<8}  {:<10}  {:<8}  NAME",
        "ID", "STATE", "RESULT", "TYPE", "ATTEMPTS"
    );
    for job in jobs {
        println!(
            "{:<36}  {:<10}  {:<8}  {:<10}  {:<8}  {}",
            job.id,
            job.state,
            job.result.as_deref().unwrap_or("-"),
            job.agent_type,
            job.attempts,
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

pub fn jobs(access: &HubAccess, command: JobsCommand) -> Result<i32> {
    let client = Client::new(access)?;
    match command {
        JobsCommand::Submit {
            file,
            commands,
            agent_type,
            follow,
        } => {
            let spec = match (file, commands.is_empty()) {
                (Some(file), _) => parse_spec(&file)?,
                (None, false) => JobSpec::from_commands(&agent_type, &commands),
                (None, true) => bail!("give a job spec file or at least one --command"),
            };
            let job: JobView = serde_json::from_value(client.call(
                "POST",
                "/jobs",
                Some(serde_json::to_value(&spec)?),
            )?)?;
            if !follow {
                println!("{}", job.id);
                return Ok(0);
            }
            eprintln!("job {} queued", job.id);
            print_logs(&client, &job.id, true, false)?;
            let job: JobView = client.get(&format!("/jobs/{}", job.id))?;
            Ok(if job.result.as_deref() == Some("passed") {
                0
            } else {
                1
            })
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
            let job: JobView = client.get(&format!("/jobs/{id}"))?;
            println!("id:          {}\nname:        {}\nagent type:  {}\nstate:       {}\nresult:      {}", job.id, job.name, job.agent_type, job.state, job.result.as_deref().unwrap_or("-"));
            println!(
                "reason:      {}\nattempts:    {}\nagent:       {}",
                job.reason.as_deref().unwrap_or("-"),
                job.attempts,
                job.agent.as_deref().unwrap_or("-")
            );
            println!(
                "queued at:   {}\nassigned at: {}\nstarted at:  {}\nfinished at: {}",
                job.queued_at,
                time(job.assigned_at),
                time(job.started_at),
                time(job.finished_at)
            );
            println!(
                "log lines:   {}{}",
                job.log_lines,
                if job.log_trimmed { " (trimmed)" } else { "" }
            );
            Ok(0)
        }
        JobsCommand::Logs { id, follow, raw } => {
            print_logs(&client, &id, follow, raw)?;
            Ok(0)
        }
        JobsCommand::Stop { id } => {
            let job: JobView =
                serde_json::from_value(client.call("POST", &format!("/jobs/{id}/stop"), None)?)?;
            println!("{} {}", job.id, job.state);
            Ok(0)
        }
    }
}

pub fn agent_types(access: &HubAccess, command: AgentTypesCommand) -> Result<i32> {
    let client = Client::new(access)?;
    match command {
        AgentTypesCommand::Create { name } => {
            let created = client.call(
                "POST",
                "/agent_types",
                Some(serde_json::json!({ "name": name })),
            )?;
            println!(
                "{}",
                created["registration_token"].as_str().unwrap_or_default()
            );
            eprintln!(
                "agent type '{name}' created; the registration token above is shown only once"
            );
        }
        AgentTypesCommand::List => {
            let types: Vec<serde_json::Value> = client.get("/agent_types")?;
            for agent_type in types {
                println!("{}", agent_type["name"].as_str().unwrap_or_default());
            }
        }
    }
    Ok(0)
}

pub fn agents(access: &HubAccess, command: AgentsCommand) -> Result<i32> {
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
            client.call("POST", &format!("/agents/{name}/shutdown"), None)?;
            println!("{name} will shut down at its next sync");
        }
    }
    Ok(0)
}
