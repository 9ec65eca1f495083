//! The `scaler` command: `up` (hub + local fleet + control loop on one machine), `run` (the
//! scaling service), `hub` (serve the hub), and `jobs` / `agent-types` / `agents` (its user API).
//! `deploy` / `status` / `destroy` (a fleet's or a hub's CloudFormation stack) and `simulate`.

mod aws;
mod cmd;
mod logging;

use cmd::{client, deploy, hub, preflight, run, simulate, up, HubAccess};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "scaler",
    version,
    about = "Flotilla: a self-hosted CI queue and the autoscaler for its fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run everything on this machine: the hub, a local fleet of agents and the control loop.
    Up(up::UpArgs),
    /// Serve the hub: the agent protocol, log intake, metrics and the user API.
    Hub(Box<hub::HubCommand>),
    /// Run the scaling service from a config file (one control loop per fleet).
    Run(run::RunArgs),
    /// Create or update a fleet's (or, with --template hub, a hub's) CloudFormation stack (the
    /// templates are built in).
    Deploy(deploy::DeployArgs),
    /// Check a fleet's quotas, instance offerings, spot outlook, image, network and prices before
    /// `deploy` (which runs the same checks first); each finding says what to do.
    Preflight(preflight::PreflightArgs),
    /// A deployed fleet: stack, pools, queue, recent scaling activity, outputs.
    Status(deploy::StackArgs),
    /// Delete a fleet's or a hub's stack (and the token parameter deploy created for a fleet).
    Destroy(deploy::DestroyArgs),
    /// Replay a job trace against the policy and the baselines on a virtual clock.
    Simulate(simulate::SimulateArgs),
    /// Submit, list, follow and stop jobs.
    Jobs {
        #[command(flatten)]
        access: HubAccess,
        #[command(subcommand)]
        command: client::JobsCommand,
    },
    /// Create and list agent types (each has its own registration token and queue).
    AgentTypes {
        #[command(flatten)]
        access: HubAccess,
        #[command(subcommand)]
        command: client::AgentTypesCommand,
    },
    /// List connected agents, or ask one to shut down.
    Agents {
        #[command(flatten)]
        access: HubAccess,
        #[command(subcommand)]
        command: client::AgentsCommand,
    },
}

fn main() {
    let cli = Cli::parse();
    let result: Result<i32> = match cli.command {
        Commands::Up(args) => up::run(args),
        Commands::Hub(args) => hub::run(*args),
        Commands::Run(args) => run::run(args),
        Commands::Simulate(args) => simulate::run(args),
        Commands::Deploy(args) => deploy::run(args),
        Commands::Preflight(args) => preflight::run(args),
        Commands::Status(args) => cmd::status::run(args),
        Commands::Destroy(args) => cmd::destroy::run(args),
        Commands::Jobs { access, command } => client::jobs(&access, command),
        Commands::AgentTypes { access, command } => client::agent_types(&access, command),
        Commands::Agents { access, command } => client::agents(&access, command),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("scaler: {error:#}");
            std::process::exit(1);
        }
    }
}
