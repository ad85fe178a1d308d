use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use cloudy_agent::kinds::streaming;
use cloudy_agent::os::{network, system::System};
use cloudy_agent::{control, daemon, dashboard, status};
use cloudy_model::{kinds, seed};

/// The Cloudy node agent: applies the seed and brings the node into its microcloud.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Root of the node's filesystem; tests run several agents side by side with their own.
    /// Hidden: on a node it is always `/`.
    #[arg(
        long,
        global = true,
        default_value = "/",
        env = "CLOUDY_ROOT",
        hide = true
    )]
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
        /// Only this service type (e.g. syncthing).
        #[arg(long = "type")]
        kind: Option<String>,
        /// One JSON array of the probes instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The best provider of a service type for this node, and why.
    Select {
        /// The service type (tahoe-introducer, tahoe-storage, syncthing, streaming, ...).
        kind: String,
        /// The choice and the ranking as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Rate a provider you used, 1-5 stars: signed by this node and shared with the members;
    /// once 3 nodes rated a provider, `select` and `join` weigh it in (README, "Ratings").
    Rate {
        /// The service type (syncthing, tahoe-introducer, streaming, ...).
        kind: String,
        /// The provider as `select` names it (`node:port`), or its node name or id.
        provider: String,
        /// 1 (bad) to 5 (very good).
        #[arg(value_parser = clap::value_parser!(u8).range(1..=5))]
        stars: u8,
        /// A short comment for other users (at most 280 characters, one line).
        #[arg(long)]
        comment: Option<String>,
    },
    /// The web dashboard (the agent starts it as user cloudy-web; reads the password hash and
    /// the HTTPS certificate on stdin and talks to the agent's control socket).
    Dashboard {
        /// The plain-HTTP port (the seed's `[dashboard] port`): it only redirects to HTTPS.
        #[arg(long, default_value_t = seed::DEFAULT_DASHBOARD_PORT)]
        port: u16,
        /// The HTTPS port (the seed's `[dashboard] https_port`): the dashboard itself.
        #[arg(long, default_value_t = seed::DEFAULT_DASHBOARD_HTTPS_PORT)]
        https_port: u16,
        /// The HTTPS port of the services' own web UIs, `/ui/<service>/` (the seed's
        /// `[dashboard] ui_port`, default https_port + 1): same certificate and login, another
        /// origin than the dashboard's, so a UI's scripts cannot read the dashboard's answers.
        #[arg(long, default_value_t = seed::DEFAULT_DASHBOARD_HTTPS_PORT + 1)]
        ui_port: u16,
    },
    /// Make an invitation: a short token that lets a new node join this node's community
    /// once (it fetches the community key over the exchange port); shown once, stored only as
    /// a hash. Needs `cloudy-agent run` running.
    Invite {
        /// Only a node of this name may use it.
        #[arg(long)]
        name: Option<String>,
        /// How long it stays valid: 90s, 30m, 24h or 7d (at most 30 days).
        #[arg(long, default_value = "24h")]
        expires: String,
        /// How many nodes may use it (a PXE bundle takes only 1).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Print a seed snippet (`[community] name = ..., invite = "..."`) instead of the token.
        #[arg(long)]
        seed: bool,
        /// List the outstanding invitations (ids, expiry, uses left) instead of making one.
        #[arg(long, conflicts_with_all = ["name", "seed", "revoke"])]
        list: bool,
        /// Revoke the invitation with this id instead of making one.
        #[arg(long, conflicts_with_all = ["name", "seed"])]
        revoke: Option<String>,
    },
    /// Approve pending nodes: nodes whose seed names this community but holds no key announce
    /// themselves on the LAN and show a fingerprint on their console; each one named here is
    /// sent the community key, sealed to its node key. Compare the fingerprint first: anyone on
    /// the LAN can announce a node. Needs `cloudy-agent run` running.
    Approve {
        /// Fingerprints of the nodes to approve, as their consoles show them (ABCD-EFGH-IJKL-MNOP;
        /// any case, dashes optional). `cloudy-agent pending` lists them.
        #[arg(required = true, num_args = 1..=64)]
        fingerprints: Vec<String>,
    },
    /// Replace the community key on every member reachable now. Members that are away get the
    /// new key from any member when they come back; members named with --remove leave the
    /// community and never get it. Needs `cloudy-agent run` running.
    Rekey {
        /// Remove this member (node name or node id) from the community first; repeatable.
        #[arg(long, value_name = "NODE")]
        remove: Vec<String>,
    },
    /// List the pending nodes of this community heard on the LAN (fingerprint, address, since),
    /// to approve with `cloudy-agent approve`. Needs `cloudy-agent run` running.
    Pending {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what the last run recorded: the node, its seed problems, the member list and the
    /// state of each service (running/starting/failed/stopped, pid, restarts, last error),
    /// and where the node's state is kept (a live node without a data disk forgets it).
    Status {
        /// Print the node, its seed and where its state is kept as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Use a service another node provides: `tahoe-lafs` makes this node a client of that
    /// grid, `syncthing` shares a folder with the provider, `streaming` relays the provider's
    /// live stream (and serves it on here). Needs `cloudy-agent run` running.
    Join {
        /// What to join: tahoe-lafs (or tahoe-introducer), syncthing or streaming.
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
    /// Signed A/B updates of this node: what runs, what is offered, when it installs. Works
    /// without a running agent too (then `check` and `now` ask only the seed's `[update] url`).
    Update {
        #[command(subcommand)]
        what: UpdateCommand,
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
        /// This node's name, announced with the stream.
        #[arg(long)]
        node: String,
        /// This node's id, announced as the stream's origin or relay.
        #[arg(long)]
        node_id: String,
        /// The HTTP port the stream is served on.
        #[arg(long)]
        port: Option<u16>,
        /// A file or URL ffmpeg ingests (this node is the stream's source).
        #[arg(long)]
        source: Option<String>,
        /// The stream's id.
        #[arg(long)]
        id: Option<String>,
        /// The provider to relay the stream from (this node is a relay).
        #[arg(long)]
        provider: Option<String>,
    },
    /// Network actions run by tinc-up (internal: tincd calls it, users never need it).
    #[command(hide = true)]
    Net {
        #[command(subcommand)]
        command: NetCommand,
    },
}

#[derive(Subcommand)]
enum NetCommand {
    /// Bring the VPN interface up with its address (ADDRESS/PREFIX).
    Up {
        /// The VPN interface tincd made (e.g. cloudy).
        interface: String,
        /// This node's VPN address, ADDRESS/PREFIX.
        address: String,
        /// The interface's MAC address (tinc's switch mode).
        #[arg(long)]
        mac: Option<String>,
    },
}

#[derive(Subcommand)]
enum UpdateCommand {
    /// The running release, the update held and when it installs, the last check's outcome,
    /// and a fallback to the old version if the last update did not come up.
    Status {
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Fetch manifests now (the seed's url and every member), verify them, fetch and verify
    /// the bundle offered; say what is offered or why it is refused. Installs nothing.
    Check {
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Check, then install the verified update at once (skipping this node's wait in the
    /// rollout window) and reboot into it, unless a join is running.
    Now {
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SeedCommand {
    /// Validate a seed file; names the key, the problem and the fix.
    Check {
        /// The seed to check (cloudy.toml).
        file: PathBuf,
    },
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
    let cli = parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cloudy-agent: {}", error_text(&e));
            1
        }
    };
    std::process::exit(code);
}

/// The command line; a mistyped command is never answered with a hidden one (`stream` is
/// the agent's own, not for users), which clap would otherwise suggest.
fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command();
    let e = match cmd.try_get_matches_from_mut(args) {
        Ok(m) => return Cli::from_arg_matches(&m),
        Err(e) => e,
    };
    let hidden: Vec<String> = cmd
        .get_subcommands()
        .filter(|c| c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect();
    let suggested: Vec<String> = match e.get(ContextKind::SuggestedSubcommand) {
        Some(ContextValue::String(s)) => vec![s.clone()],
        Some(ContextValue::Strings(v)) => v.clone(),
        _ => Vec::new(),
    };
    if e.kind() != ErrorKind::InvalidSubcommand || !suggested.iter().any(|s| hidden.contains(s)) {
        return Err(e);
    }
    let mut plain = clap::Error::new(ErrorKind::InvalidSubcommand).with_cmd(&cmd);
    for kind in [ContextKind::InvalidSubcommand, ContextKind::Usage] {
        if let Some(v) = e.get(kind) {
            plain.insert(kind, v.clone());
        }
    }
    let shown: Vec<String> = suggested
        .into_iter()
        .filter(|s| !hidden.contains(s))
        .collect();
    if !shown.is_empty() {
        plain.insert(
            ContextKind::SuggestedSubcommand,
            ContextValue::Strings(shown),
        );
    }
    Err(plain)
}

/// An error and its causes on one line, each said once: our errors often carry the I/O error
/// in their own text too, and `{:#}` would print it a second time.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !out.contains(&cause) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&cause);
        }
    }
    out
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
        // Any name of a kind (`tahoe-lafs`) means the kind's own, as in the seed and `join`.
        Command::Scan { kind, json } => {
            control::cli::scan(&sys, kind.as_deref().map(kinds::canonical), json)
        }
        Command::Select { kind, json } => control::cli::select(&sys, kinds::canonical(&kind), json),
        Command::Rate {
            kind,
            provider,
            stars,
            comment,
        } => control::cli::rate(
            &sys,
            kinds::canonical(&kind),
            &provider,
            stars,
            comment.as_deref(),
        ),
        Command::Dashboard {
            port,
            https_port,
            ui_port,
        } => serve_dashboard(&sys, port, https_port, ui_port),
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
        Command::Status { json: false } => status::print(&sys, &control::cli::agent_line(&sys)),
        Command::Status { json: true } => status::json(&sys),
        Command::Update { what } => {
            use control::UpdateAction as A;
            let (action, json) = match what {
                UpdateCommand::Status { json } => (A::Status, json),
                UpdateCommand::Check { json } => (A::Check, json),
                UpdateCommand::Now { json } => (A::Now, json),
            };
            control::cli::update(&sys, action, json)
        }
        Command::Approve { fingerprints } => control::cli::approve(&sys, &fingerprints),
        Command::Pending { json } => control::cli::pending(&sys, json),
        Command::Rekey { remove } => control::cli::rekey(&sys, &remove),
        Command::Invite {
            name,
            expires,
            uses,
            seed,
            list,
            revoke,
        } => {
            let what = if list {
                control::cli::InviteOp::List
            } else if let Some(id) = revoke {
                control::cli::InviteOp::Revoke(id)
            } else {
                control::cli::InviteOp::Make {
                    name,
                    expires,
                    uses,
                    seed,
                }
            };
            control::cli::invite(&sys, what)
        }
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
        Command::Services { kind, json } => {
            let catalog = sys.path(cloudy_agent::catalog::CATALOG_FILE);
            if !catalog.exists() {
                eprintln!("cloudy-agent: {}", control::cli::no_catalog(&sys, &catalog));
                return Ok(1);
            }
            status::services(&sys, kind.as_deref().map(kinds::canonical), json)
        }
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
    // Section by section, as a node reads it: every bad section is named at once, not one per
    // run, and the user learns that the node would still apply the others.
    match seed::read_sections(file) {
        Ok(partial) if partial.errors.is_empty() => {
            for w in partial.seed.warnings() {
                eprintln!("{}: warning: {w}", file.display());
            }
            println!("{}: ok", file.display());
            Ok(0)
        }
        Ok(partial) => {
            for e in &partial.errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} bad section(s): [{}]; a node would leave them out (the image's defaults \
                 stand for them) and apply the rest",
                file.display(),
                partial.skipped.len(),
                partial.skipped.join("], [")
            );
            Ok(1)
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
fn serve_dashboard(sys: &System, port: u16, https_port: u16, ui_port: u16) -> Result<i32> {
    let handover =
        dashboard::Handover::read(std::io::stdin().lock()).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ports = dashboard::Ports {
        http: port,
        https: https_port,
        ui: ui_port,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument, option and subcommand of `cmd` and below without help text, as
    /// `path: name`.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        let here = format!("{path} {}", cmd.get_name()).trim().to_string();
        for a in cmd.get_arguments() {
            if a.get_help().is_none() && a.get_long_help().is_none() {
                out.push(format!("{here}: {}", a.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                out.push(format!("{here}: subcommand {}", sub.get_name()));
            }
            undocumented(sub, &here, out);
        }
    }

    /// At 2293e0e `scan --type/--json`, `select <KIND>`, `seed check <FILE>`,
    /// `dashboard --port`, `net up`'s arguments and the hidden `stream`'s options had no help.
    #[test]
    fn every_argument_option_and_subcommand_has_help() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        undocumented(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    /// At 2293e0e `--root` (for tests) was in every command's help.
    #[test]
    fn root_is_hidden_from_users() {
        let mut cmd = Cli::command();
        let help = cmd.render_long_help().to_string();
        assert!(!help.contains("--root"), "{help}");
        let mut cmd = Cli::command();
        cmd.build();
        let status = cmd.find_subcommand_mut("status").unwrap();
        assert!(!status.render_long_help().to_string().contains("--root"));
        // still there for the tests
        let cli = parse(["cloudy-agent", "--root", "/tmp/x", "status"]).unwrap();
        assert_eq!(cli.root, PathBuf::from("/tmp/x"));
    }

    /// At 2293e0e `cloudy-agent strem` answered "a similar subcommand exists: 'stream'", the
    /// hidden command the agent runs for itself.
    #[test]
    fn a_typo_never_suggests_the_hidden_stream() {
        for typo in ["strem", "streem", "stream2", "stat"] {
            let err = match parse(["cloudy-agent", typo]) {
                Ok(_) => panic!("{typo} parsed"),
                Err(e) => e.render().to_string(),
            };
            assert!(err.contains("unrecognized subcommand"), "{err}");
            assert!(!err.contains("'stream'"), "{typo}: {err}");
        }
        let err = parse(["cloudy-agent", "statu"])
            .err()
            .unwrap()
            .render()
            .to_string();
        assert!(
            err.contains("'status'"),
            "visible commands are still suggested: {err}"
        );
        // the hidden command itself still works
        assert!(parse(["cloudy-agent", "stream", "--node", "a", "--node-id", "b"]).is_ok());
    }

    /// At 2293e0e errors whose text already held the I/O error printed it twice ("...: No such
    /// file or directory (os error 2): No such file or directory (os error 2)").
    #[test]
    fn an_error_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading {path}: {source}")]
        struct Read {
            path: String,
            source: std::io::Error,
        }
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(Read {
            path: "/x".into(),
            source: io,
        })
        .context("loading the seed");
        let text = error_text(&e);
        assert_eq!(text.matches("entity not found").count(), 1, "{text}");
        assert!(text.starts_with("loading the seed: reading /x: "), "{text}");
    }
}
