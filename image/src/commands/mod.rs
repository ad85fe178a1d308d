//! The user's commands: the command line, and where each command goes. One module per command
//! (`build`, `verify`, `boot`, `customise`, `keys`, `bundle`, `sign`); `boards` is a listing and
//! lives here.

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

use crate::board;
use crate::progress;
use crate::qemu::{Accel, Boot};
use crate::stages::agent::Builder;

pub mod boot;
pub mod build;
pub mod bundle;
pub mod customise;
pub mod keys;
pub mod options;
pub mod sign;
pub mod verify;

pub use options::{board_dir, iso_path, Options};

/// Builds Cloudy community-cloud images from a recipe and a board, and boots them in QEMU.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Boards are the files in hardware/; `cloudy-image boards` lists them.\nExample: cloudy-image build --board pc-686-pae"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image and (unless --no-verify) boot it in QEMU until the node reports ready.
    Build {
        #[command(flatten)]
        common: Common,
        /// The recipe: what goes into the image.
        #[arg(long, default_value = "recipes/cloudy.toml")]
        recipe: PathBuf,
        /// Skip the QEMU boot check.
        #[arg(long)]
        no_verify: bool,
        /// Firmware QEMU boots the image with in the verify stage.
        #[arg(long, value_enum, default_value = "bios")]
        firmware: Boot,
        /// How the agent is cross-built.
        #[arg(long, value_enum, default_value = "debian")]
        agent_builder: Builder,
        /// Remake the base squashfs instead of reusing it from the cache.
        #[arg(long)]
        rebuild: bool,
        /// The release version written into the image (/usr/lib/cloudy/release.json),
        /// instead of the recipe's `[update] release`.
        #[arg(long, value_name = "VERSION")]
        release_version: Option<String>,
    },
    /// Open a built ISO in QEMU with its serial console (and a root shell) in this terminal;
    /// ISO boards only (`verify` boots SD and PXE boards).
    Boot {
        #[command(flatten)]
        common: Common,
    },
    /// Boot a built image in QEMU until the node reports ready, and print its ready line.
    Verify {
        #[command(flatten)]
        common: Common,
        /// The image to boot (default: the board's last build under --out).
        #[arg(long)]
        image: Option<PathBuf>,
        /// Firmware QEMU boots the image with (uefi: the OVMF UEFI firmware, PC boards).
        #[arg(long, value_enum, default_value = "bios")]
        firmware: Boot,
        /// PXE boards: install to a blank disk over the network, then boot that disk alone.
        #[arg(long)]
        install: bool,
    },
    /// Write, show or remove the seed in a built image (ISO, .img or .img.xz) without rebuilding it.
    #[command(group(clap::ArgGroup::new("action").required(true).args(["seed", "show", "remove_seed", "invite"])))]
    Customise {
        /// The Cloudy image to change; anything else is refused and left as it was. Replaced
        /// atomically unless -o is given; SHA256SUMS beside it is updated.
        image: PathBuf,
        /// The seed (cloudy.toml) to write; checked first, a bad one changes nothing.
        #[arg(long, value_name = "FILE")]
        seed: Option<PathBuf>,
        /// Print the seed inside the image, its secrets (community key, password hash, psk) hidden.
        #[arg(long, conflicts_with = "out")]
        show: bool,
        /// Remove the seed from the image: the node boots with the image's defaults.
        #[arg(long)]
        remove_seed: bool,
        /// Put an invitation (`cloudy-agent invite` on a member) into the image's seed in place
        /// of a key: the node redeems it at first boot. The rest of the seed inside is kept.
        #[arg(long, value_name = "TOKEN", conflicts_with_all = ["seed", "show", "remove_seed"])]
        invite: Option<String>,
        /// With --invite: the community's name, when the seed inside names none.
        #[arg(long, value_name = "NAME", requires = "invite")]
        community: Option<String>,
        /// Write the result to OUT (complete, under a temporary name until done) and leave IMAGE as it is.
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        out: Option<PathBuf>,
    },
    /// Make a key for signing releases (README "Updates"): an update key (ed25519) by default,
    /// or with --rauc RAUC's bundle-signing key and certificate. Never overwrites a file.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Build a signed update bundle for installed nodes of a board (RAUC, A/B slots) and its
    /// manifest, in OUT/update/ (servable as the seed's [update] url).
    Bundle {
        #[command(flatten)]
        common: Common,
        /// The recipe: what goes into the image (its [update] release is the bundle's version).
        #[arg(long, default_value = "recipes/cloudy.toml")]
        recipe: PathBuf,
        /// The bundle's release version instead of the recipe's `[update] release`.
        #[arg(long, value_name = "VERSION")]
        release_version: Option<String>,
        /// RAUC's signing key (NAME.key.pem from `keys new --rauc`).
        #[arg(long, value_name = "FILE")]
        rauc_key: PathBuf,
        /// RAUC's certificate of that key (NAME.cert.pem; the recipe's [update] rauc_keyring).
        #[arg(long, value_name = "FILE")]
        rauc_cert: PathBuf,
        /// An update key (NAME.key from `keys new`) to sign the manifest with; repeat for
        /// several. Others can add theirs later with `cloudy-image sign`.
        #[arg(long = "key", value_name = "FILE")]
        keys: Vec<PathBuf>,
        /// The channel nodes must follow to take it.
        #[arg(long, value_enum, default_value = "stable")]
        channel: ChannelArg,
        /// The earliest running release this bundle may update (default: the release before,
        /// e.g. 1.0.0 for 1.0.1).
        #[arg(long, value_name = "VERSION")]
        min_version: Option<String>,
        /// How the agent is cross-built.
        #[arg(long, value_enum, default_value = "debian")]
        agent_builder: Builder,
    },
    /// Add your signature to a bundle's manifest (K of the community's N keys must sign it).
    Sign {
        /// Your update key's secret file (NAME.key from `keys new`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The manifest (<board>.manifest.json beside the bundle); replaced atomically.
        manifest: PathBuf,
    },
    /// List the boards in hardware/.
    Boards {
        /// The checkout holding hardware/ (default: found from the current directory).
        #[arg(long)]
        source: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Make a new key in --out: NAME.key (secret, 0600) and NAME.pub, or with --rauc
    /// NAME.key.pem (secret, 0600) and NAME.cert.pem.
    New {
        /// Directory for the key files (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The files' base name (default: "update", or "rauc" with --rauc).
        #[arg(long)]
        name: Option<String>,
        /// Make RAUC's bundle-signing key and self-signed certificate instead.
        #[arg(long)]
        rauc: bool,
    },
}

/// A bundle's channel (`[update] channel` in a node's seed).
#[derive(Clone, Copy, clap::ValueEnum)]
enum ChannelArg {
    Stable,
    Testing,
}

#[derive(Args)]
struct Common {
    /// Board name (a file in hardware/).
    #[arg(long, default_value = "pc-686-pae")]
    board: String,
    /// Output directory; the image lands in OUT/<board>/.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Cache of bootstrapped root filesystems and toolchain pieces.
    #[arg(long, env = "CLOUDY_CACHE")]
    cache: Option<PathBuf>,
    /// The checkout holding hardware/, overlay/ and agent/ (default: found from the current directory).
    #[arg(long)]
    source: Option<PathBuf>,
    /// QEMU accelerator. KVM only where a test boot proved it runs Debian kernels.
    #[arg(long, value_enum, default_value = "tcg")]
    accel: Accel,
}

/// An error and its causes on one line, each said once: many errors here carry the I/O
/// error in their own text too, and `{:#}` would print it a second time.
pub fn error_text(e: &anyhow::Error) -> String {
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

/// Runs one command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build {
            common,
            recipe,
            no_verify,
            firmware,
            agent_builder,
            rebuild,
            release_version,
        } => {
            let mut opts = options(common, recipe, !no_verify, firmware, agent_builder, rebuild)?;
            opts.release = release_version;
            build::run(&opts)?;
        }
        Command::Boot { common } => boot::run(&default_options(common, Boot::Bios)?)?,
        Command::Verify {
            common,
            image,
            firmware,
            install,
        } => {
            let opts = default_options(common, firmware)?;
            if install {
                verify::install(&opts, image)?;
            } else {
                verify::run(&opts, image)?;
            }
        }
        Command::Customise {
            image,
            seed,
            show,
            remove_seed: _,
            invite,
            community,
            out,
        } => match (seed, show) {
            _ if invite.is_some() => customise::run_invite(
                &image,
                invite.as_deref().unwrap_or_default(),
                community.as_deref(),
                out.as_deref(),
            )?,
            (_, true) => customise::show(&image)?,
            (Some(seed), false) => {
                customise::run(&image, customise::Edit::Write(&seed), out.as_deref())?
            }
            // the "action" group: the only other choice is --remove-seed
            (None, false) => customise::run(&image, customise::Edit::Remove, out.as_deref())?,
        },
        Command::Keys {
            action: KeysAction::New { out, name, rauc },
        } => keys::run(&out, name.as_deref(), rauc)?,
        Command::Bundle {
            common,
            recipe,
            release_version,
            rauc_key,
            rauc_cert,
            keys,
            channel,
            min_version,
            agent_builder,
        } => {
            let mut opts = options(common, recipe, false, Boot::Bios, agent_builder, false)?;
            opts.release = release_version;
            let req = bundle::Request {
                rauc_key,
                rauc_cert,
                keys,
                channel: match channel {
                    ChannelArg::Stable => cloudy_model::update::Channel::Stable,
                    ChannelArg::Testing => cloudy_model::update::Channel::Testing,
                },
                min_version,
            };
            bundle::run(&opts, &req)?;
        }
        Command::Sign { key, manifest } => sign::run(&key, &manifest)?,
        Command::Boards { source } => boards(source)?,
    }
    Ok(())
}

fn boards(source: Option<PathBuf>) -> Result<()> {
    let source = find_source(source)?;
    let rows: Vec<Vec<String>> = board::list(&source.join("hardware"))
        .into_iter()
        .map(|n| match board::Board::find(&source.join("hardware"), &n) {
            Ok((b, _, _)) => vec![
                n,
                b.arch.debian().to_string(),
                format!("{:?}", b.format).to_lowercase(),
                b.description,
            ],
            Err(e) => vec![n, "?".into(), "?".into(), format!("invalid: {e}")],
        })
        .collect();
    print!(
        "{}",
        progress::table(&["board", "arch", "format", "description"], &rows)
    );
    Ok(())
}

/// Options of the commands that only boot what a build made (the default recipe, for its
/// verify timeout).
fn default_options(common: Common, boot: Boot) -> Result<Options> {
    let recipe = PathBuf::from("recipes/cloudy.toml");
    options(common, recipe, true, boot, Builder::Debian, false)
}

fn options(
    c: Common,
    recipe: PathBuf,
    verify: bool,
    boot: Boot,
    agent_builder: Builder,
    rebuild: bool,
) -> Result<Options> {
    let source = find_source(c.source)?;
    let recipe = if recipe.is_relative() && !recipe.exists() {
        source.join(&recipe)
    } else {
        recipe
    };
    let cache = c.cache.unwrap_or_else(default_cache);
    Ok(Options {
        board: c.board,
        recipe,
        out: c.out,
        cache,
        source,
        verify,
        accel: c.accel,
        boot,
        agent_builder,
        rebuild,
        release: None,
    })
}

fn default_cache() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/cache/cloudy-image")
    } else {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
            })
            .join("cloudy-image")
    }
}

/// The checkout is the nearest directory up from here with hardware/ and agent/.
fn find_source(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(s) = given {
        return Ok(std::fs::canonicalize(&s)?);
    }
    let cwd = std::env::current_dir()?;
    let mut p: &Path = &cwd;
    loop {
        if p.join("hardware").is_dir() && p.join("agent/Cargo.toml").exists() {
            return Ok(p.to_path_buf());
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => bail!("not inside a Cloudy checkout (no hardware/ and agent/ above {})\n  fix: run from the checkout or pass --source", cwd.display()),
        }
    }
}
