//! `cloudy-image build`: recipe + board -> bootstrap and agent (side by side) -> customise ->
//! the board's format (iso, pxe or sdcard) -> finish -> verify, each stage timed and shown,
//! ending in a summary table. The stages themselves are in [`crate::stages`].

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use super::options::{board_dir, iso_path, lock, Options};
use super::verify::vm_for;
use crate::board::{Board, Firmware, Format};
use crate::cmd::Log;
use crate::progress::{fmt_secs, fmt_size, table, Reporter};
use crate::qemu::Boot;
use crate::recipe::{Loaded, Recipe};
use crate::stages::agent::{self, Builder};
use crate::stages::{bootstrap, customise, finish, iso, pxe, release, sdcard, squashfs, verify};
use crate::{binfmt, bmap, cache, compress, tools};

/// A build needs room for the rootfs, its squashfs and the ISO.
const MIN_FREE: u64 = 3 << 30;

pub struct Built {
    pub image: PathBuf,
    pub manifest: finish::Manifest,
    pub verified: Option<verify::Outcome>,
}

/// What every stage of one build reads (also `bundle`'s, which stops after customise).
pub(super) struct Build<'a> {
    pub(super) opts: &'a Options,
    pub(super) board: Board,
    /// The board's file as read: hashed into the manifest and the disk id.
    board_text: String,
    pub(super) recipe: Loaded,
    /// OUT/<board>: the outputs.
    dir: PathBuf,
    /// OUT/<board>/work: intermediate files.
    pub(super) work: PathBuf,
    pub(super) log: Log,
    pub(super) rep: Reporter,
    /// Held for the whole build: one build per output directory.
    _lock: std::fs::File,
}

pub fn run(opts: &Options) -> Result<Built> {
    let started = std::time::Instant::now();
    let b = Build::start(opts)?;
    if b.board.is_foreign() {
        binfmt::ensure(b.board.arch)?;
    }
    let (rootfs, base_sq, agent) = b.rootfs_and_agent()?;
    let units = b.customise(&rootfs, &agent)?;
    let image = match b.board.format {
        Format::Iso => b.iso(&rootfs, &base_sq)?,
        Format::Pxe => b.pxe(&rootfs, &base_sq)?,
        Format::Sdcard => b.sdcard(&rootfs)?,
    };
    let outputs = b.finish(&image)?;
    let mut manifest = b.manifest(&rootfs, &agent, units, outputs);
    finish::write_manifest(&b.dir, &manifest).context("writing manifest.json")?;
    let verified = if opts.verify {
        Some(b.verify(&image)?)
    } else {
        None
    };
    manifest.stages = b.rep.times();
    finish::write_manifest(&b.dir, &manifest).context("writing manifest.json")?;
    print_summary(&manifest, &b.dir, started.elapsed().as_secs_f64());
    Ok(Built {
        image,
        manifest,
        verified,
    })
}

/// Refuses to start on a disk that cannot hold a build.
fn check_free_space(opts: &Options) -> Result<()> {
    for dir in [&opts.cache, &opts.out] {
        let free = cache::free_bytes(dir)
            .with_context(|| format!("checking free space on {}", dir.display()))?;
        if free < MIN_FREE {
            bail!(
                "only {} free on the disk holding {}; a build needs {}\n  fix: free space there or pass --cache/--out on a larger disk",
                fmt_size(free),
                dir.display(),
                fmt_size(MIN_FREE)
            );
        }
    }
    Ok(())
}

impl<'a> Build<'a> {
    /// Reads the board and the recipe and checks the host before anything is written.
    pub(super) fn start(opts: &'a Options) -> Result<Build<'a>> {
        let (board, _, board_text) = Board::find(&opts.source.join("hardware"), &opts.board)?;
        let recipe = Recipe::load(&opts.recipe)?;
        if let Some(v) = &opts.release {
            crate::recipe::check_release(v).map_err(|why| {
                anyhow::anyhow!("--release-version: {why}\n  fix: one to four dot-separated numbers, e.g. 1.0.1")
            })?;
        }
        // The recipe's seed is baked into every image; a PXE bundle's goes to the whole LAN.
        if board.format == Format::Pxe {
            crate::seed::check_for_lan(&recipe.path.display().to_string(), &recipe.seed_text)
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        tools::check(&tools::for_build(
            &board,
            opts.verify,
            opts.agent_builder == Builder::Debian,
        ))?;
        check_free_space(opts)?;
        let dir = board_dir(&opts.out, &board.name);
        let work = dir.join("work");
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let lock = lock(&dir.join(".lock"))?;
        let log = Log::to_file(&dir.join("build.log")).context("opening build.log")?;
        log.line(&format!(
            "=== cloudy-image build --board {} --recipe {} ===",
            board.name,
            opts.recipe.display()
        ));
        eprintln!(
            "cloudy-image: building {} ({}) from {}",
            board.name,
            board.description,
            opts.recipe.display()
        );
        Ok(Build {
            opts,
            board,
            board_text,
            recipe,
            dir,
            work,
            log,
            rep: Reporter::new(),
            _lock: lock,
        })
    }

    /// Images booted from a squashfs (ISO, PXE) rather than a partition (SD card).
    fn live(&self) -> bool {
        matches!(self.board.format, Format::Iso | Format::Pxe)
    }

    pub(super) fn epoch(&self) -> u64 {
        self.recipe.recipe.source_date_epoch
    }

    /// The release this build makes: `--release-version`, else the recipe's.
    pub(super) fn release(&self) -> &str {
        self.opts
            .release
            .as_deref()
            .unwrap_or(&self.recipe.recipe.update.release)
    }

    /// The Cloudy layer, as a tree and (live images) as its own squashfs.
    pub(super) fn layer(&self) -> PathBuf {
        self.work.join("layer")
    }

    fn layer_squashfs(&self) -> PathBuf {
        self.work.join("cloudy.squashfs")
    }

    /// An SD image before compression: what verify boots.
    fn raw_img(&self) -> PathBuf {
        self.work.join(format!("cloudy-{}.img", self.board.name))
    }

    fn bmap_path(&self) -> PathBuf {
        self.dir
            .join(format!("cloudy-{}.img.bmap", self.board.name))
    }

    /// The agent's compile does not depend on the root file system, so it runs beside the
    /// bootstrap, which under qemu-user keeps mostly one core busy with dpkg.
    pub(super) fn rootfs_and_agent(&self) -> Result<(bootstrap::Rootfs, PathBuf, agent::Built)> {
        let (rootfs, agent) = std::thread::scope(|s| {
            let agent = s.spawn(|| self.agent());
            let rootfs = self.bootstrap().and_then(|rootfs| {
                let base_sq = self.base_squashfs(&rootfs)?;
                Ok((rootfs, base_sq))
            });
            let agent = agent
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (rootfs, agent)
        });
        let (rootfs, base_sq) = rootfs?;
        Ok((rootfs, base_sq, agent?))
    }

    fn agent(&self) -> Result<agent::Built, agent::AgentError> {
        let r = &self.recipe.recipe;
        self.rep.stage("agent", |step| {
            let req = agent::Request {
                arch: self.board.arch,
                source: &self.opts.source,
                cache: &self.opts.cache,
                mirror: &r.mirror,
                security_mirror: &r.security_mirror(),
                builder: self.opts.agent_builder,
                yield_cpu: self.board.is_foreign(),
            };
            let built = agent::build(&req, &self.log, step)?;
            let note = format!("{} {}", self.board.arch.rust_target(), built.toolchain);
            Ok((built, note))
        })
    }

    fn bootstrap(&self) -> Result<bootstrap::Rootfs> {
        let rootfs = self.rep.stage("bootstrap", |step| {
            let rootfs =
                bootstrap::run(&self.board, &self.recipe, &self.opts.cache, &self.log, step)?;
            let note = if rootfs.cached {
                format!("cached {}", rootfs.meta.key)
            } else {
                format!("made {}", rootfs.meta.key)
            };
            let note = if rootfs.meta.security.starts_with("skipped") {
                format!("{note}; WITHOUT security suite")
            } else {
                note
            };
            Ok::<_, bootstrap::BootstrapError>((rootfs, note))
        })?;
        Ok(rootfs)
    }

    /// The rootfs as the base squashfs of live images, cached beside the rootfs by its key and
    /// the codec. Returns its path (made only for live images).
    fn base_squashfs(&self, rootfs: &bootstrap::Rootfs) -> Result<PathBuf> {
        let sq = &self.recipe.recipe.squashfs;
        let base_sq = self.opts.cache.join("squashfs").join(format!(
            "{}-{}{}.squashfs",
            rootfs.meta.key,
            sq.compression.name(),
            sq.level.map(|l| l.to_string()).unwrap_or_default()
        ));
        if !self.live() {
            return Ok(base_sq);
        }
        self.rep.stage("squashfs", |step| {
            let _held = cache::lock(&base_sq)?;
            if base_sq.exists() && !self.opts.rebuild {
                return Ok(((), "cached".to_string()));
            }
            std::fs::create_dir_all(base_sq.parent().expect("has parent"))?;
            // The initrd is on the ISO beside the kernel; a second copy inside is dead weight.
            let exclude = ["boot/initrd.img*"];
            squashfs::make(
                &rootfs.dir,
                &base_sq,
                sq,
                self.epoch(),
                &exclude,
                &self.log,
                step,
            )?;
            Ok::<_, anyhow::Error>(((), fmt_size(std::fs::metadata(&base_sq)?.len())))
        })?;
        Ok(base_sq)
    }

    /// The Cloudy layer; returns the units it enabled.
    pub(super) fn customise(
        &self,
        rootfs: &bootstrap::Rootfs,
        agent: &agent::Built,
    ) -> Result<Vec<String>> {
        let r = &self.recipe.recipe;
        let (layer, layer_sq) = (self.layer(), self.layer_squashfs());
        let units = self.rep.stage("customise", |step| {
            let inputs = customise::Inputs {
                base: &rootfs.dir,
                overlay: &self.opts.source.join("overlay"),
                agent: &agent.path,
                seed: &self.recipe.seed_text,
                enable: &r.enable,
            };
            let units = customise::make_layer(&inputs, &layer)?;
            release::write(
                &layer,
                &self.board,
                self.release(),
                &r.update,
                self.recipe.rauc_keyring.as_deref(),
            )
            .with_context(|| format!("writing the release files under {}", layer.display()))?;
            if self.live() {
                let epoch = self.epoch();
                squashfs::make(&layer, &layer_sq, &r.squashfs, epoch, &[], &self.log, step)?;
            }
            let note = format!("{} units enabled, release {}", units.len(), self.release());
            Ok::<_, anyhow::Error>((units.clone(), note))
        })?;
        Ok(units)
    }

    /// The "iso" stage: a live ISO at `out`, with the kernel for booting it (ISO boards) or
    /// without (PXE: the bundle carries the kernel).
    fn live_iso(
        &self,
        rootfs: &bootstrap::Rootfs,
        base_sq: &Path,
        out: &Path,
        with_kernel: bool,
    ) -> Result<()> {
        self.rep.stage("iso", |step| {
            let inputs = iso::Inputs {
                board: &self.board,
                rootfs: &rootfs.dir,
                base_squashfs: base_sq,
                layer_squashfs: &self.layer_squashfs(),
                epoch: self.epoch(),
                with_kernel,
            };
            iso::make(&inputs, &self.work, out, &self.log, step)?;
            Ok::<_, iso::IsoError>(((), fmt_size(file_size(out))))
        })?;
        Ok(())
    }

    fn iso(&self, rootfs: &bootstrap::Rootfs, base_sq: &Path) -> Result<PathBuf> {
        let iso_out = iso_path(&self.opts.out, &self.board.name);
        self.live_iso(rootfs, base_sq, &iso_out, true)?;
        Ok(iso_out)
    }

    /// The PXE bundle directory around a live ISO without a kernel.
    fn pxe(&self, rootfs: &bootstrap::Rootfs, base_sq: &Path) -> Result<PathBuf> {
        let live_iso = self.work.join(pxe::LIVE_ISO);
        let bundle = self.dir.join("pxe");
        self.live_iso(rootfs, base_sq, &live_iso, false)?;
        self.rep.stage("pxe", |_| {
            pxe::make(&self.board, &rootfs.dir, &live_iso, &bundle, self.epoch())?;
            let note = "vmlinuz, initrd.img, cloudy.iso, boot.ipxe, pxelinux".to_string();
            Ok::<_, pxe::PxeError>(((), note))
        })?;
        Ok(bundle)
    }

    /// The raw SD image, then the .img.xz users flash and its .bmap.
    fn sdcard(&self, rootfs: &bootstrap::Rootfs) -> Result<PathBuf> {
        let raw_img = self.raw_img();
        // Fixed per recipe and board, so rebuilds keep the same PARTUUIDs.
        let id_hash =
            cache::sha256_bytes(format!("{}{}", self.recipe.text, self.board_text).as_bytes());
        let disk_id = u32::from_str_radix(&id_hash[..8], 16).expect("hex");
        self.rep.stage("sdcard", |step| {
            let inputs = sdcard::Inputs {
                board: &self.board,
                rootfs: &rootfs.dir,
                layer: &self.layer(),
                seed: &self.recipe.seed_text,
                epoch: self.epoch(),
                disk_id,
            };
            sdcard::make(&inputs, &self.work, &raw_img, &self.log, step)?;
            Ok::<_, sdcard::SdError>(((), fmt_size(file_size(&raw_img))))
        })?;
        let xz_out = self.dir.join(format!("cloudy-{}.img.xz", self.board.name));
        self.rep.stage("compress", |_| {
            let started = std::time::Instant::now();
            let size = compress::xz(&raw_img, &xz_out, compress::SD_PRESET)?;
            let raw = std::fs::metadata(&raw_img)?.len();
            let mbps = raw as f64 / 1e6 / started.elapsed().as_secs_f64();
            let bmap = bmap::make(&raw_img)?;
            cache::write_atomic(&self.bmap_path(), bmap.as_bytes())?;
            let note = format!("{} xz ({mbps:.0} MB/s), .bmap", fmt_size(size));
            Ok::<_, std::io::Error>(((), note))
        })?;
        Ok(xz_out)
    }

    /// SHA256SUMS of what a user downloads; returns those outputs for the manifest.
    fn finish(&self, image: &Path) -> Result<Vec<finish::Output>> {
        let dir = &self.dir;
        let outputs = self.rep.stage("finish", |_| {
            let files: Vec<PathBuf> = match self.board.format {
                Format::Iso => vec![image.to_path_buf()],
                Format::Sdcard => vec![image.to_path_buf(), self.bmap_path()],
                Format::Pxe => pxe::BUNDLE_FILES.iter().map(|f| image.join(f)).collect(),
            };
            let outputs = files
                .iter()
                .map(|f| finish::describe(f, dir))
                .collect::<std::io::Result<Vec<_>>>()?;
            finish::write_sums(dir, &outputs)?;
            Ok::<_, std::io::Error>((outputs, "SHA256SUMS, manifest.json".to_string()))
        })?;
        Ok(outputs)
    }

    fn manifest(
        &self,
        rootfs: &bootstrap::Rootfs,
        agent: &agent::Built,
        units: Vec<String>,
        outputs: Vec<finish::Output>,
    ) -> finish::Manifest {
        let (board, r) = (&self.board, &self.recipe.recipe);
        finish::Manifest {
            cloudy_image: env!("CARGO_PKG_VERSION"),
            board: board.name.clone(),
            board_sha256: cache::sha256_bytes(self.board_text.as_bytes()),
            recipe: self.opts.recipe.display().to_string(),
            recipe_sha256: cache::sha256_bytes(self.recipe.text.as_bytes()),
            seed_sha256: cache::sha256_bytes(self.recipe.seed_text.as_bytes()),
            suite: r.suite.clone(),
            arch: board.arch.debian().into(),
            mirror: r.mirror.clone(),
            security: rootfs.meta.security.clone(),
            source_date_epoch: self.epoch(),
            kernel_package: board.kernel_package.clone(),
            bootstrap_key: rootfs.meta.key.clone(),
            agent: finish::AgentInfo {
                target: board.arch.rust_target().into(),
                toolchain: agent.toolchain.clone(),
                sha256: agent.sha256.clone(),
            },
            units_enabled: units,
            packages: rootfs.meta.packages.clone(),
            pypi: rootfs.meta.pip.clone(),
            outputs,
            stages: self.rep.times(),
            built_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// Boots what was built (an SD board from its raw image: the .img.xz is for flashing)
    /// until the node is ready, and writes verify.json.
    fn verify(&self, image: &Path) -> Result<verify::Outcome> {
        let (board, opts) = (&self.board, self.opts);
        if opts.boot == Boot::Uefi && !board.firmware.contains(&Firmware::UefiX64) {
            bail!("--firmware uefi: board {} has no x64 UEFI boot (QEMU's OVMF is x64 only)\n  fix: verify with --firmware bios", board.name);
        }
        let raw_img = self.raw_img();
        let bootable = if board.format == Format::Sdcard {
            &raw_img
        } else {
            image
        };
        let scratch = self.work.join("boot-files");
        let (vm, _http) = vm_for(board, bootable, &scratch, opts.accel, opts.boot, &self.log)?;
        let outcome = self.rep.stage("verify", |step| {
            let console = self.dir.join("verify-console.log");
            let timeout = self.recipe.recipe.verify.timeout_s;
            let o = verify::run(&vm, timeout, &console, &self.log, step)?;
            let note = format!(
                "ready in {} ({:?}, {:?}), kernel {}",
                fmt_secs(o.seconds),
                opts.accel,
                opts.boot,
                o.ready["kernel"].as_str().unwrap_or("?")
            );
            Ok::<_, verify::VerifyError>((o, note))
        })?;
        let json = serde_json::to_vec_pretty(&outcome)?;
        cache::write_atomic(&self.dir.join("verify.json"), &json)?;
        Ok(outcome)
    }
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn print_summary(m: &finish::Manifest, dir: &Path, total: f64) {
    let mut out = String::new();
    out.push_str(&format!(
        "\nBuilt {} ({}, {}, {} packages) in {}\n",
        m.board,
        m.suite,
        m.arch,
        m.packages.len(),
        fmt_secs(total)
    ));
    if m.security.starts_with("skipped") {
        out.push_str(&format!(
            "WARNING: no {}-security updates in this image: {}\n",
            m.suite, m.security
        ));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = m
        .stages
        .iter()
        .map(|s| vec![s.stage.clone(), fmt_secs(s.seconds), s.note.clone()])
        .collect();
    out.push_str(&table(&["stage", "time", "note"], &rows));
    out.push('\n');
    let rows: Vec<Vec<String>> = m
        .outputs
        .iter()
        .map(|o| {
            vec![
                dir.join(&o.file).display().to_string(),
                fmt_size(o.size),
                o.sha256.clone(),
            ]
        })
        .chain(
            ["SHA256SUMS", "manifest.json", "build.log"]
                .iter()
                .map(|f| {
                    vec![
                        dir.join(f).display().to_string(),
                        String::new(),
                        String::new(),
                    ]
                }),
        )
        .collect();
    out.push_str(&table(&["output", "size", "sha256"], &rows));
    println!("{out}");
}
