//! `scaler hub migrate|export|import`: operating a hub's store without serving it. `migrate`
//! brings a store to this binary's schema (replicas also migrate at start, once, under a lock; a
//! deploy pipeline runs it first to fail early). `export` writes a stopped hub's whole state as
//! JSON lines and `import` reads it into an empty store, so a SQLite hub moves to PostgreSQL
//! without losing jobs or logs (`hub::transfer` does the work; docs/operations.md has the steps).

use super::hub::DatabaseArgs;
use anyhow::{Context, Result};
use hub::store::{self, Durability, StoreLocation};
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub(crate) enum HubAdmin {
    /// Apply the store's schema migrations and print its version.
    Migrate(StoreArgs),
    /// Write a hub's state (agent types, agents, jobs, logs) as JSON lines. Stop the hub first.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// Where to write ('-': standard output).
        #[arg(long, default_value = "-")]
        output: PathBuf,
    },
    /// Read an export into an empty store (e.g. a new PostgreSQL database).
    Import {
        #[command(flatten)]
        store: StoreArgs,
        /// The export to read ('-': standard input).
        #[arg(long, default_value = "-")]
        input: PathBuf,
    },
}

/// Which store: PostgreSQL (`--database`) or SQLite in `--data-dir`.
#[derive(clap::Args)]
pub(crate) struct StoreArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The SQLite hub's data directory (without --database).
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = "flotilla-data")]
    pub data_dir: PathBuf,
}

impl StoreArgs {
    fn open(&self) -> Result<Box<dyn store::Store>> {
        let location = self.database.location(&self.data_dir);
        if let StoreLocation::Sqlite { data_dir } = &location {
            anyhow::ensure!(
                data_dir.join("hub.db").exists(),
                "no hub database in {} (give --data-dir, or --database for PostgreSQL)",
                data_dir.display()
            );
        }
        store::open(&location, Durability::Full).context("cannot open the hub's store")
    }
}

pub(crate) fn run(command: HubAdmin) -> Result<i32> {
    match command {
        HubAdmin::Migrate(args) => {
            let store = args.open()?;
            println!("schema version {}", store.schema_version()?);
        }
        HubAdmin::Export { store, output } => {
            let source = store.open()?;
            let counts = if output.as_os_str() == "-" {
                hub::transfer::export(source.as_ref(), &mut std::io::stdout().lock())?
            } else {
                let file = std::fs::File::create(&output)
                    .with_context(|| format!("cannot create {}", output.display()))?;
                hub::transfer::export(source.as_ref(), &mut BufWriter::new(file))?
            };
            eprintln!("exported {counts:?}");
        }
        HubAdmin::Import { store, input } => {
            let mut target = store.open()?;
            let counts = if input.as_os_str() == "-" {
                hub::transfer::import(target.as_mut(), &mut std::io::stdin().lock())?
            } else {
                let file = std::fs::File::open(&input)
                    .with_context(|| format!("cannot open {}", input.display()))?;
                hub::transfer::import(target.as_mut(), &mut BufReader::new(file))?
            };
            eprintln!("imported {counts:?}");
        }
    }
    Ok(0)
}
