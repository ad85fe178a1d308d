use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use cloudy_agent::kinds::streaming;
use cloudy_agent::os::{network, system::System};
use cloudy_agent::{control, daemon, dashboard, status};
use cloudy_model::seed;

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
    /// Apply the seed, print the ready line, then keep the node in its community's mesh (what
    /// the boot unit runs). Without a community in the seed it exits after the ready line.
    Run {
        /// Change links and addresses even though --root is not `/` (tests in a network namespace).
        #[arg(long, env = "CLOUDY_MANAGE_NETWORK")]
        manage_network: bool,
        /// The tinc 1.0 daemon to run.
        #[arg(long, default_value = "/usr/sbin/tincd", env = "CLOUDY_TINCD")]
        tincd: PathBuf,
        /// Apply the seed (keys and tinc config too) and print the ready line, then exit
        /// without starting tincd or the mesh.
        #[arg(long)]
        once: bool,
        /// Debian's serf agent, for finding services community-wide (skipped if missing).
        #[arg(long, default_value = "/usr/bin/serf", env = "CLOUDY_SERF")]
        serf: PathBuf,
    },
    /// The service catalog: every provider this node knows of, by type.
    Services {
        /// Only this service type (e.g. syncthing).
        #[arg(long = "type")]
        kind: Option<String>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Probe the quality of every provider (or one type's) from this node now.
    Scan {
        #[arg(long = "type")]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The best provider of a service type for this node, and why.
    Select {
        kind: String,
        #[arg(long)]
        json: bool,
    },
    /// The web dashboard (the agent starts it as user cloudy-web; reads the password hash and
    /// the HTTPS certificate on stdin and talks to the agent's control socket).
    Dashboard {
        /// Plain HTTP: redirects to the HTTPS port only.
        #[arg(long, default_value_t = seed::DEFAULT_DASHBOARD_PORT)]
        port: u16,
        #[arg(long, default_value_t = seed::DEFAULT_DASHBOARD_HTTPS_PORT)]
        https_port: u16,
    },
    /// Show what the last run recorded: the node, its seed problems, the member list and the
    /// state of each service (running/starting/failed/stopped, pid, restarts, last error).
    Status,
    /// Use a service another node provides: `tahoe-lafs` makes this node a client of that
    /// grid, `syncthing` shares a folder with the provider, `streaming` relays the provider's
    /// live stream (and serves it on here). Needs `cloudy-agent run` running.
    Join {
        /// tahoe-lafs, syncthing or streaming.
        kind: String,
        /// The provider's node name, node id (8+ digits) or IP; default: chosen from the catalog.
        provider: Option<String>,
        /// Syncthing: the folder to share (default /var/lib/cloudy/syncthing/shared).
        #[arg(long)]
        folder: Option<PathBuf>,
        /// Seconds to wait for the running agent to start the local side.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Work with seed files.
    Seed {
        #[command(subcommand)]
        command: SeedCommand,
    },
    /// The live stream of this node, as the agent runs it (see `[streaming]` in the seed):
    /// serves it over HTTP, ingesting it with ffmpeg (--source) or relaying it from a provider.
    #[command(hide = true)]
    Stream {
        #[arg(long)]
        node: String,
        #[arg(long)]
        node_id: String,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        provider: Option<String>,
    },
    /// Network actions run by tinc-up.
    Net {
        #[command(subcommand)]
        command: NetCommand,
    },
}

#[derive(Subcommand)]
enum NetCommand {
    /// Bring the VPN interface up with its address (ADDRESS/PREFIX).
    Up {
        interface: String,
        address: String,
        #[arg(long)]
        mac: Option<String>,
    },
}

#[derive(Subcommand)]
enum SeedCommand {
    /// Validate a seed file; names the key, the problem and the fix.
    Check { file: PathBuf },
    /// Read a password on stdin, print its Argon2 hash for `[dashboard] password_hash`.
    HashPassword,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLOUDY_LOG")
                .unwrap_or_else(|_| "info".into()),
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
    let sys = System::new(&cli.root);
    match cli.command {
        Command::Seed {
            command: SeedCommand::Check { file },
        } => seed_check(&file),
        Command::Seed {
            command: SeedCommand::HashPassword,
        } => hash_password(),
        Command::Scan { kind, json } => control::cli::scan(&sys, kind.as_deref(), json),
        Command::Select { kind, json } => control::cli::select(&sys, &kind, json),
        Command::Dashboard { port, https_port } => serve_dashboard(&sys, port, https_port),
        Command::Run {
            manage_network,
            tincd,
            once,
            serf,
        } => {
            let opts = daemon::Options {
                manage_network: manage_network || sys.is_live(),
                tincd,
                agent_exe: std::env::current_exe().context("finding our own executable")?,
                once,
                serf: Some(serf),
            };
            daemon::run(&sys, &opts)
        }
        Command::Status => status::print(&sys),
        Command::Stream {
            node,
            node_id,
            port,
            source,
            id,
            provider,
        } => {
            let config = streaming::Config {
                source,
                id,
                port,
                provider,
            };
            stream(sys, node, node_id, config)
        }
        Command::Join {
            kind,
            provider,
            folder,
            wait,
        } => cloudy_agent::registry::use_service::run(
            &sys,
            &kind,
            provider.as_deref(),
            folder,
            std::time::Duration::from_secs(wait),
        ),
        Command::Services { kind, json } => status::services(&sys, kind.as_deref(), json),
        Command::Net {
            command:
                NetCommand::Up {
                    interface,
                    address,
                    mac,
                },
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(network::vpn_up(&interface, &address, mac.as_deref()))
                .with_context(|| format!("bringing {interface} up with {address}"))?;
            Ok(0)
        }
    }
}

fn seed_check(file: &std::path::Path) -> Result<i32> {
    match seed::read_file(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            Ok(0)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(1)
        }
    }
}

fn hash_password() -> Result<i32> {
    let mut pw = String::new();
    std::io::stdin().read_line(&mut pw)?;
    let pw = pw.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!pw.is_empty(), "no password on stdin");
    println!("{}", cloudy_agent::os::identity::hash_password(pw));
    Ok(0)
}

/// The dashboard, as the unprivileged process the agent starts: the hash comes on stdin.
fn serve_dashboard(sys: &System, port: u16, https_port: u16) -> Result<i32> {
    let handover =
        dashboard::Handover::read(std::io::stdin().lock()).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ports = dashboard::Ports {
        http: port,
        https: https_port,
    };
    rt.block_on(dashboard::serve(ports, sys.path(control::SOCKET), handover))
        .context("serving the dashboard")?;
    Ok(0)
}

/// `cloudy-agent stream`: the stream process the agent supervises.
fn stream(sys: System, node: String, node_id: String, config: streaming::Config) -> Result<i32> {
    if let Err(e) = config.validate() {
        anyhow::bail!("{}: {}; fix: {}", e.key, e.problem, e.fix);
    }
    streaming::run_process(streaming::Options {
        catalog: streaming::catalog_file(&sys),
        sys,
        ffmpeg: streaming::ffmpeg(),
        node,
        node_id,
        config,
        user: None,
    })
    .map_err(anyhow::Error::msg)?;
    Ok(0)
}
