//! `cloudy-image boot`: a built ISO in QEMU, interactive.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use super::options::{board_dir, iso_path, Options};
use crate::board::{Board, Format};
use crate::qemu::{Boot, Media, Vm};
use crate::stages::iso;
use crate::tools;

/// `cloudy-image boot`: the built image in QEMU with its serial console on this terminal and a
/// root shell on that console (the kernel option below; whoever sets kernel options already
/// owns the machine, so this opens nothing a node's users could reach).
pub fn run(opts: &Options) -> Result<()> {
    let (board, _, _) = Board::find(&opts.source.join("hardware"), &opts.board)?;
    if board.format != Format::Iso {
        bail!(
            "`cloudy-image boot` opens ISO images only, and {} makes {} images\n  fix: `cloudy-image verify --board {}` boots it in QEMU until the node is ready; `cloudy-image boards` lists the ISO boards",
            board.name,
            match board.format {
                Format::Sdcard => "SD card",
                Format::Pxe => "PXE",
                Format::Iso => "ISO",
            },
            board.name
        );
    }
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
