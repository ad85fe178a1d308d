//! `cloudy-image verify`: boots a built (or customised) image in QEMU until the node is ready;
//! `--install` network-boots a PXE bundle onto a blank disk and boots that disk. The build's
//! verify stage boots its image the same way ([`vm_for`]).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use super::options::{board_dir, iso_path, Options};
use crate::board::{Board, Format};
use crate::cmd::Log;
use crate::http;
use crate::pi_boot;
use crate::progress::{fmt_secs, Reporter};
use crate::qemu::{Accel, Boot, Media, Vm};
use crate::recipe::Recipe;
use crate::stages::{pxe, sdcard, verify};
use crate::tools;

/// How QEMU boots `image` for `board`: an ISO through its own boot loader; an SD image with the
/// kernel, initrd and command line the Pi firmware would pick from its FAT partition (the
/// `virt` machine has no Pi firmware; see `pi_boot`), the root found by PARTUUID (on a `raspi*`
/// machine, as an SD card with the board's device tree); a PXE bundle through its own boot.ipxe,
/// fetching the live ISO over HTTP from a loopback server (the returned guard keeps it up).
pub fn vm_for<'a>(
    board: &'a Board,
    image: &'a Path,
    scratch: &Path,
    accel: Accel,
    boot: Boot,
    log: &Log,
) -> Result<(Vm<'a>, Option<http::Server>)> {
    let vm = |media, direct| Vm {
        board,
        media,
        accel,
        boot,
        direct,
        disk: None,
    };
    Ok(match board.format {
        Format::Iso => (vm(Media::Cdrom(image), None), None),
        Format::Pxe => {
            let (media, server) = pxe_media(image, scratch, "verify.ipxe", &[])?;
            (vm(media, None), Some(server))
        }
        Format::Sdcard => {
            let _ = std::fs::remove_dir_all(scratch);
            std::fs::create_dir_all(scratch)?;
            // What the Pi firmware would boot (the slot slot.txt names), with QEMU's console.
            let model = pi_boot::Model::for_board(&board.name).unwrap_or(pi_boot::Model::Pi3);
            let (kernel, initrd, append) = sdcard::boot_files(
                image,
                board,
                model,
                Some(board.emulated_console()),
                scratch,
                log,
            )?;
            let media = match crate::qemu::raspi_dtb(&board.qemu.machine) {
                // QEMU's own Pi: the card on its SD controller, with the board's device tree
                // from slot A, which a card fresh from the build boots.
                Some(dtb) => {
                    let slot_dtb = format!("{}{dtb}", pi_boot::slot_dir('A'));
                    sdcard::extract(image, &[&slot_dtb], scratch, log)?;
                    crate::qemu::raspi_sd(image, &scratch.join(dtb), scratch)?
                }
                None => Media::Disk(image),
            };
            (vm(media, Some((kernel, initrd, append))), None)
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
pub fn run(opts: &Options, image: Option<PathBuf>) -> Result<verify::Outcome> {
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
/// Returns the disk boot's outcome and the install's seconds.
pub fn install(opts: &Options, bundle: Option<PathBuf>) -> Result<(verify::Outcome, f64)> {
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
    let rep = Reporter::new();
    let timeout = recipe.recipe.verify.timeout_s;
    let disk = work.join("install-disk.raw");
    let installed = install_to_disk(opts, &board, &bundle, &disk, timeout, &log, &rep)?;
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

/// The "install" stage: `bundle` network-booted with one script choosing install mode onto
/// QEMU's disk, a blank `disk`, until the installer says it is done.
fn install_to_disk(
    opts: &Options,
    board: &Board,
    bundle: &Path,
    disk: &Path,
    timeout: u64,
    log: &Log,
    rep: &Reporter,
) -> Result<verify::Outcome> {
    let dir = board_dir(&opts.out, &board.name);
    let (media, _http) = pxe_media(
        bundle,
        &dir.join("work/install-tftp"),
        "install.ipxe",
        &[("cloudy_install", "/dev/vda")],
    )?;
    let _ = std::fs::remove_file(disk);
    std::fs::File::create(disk)?.set_len(4 << 30)?;
    let install_vm = Vm {
        board,
        media,
        accel: opts.accel,
        boot: Boot::Bios,
        direct: None,
        disk: Some(disk),
    };
    let installed = rep.stage("install", |step| {
        // Copying the system and building an initramfs under emulation takes many minutes.
        let o = verify::watch(
            &install_vm,
            timeout * 4,
            &dir.join("install-console.log"),
            log,
            step,
            &installer_said,
        )?;
        let note = format!("installed in {}", fmt_secs(o.seconds));
        Ok::<_, verify::VerifyError>((o, note))
    })?;
    Ok(installed)
}

/// The install script's lines: `cloudy-install: [<seconds> s] <what>`; done or failed.
fn installer_said(line: &str) -> Option<Result<serde_json::Value, String>> {
    let i = line.find("cloudy-install: ")?;
    let said = &line[i..];
    if said.contains("] installed to ") {
        Some(Ok(serde_json::json!({ "installed": said })))
    } else if said.contains("] FAILED") {
        Some(Err(said.to_string()))
    } else {
        None
    }
}
