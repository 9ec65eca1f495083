//! The `scaler` command. This part: `scaler hub` serves the hub; `scaler jobs`,
//! `scaler agent-types` and `scaler agents` drive its user API. (The control loop, fleets,
//! deploy and simulate come with their issues.)

mod client;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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

/// How a client command reaches the hub.
#[derive(clap::Args, Clone)]
pub struct HubAccess {
    /// The hub's URL.
    #[arg(
        long,
        env = "FLOTILLA_HUB_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub hub: String,
    /// The admin token (else read from <data-dir>/admin-token).
    #[arg(
        long,
        env = "FLOTILLA_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// The hub's data directory, to read the admin token from.
    #[arg(
        long,
        env = "FLOTILLA_DATA_DIR",
        default_value = "flotilla-data",
        global = true
    )]
    pub data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Commands {
    /// Serve the hub: the agent protocol, log intake, metrics and the user API.
    Hub(serve::HubArgs),
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
        Commands::Hub(args) => serve::run(args),
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
