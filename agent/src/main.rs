use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use cloudy_agent::{identity, ready, seed, system::System};

/// The Cloudy node agent: applies the seed and brings the node into its microcloud.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Root of the node's filesystem; tests run several agents side by side with their own.
    #[arg(long, global = true, default_value = "/", env = "CLOUDY_ROOT")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the seed to this node and print the ready line (what the boot unit runs).
    Run,
    /// Work with seed files.
    Seed {
        #[command(subcommand)]
        command: SeedCommand,
    },
}

#[derive(Subcommand)]
enum SeedCommand {
    /// Validate a seed file; names the key, the problem and the fix.
    Check { file: PathBuf },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLOUDY_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cloudy-agent: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Seed { command: SeedCommand::Check { file } } => match seed::read_file(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(0)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(1)
            }
        },
        Command::Run => boot(&System::new(cli.root)),
    }
}

fn boot(sys: &System) -> Result<i32> {
    let cmdline = if sys.is_live() {
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
    } else {
        String::new()
    };
    let loaded = seed::load(sys, &cmdline);
    for e in &loaded.errors {
        tracing::error!("seed: {e}");
    }
    let name = loaded.seed.node.name.clone().unwrap_or_else(|| identity::FALLBACK_NAME.to_string());
    identity::apply_hostname(sys, &name).context("applying the node's hostname")?;
    let line = ready::Ready {
        cloudy: "ready",
        version: env!("CARGO_PKG_VERSION"),
        hostname: if sys.is_live() { identity::kernel_hostname() } else { name.clone() },
        node: name,
        kernel: ready::kernel_release(),
        arch: std::env::consts::ARCH,
        seed: loaded.source.map(|p| p.display().to_string()),
        seed_errors: loaded.errors,
        uptime_s: ready::uptime_s(),
    }
    .line();
    println!("{line}");
    Ok(0)
}
