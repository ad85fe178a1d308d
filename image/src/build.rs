//! The build: recipe + board -> bootstrap -> customise -> iso -> finish -> verify, each stage
//! timed and shown, ending in a summary table.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use crate::agent::{self, Builder};
use crate::board::{Board, Firmware, Format};
use crate::cmd::Log;
use crate::progress::{fmt_secs, fmt_size, table, Reporter};
use crate::qemu::{Accel, Boot, Media, Vm};
use crate::recipe::Recipe;
use crate::{
    binfmt, bmap, bootstrap, cache, compress, customise, finish, http, iso, pxe, sdcard,
    seed_image, squashfs, tools, verify,
};

/// A build needs room for the rootfs, its squashfs and the ISO.
const MIN_FREE: u64 = 3 << 30;

#[derive(Debug, Clone)]
pub struct Options {
    pub board: String,
    pub recipe: PathBuf,
    pub out: PathBuf,
    pub cache: PathBuf,
    /// The checkout: `hardware/`, `overlay/` and the agent's source.
    pub source: PathBuf,
    pub verify: bool,
    pub accel: Accel,
    pub boot: Boot,
    pub agent_builder: Builder,
    /// Rebuild the base squashfs instead of taking it from the cache (the rootfs is still
    /// taken from the cache); used to show the output is reproducible.
    pub rebuild: bool,
}

pub struct Built {
    pub image: PathBuf,
    pub manifest: finish::Manifest,
    pub verified: Option<verify::Outcome>,
}

pub fn board_dir(out: &Path, board: &str) -> PathBuf {
    out.join(board)
}

pub fn iso_path(out: &Path, board: &str) -> PathBuf {
    board_dir(out, board).join(format!("cloudy-{board}.iso"))
}

pub fn run(opts: &Options) -> Result<Built> {
    let started = std::time::Instant::now();
    let (board, _, board_text) = Board::find(&opts.source.join("hardware"), &opts.board)?;
    let recipe = Recipe::load(&opts.recipe)?;
    tools::check(&tools::for_build(
        &board,
        opts.verify,
        opts.agent_builder == Builder::Debian,
    ))?;
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
    let dir = board_dir(&opts.out, &board.name);
    let work = dir.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _lock = lock(&dir.join(".lock"))?;
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
    let r = &recipe.recipe;
    let epoch = r.source_date_epoch;
    let rep = Reporter::new();

    if board.is_foreign() {
        binfmt::ensure(board.arch)?;
    }
    let live = matches!(board.format, Format::Iso | Format::Pxe);
    // The agent's compile does not depend on the root file system: it runs beside the
    // bootstrap, which under qemu-user keeps mostly one core busy with dpkg. On a cold ARM
    // build this hides most of the compile (it ran 2m25s after a 5m10s bootstrap before).
    let (rootfs, agent) = std::thread::scope(|s| {
        let agent = s.spawn(|| {
            rep.stage("agent", |step| {
                let req = agent::Request {
                    arch: board.arch,
                    source: &opts.source,
                    cache: &opts.cache,
                    mirror: &r.mirror,
                    security_mirror: &r.security_mirror(),
                    builder: opts.agent_builder,
                    yield_cpu: board.is_foreign(),
                };
                let built = agent::build(&req, &log, step)?;
                let note = format!("{} {}", board.arch.rust_target(), built.toolchain);
                Ok::<_, agent::AgentError>((built, note))
            })
        });
        let rootfs = (|| -> Result<(bootstrap::Rootfs, PathBuf)> {
            let rootfs = rep.stage("bootstrap", |step| {
                let rootfs = bootstrap::run(&board, &recipe, &opts.cache, &log, step)?;
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
            let base_sq = opts.cache.join("squashfs").join(format!(
                "{}-{}{}.squashfs",
                rootfs.meta.key,
                r.squashfs.compression.name(),
                r.squashfs.level.map(|l| l.to_string()).unwrap_or_default()
            ));
            if live {
                rep.stage("squashfs", |step| {
                    let _held = cache::lock(&base_sq)?;
                    if base_sq.exists() && !opts.rebuild {
                        return Ok(((), "cached".to_string()));
                    }
                    std::fs::create_dir_all(base_sq.parent().expect("has parent"))?;
                    // The initrd is on the ISO beside the kernel; a second copy inside is dead weight.
                    squashfs::make(
                        &rootfs.dir,
                        &base_sq,
                        &r.squashfs,
                        epoch,
                        &["boot/initrd.img*"],
                        &log,
                        step,
                    )?;
                    Ok::<_, anyhow::Error>(((), fmt_size(std::fs::metadata(&base_sq)?.len())))
                })?;
            }
            Ok((rootfs, base_sq))
        })();
        let agent = agent
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (rootfs, agent)
    });
    let (rootfs, base_sq) = rootfs?;
    let agent = agent?;

    let layer = work.join("layer");
    let layer_sq = work.join("cloudy.squashfs");
    let units = rep.stage("customise", |step| {
        let units = customise::make_layer(
            &customise::Inputs {
                base: &rootfs.dir,
                overlay: &opts.source.join("overlay"),
                agent: &agent.path,
                seed: &recipe.seed_text,
                enable: &r.enable,
            },
            &layer,
        )?;
        if live {
            squashfs::make(&layer, &layer_sq, &r.squashfs, epoch, &[], &log, step)?;
        }
        Ok::<_, anyhow::Error>((units.clone(), format!("{} units enabled", units.len())))
    })?;

    // Fixed per recipe and board, so rebuilds keep the same PARTUUIDs.
    let disk_id = u32::from_str_radix(
        &cache::sha256_bytes(format!("{}{}", recipe.text, board_text).as_bytes())[..8],
        16,
    )
    .expect("hex");
    let raw_img = work.join(format!("cloudy-{}.img", board.name));
    let final_out = match board.format {
        Format::Iso => {
            let iso_out = iso_path(&opts.out, &board.name);
            rep.stage("iso", |step| {
                iso::make(
                    &iso::Inputs {
                        board: &board,
                        rootfs: &rootfs.dir,
                        base_squashfs: &base_sq,
                        layer_squashfs: &layer_sq,
                        epoch,
                        with_kernel: true,
                    },
                    &work,
                    &iso_out,
                    &log,
                    step,
                )?;
                Ok::<_, iso::IsoError>((
                    (),
                    fmt_size(std::fs::metadata(&iso_out).map(|m| m.len()).unwrap_or(0)),
                ))
            })?;
            iso_out
        }
        Format::Pxe => {
            let live_iso = work.join(pxe::LIVE_ISO);
            let bundle = dir.join("pxe");
            rep.stage("iso", |step| {
                iso::make(
                    &iso::Inputs {
                        board: &board,
                        rootfs: &rootfs.dir,
                        base_squashfs: &base_sq,
                        layer_squashfs: &layer_sq,
                        epoch,
                        with_kernel: false,
                    },
                    &work,
                    &live_iso,
                    &log,
                    step,
                )?;
                Ok::<_, iso::IsoError>((
                    (),
                    fmt_size(std::fs::metadata(&live_iso).map(|m| m.len()).unwrap_or(0)),
                ))
            })?;
            rep.stage("pxe", |_| {
                pxe::make(&board, &rootfs.dir, &live_iso, &bundle, epoch)?;
                Ok::<_, pxe::PxeError>((
                    (),
                    "vmlinuz, initrd.img, cloudy.iso, boot.ipxe, pxelinux".to_string(),
                ))
            })?;
            bundle
        }
        Format::Sdcard => {
            rep.stage("sdcard", |step| {
                sdcard::make(
                    &sdcard::Inputs {
                        board: &board,
                        rootfs: &rootfs.dir,
                        layer: &layer,
                        seed: &recipe.seed_text,
                        epoch,
                        disk_id,
                    },
                    &work,
                    &raw_img,
                    &log,
                    step,
                )?;
                Ok::<_, sdcard::SdError>((
                    (),
                    fmt_size(std::fs::metadata(&raw_img).map(|m| m.len()).unwrap_or(0)),
                ))
            })?;
            let xz_out = dir.join(format!("cloudy-{}.img.xz", board.name));
            rep.stage("compress", |_| {
                let started = std::time::Instant::now();
                let size = compress::xz(&raw_img, &xz_out, compress::SD_PRESET)?;
                let raw = std::fs::metadata(&raw_img)?.len();
                let mbps = raw as f64 / 1e6 / started.elapsed().as_secs_f64();
                let bmap = bmap::make(&raw_img)?;
                cache::write_atomic(
                    &dir.join(format!("cloudy-{}.img.bmap", board.name)),
                    bmap.as_bytes(),
                )?;
                Ok::<_, std::io::Error>((
                    (),
                    format!("{} xz ({mbps:.0} MB/s), .bmap", fmt_size(size)),
                ))
            })?;
            xz_out
        }
    };

    let outputs = rep.stage("finish", |_| {
        let mut outputs = vec![];
        match board.format {
            Format::Iso => outputs.push(finish::describe(&final_out, &dir)?),
            Format::Sdcard => {
                outputs.push(finish::describe(&final_out, &dir)?);
                outputs.push(finish::describe(
                    &dir.join(format!("cloudy-{}.img.bmap", board.name)),
                    &dir,
                )?);
            }
            Format::Pxe => {
                for f in [
                    "vmlinuz",
                    "initrd.img",
                    pxe::LIVE_ISO,
                    "boot.ipxe",
                    "pxelinux.0",
                    "ldlinux.c32",
                    "pxelinux.cfg/default",
                ] {
                    outputs.push(finish::describe(&final_out.join(f), &dir)?);
                }
            }
        }
        finish::write_sums(&dir, &outputs)?;
        Ok::<_, std::io::Error>((outputs, "SHA256SUMS, manifest.json".to_string()))
    })?;
    let mut manifest = finish::Manifest {
        cloudy_image: env!("CARGO_PKG_VERSION"),
        board: board.name.clone(),
        board_sha256: cache::sha256_bytes(board_text.as_bytes()),
        recipe: opts.recipe.display().to_string(),
        recipe_sha256: cache::sha256_bytes(recipe.text.as_bytes()),
        seed_sha256: cache::sha256_bytes(recipe.seed_text.as_bytes()),
        suite: r.suite.clone(),
        arch: board.arch.debian().into(),
        mirror: r.mirror.clone(),
        security: rootfs.meta.security.clone(),
        source_date_epoch: epoch,
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
        outputs: outputs.clone(),
        stages: rep.times(),
        built_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    finish::write_manifest(&dir, &manifest).context("writing manifest.json")?;

    let verified = if opts.verify {
        let boot = if opts.boot == Boot::Uefi && !board.firmware.contains(&Firmware::UefiX64) {
            bail!("--firmware uefi: board {} has no x64 UEFI boot (QEMU's OVMF is x64 only)\n  fix: verify with --firmware bios", board.name);
        } else {
            opts.boot
        };
        // SD images boot from the raw image (the .img.xz is for flashing); ISO and PXE as built.
        let bootable = if board.format == Format::Sdcard {
            &raw_img
        } else {
            &final_out
        };
        let (vm, _http) = vm_for(
            &board,
            bootable,
            &work.join("boot-files"),
            opts.accel,
            boot,
            &log,
        )?;
        let outcome = rep.stage("verify", |step| {
            let o = verify::run(
                &vm,
                r.verify.timeout_s,
                &dir.join("verify-console.log"),
                &log,
                step,
            )?;
            let note = format!(
                "ready in {} ({:?}, {:?}), kernel {}",
                fmt_secs(o.seconds),
                opts.accel,
                boot,
                o.ready["kernel"].as_str().unwrap_or("?")
            );
            Ok::<_, verify::VerifyError>((o, note))
        })?;
        cache::write_atomic(
            &dir.join("verify.json"),
            &serde_json::to_vec_pretty(&outcome)?,
        )?;
        Some(outcome)
    } else {
        None
    };
    manifest.stages = rep.times();
    finish::write_manifest(&dir, &manifest).context("writing manifest.json")?;

    print_summary(&manifest, &dir, started.elapsed().as_secs_f64());
    Ok(Built {
        image: final_out,
        manifest,
        verified,
    })
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

/// How QEMU boots `image` for `board`: an ISO through its own boot loader; an SD image with the
/// kernel and initrd taken from its FAT partition (the `virt` machine has no Pi firmware) and
/// its root partition found by the PARTUUID in its MBR; a PXE bundle through its own boot.ipxe,
/// fetching the live ISO over HTTP from a loopback server (the returned guard keeps it up).
pub fn vm_for<'a>(
    board: &'a Board,
    image: &'a Path,
    scratch: &Path,
    accel: Accel,
    boot: Boot,
    log: &Log,
) -> Result<(Vm<'a>, Option<http::Server>)> {
    Ok(match board.format {
        Format::Iso => (
            Vm {
                board,
                media: Media::Cdrom(image),
                accel,
                boot,
                direct: None,
                disk: None,
            },
            None,
        ),
        Format::Pxe => {
            let (media, server) = pxe_media(image, scratch, "verify.ipxe", &[])?;
            (
                Vm {
                    board,
                    media,
                    accel,
                    boot,
                    direct: None,
                    disk: None,
                },
                Some(server),
            )
        }
        Format::Sdcard => {
            let _ = std::fs::remove_dir_all(scratch);
            std::fs::create_dir_all(scratch)?;
            seed_image::sd_extract(image, &["vmlinuz-*", "initrd.img-*"], scratch, log)?;
            let (kernel, initrd) = sdcard::kernel_and_initrd(scratch)?;
            let (disk_id, _) = seed_image::sd_layout(image)?;
            let append = sdcard::cmdline(board, disk_id, board.emulated_console());
            (
                Vm {
                    board,
                    media: Media::Disk(image),
                    accel,
                    boot,
                    direct: Some((kernel, initrd, append)),
                    disk: None,
                },
                None,
            )
        }
    })
}

/// A test network boot of `bundle`: a TFTP root in `scratch` whose `script` sets `vars` and
/// `cloudy_http`, then chains the bundle's boot.ipxe; and the HTTP server it points at.
fn pxe_media(
    bundle: &Path,
    scratch: &Path,
    script: &str,
    vars: &[(&str, &str)],
) -> Result<(Media<'static>, http::Server)> {
    let server = http::serve(bundle)
        .with_context(|| format!("serving {} over HTTP on loopback", bundle.display()))?;
    let url = format!("http://{}", http::GUEST_ADDR);
    let mut all = vars.to_vec();
    all.push(("cloudy_http", &url));
    pxe::test_root(bundle, scratch, script, &all)?;
    let media = Media::Pxe {
        root: scratch.to_path_buf(),
        bootfile: script.into(),
        http: server.port(),
    };
    Ok((media, server))
}

/// `cloudy-image verify`: boots a built (or customised) image and prints its ready line.
pub fn verify_only(opts: &Options, image: Option<PathBuf>) -> Result<verify::Outcome> {
    let (board, _, _) = Board::find(&opts.source.join("hardware"), &opts.board)?;
    tools::check(&tools::for_boot(&board))?;
    let recipe = Recipe::load(&opts.recipe)?;
    let dir = board_dir(&opts.out, &board.name);
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    let image = image.unwrap_or_else(|| match board.format {
        Format::Iso => iso_path(&opts.out, &board.name),
        Format::Sdcard => work.join(format!("cloudy-{}.img", board.name)),
        Format::Pxe => dir.join("pxe"),
    });
    if !image.exists() {
        bail!(
            "{} does not exist\n  fix: build it first: cloudy-image build --board {}",
            image.display(),
            board.name
        );
    }
    let log = Log::to_file(&dir.join("build.log"))?;
    let (vm, _http) = vm_for(
        &board,
        &image,
        &work.join("boot-files"),
        opts.accel,
        opts.boot,
        &log,
    )?;
    let rep = Reporter::new();
    let o = rep.stage("verify", |step| {
        let o = verify::run(
            &vm,
            recipe.recipe.verify.timeout_s,
            &dir.join("verify-console.log"),
            &log,
            step,
        )?;
        let note = format!("ready in {}", fmt_secs(o.seconds));
        Ok::<_, verify::VerifyError>((o, note))
    })?;
    println!("{}", o.ready);
    Ok(o)
}

/// `cloudy-image verify --install`: network-boots the PXE bundle in install mode with a blank
/// disk, waits for the installer to finish, then boots that disk alone until the node is ready.
pub fn verify_install(opts: &Options, bundle: Option<PathBuf>) -> Result<(verify::Outcome, f64)> {
    let (board, _, _) = Board::find(&opts.source.join("hardware"), &opts.board)?;
    if board.format != Format::Pxe {
        bail!(
            "--install needs a PXE board (pxe-686-pae, pxe-amd64), not {}",
            board.name
        );
    }
    tools::check(&tools::for_boot(&board))?;
    let recipe = Recipe::load(&opts.recipe)?;
    let dir = board_dir(&opts.out, &board.name);
    let work = dir.join("work");
    let bundle = bundle.unwrap_or_else(|| dir.join("pxe"));
    if !bundle.join("boot.ipxe").exists() {
        bail!(
            "{} is not a PXE bundle\n  fix: cloudy-image build --board {}",
            bundle.display(),
            board.name
        );
    }
    let log = Log::to_file(&dir.join("build.log"))?;
    // The bundle plus one script choosing install mode onto QEMU's disk.
    let (media, _http) = pxe_media(
        &bundle,
        &work.join("install-tftp"),
        "install.ipxe",
        &[("cloudy_install", "/dev/vda")],
    )?;
    let disk = work.join("install-disk.raw");
    let _ = std::fs::remove_file(&disk);
    std::fs::File::create(&disk)?.set_len(4 << 30)?;

    let rep = Reporter::new();
    let timeout = recipe.recipe.verify.timeout_s;
    let install_vm = Vm {
        board: &board,
        media,
        accel: opts.accel,
        boot: Boot::Bios,
        direct: None,
        disk: Some(&disk),
    };
    let installed = rep.stage("install", |step| {
        // Copying the system and building an initramfs under emulation takes many minutes.
        let o = verify::watch(
            &install_vm,
            timeout * 4,
            &dir.join("install-console.log"),
            &log,
            step,
            &|line| {
                // The script's lines: `cloudy-install: [<seconds> s] <what>`.
                let i = line.find("cloudy-install: ")?;
                let said = &line[i..];
                if said.contains("] installed to ") {
                    Some(Ok(serde_json::json!({ "installed": said })))
                } else if said.contains("] FAILED") {
                    Some(Err(said.to_string()))
                } else {
                    None
                }
            },
        )?;
        let note = format!("installed in {}", fmt_secs(o.seconds));
        Ok::<_, verify::VerifyError>((o, note))
    })?;
    let disk_vm = Vm {
        board: &board,
        media: Media::Disk(&disk),
        accel: opts.accel,
        boot: Boot::Bios,
        direct: None,
        disk: None,
    };
    let o = rep.stage("disk boot", |step| {
        let o = verify::run(
            &disk_vm,
            timeout,
            &dir.join("installed-console.log"),
            &log,
            step,
        )?;
        let note = format!("ready in {} from the installed disk", fmt_secs(o.seconds));
        Ok::<_, verify::VerifyError>((o, note))
    })?;
    println!("{}", o.ready);
    Ok((o, installed.seconds))
}

/// One build per output directory at a time.
fn lock(path: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another build is running in {}\n  fix: wait for it, or use another --out",
            path.parent().unwrap_or(path).display()
        );
    }
    Ok(f)
}

/// `cloudy-image boot`: the built image in QEMU with its serial console on this terminal and a
/// root shell on that console (the kernel option below; whoever sets kernel options already
/// owns the machine, so this opens nothing a node's users could reach).
pub fn boot(opts: &Options) -> Result<()> {
    let (board, _, _) = Board::find(&opts.source.join("hardware"), &opts.board)?;
    tools::check(&tools::for_boot(&board))?;
    tools::check(&[tools::Tool {
        program: "xorriso",
        package: "xorriso",
    }])?;
    let iso = iso_path(&opts.out, &board.name);
    if !iso.exists() {
        bail!(
            "{} does not exist\n  fix: build it first: cloudy-image build --board {}",
            iso.display(),
            board.name
        );
    }
    let tmp = tempdir_in(&board_dir(&opts.out, &board.name).join("work"))?;
    let (kernel, initrd) = (tmp.join("vmlinuz"), tmp.join("initrd.img"));
    let st = std::process::Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&iso)
        .args(["-extract", "/live/vmlinuz"])
        .arg(&kernel)
        .args(["-extract", "/live/initrd.img"])
        .arg(&initrd)
        .stderr(std::process::Stdio::null())
        .status()?;
    if !st.success() {
        bail!("cannot read the kernel from {}", iso.display());
    }
    let append = format!("{} cloudy.console-login", iso::cmdline(&board));
    let vm = Vm {
        board: &board,
        media: Media::Cdrom(&iso),
        accel: opts.accel,
        boot: Boot::Bios,
        direct: Some((kernel, initrd, append)),
        disk: None,
    };
    let mut c = vm.command();
    c.args(["-serial", "mon:stdio"]);
    eprintln!(
        "cloudy-image: booting {} in QEMU ({:?}); Ctrl-A X quits, root shell on this console",
        iso.display(),
        opts.accel
    );
    let status = c
        .status()
        .with_context(|| format!("starting {}", board.qemu.system))?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(parent)?;
    let d = parent.join(format!("boot-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
