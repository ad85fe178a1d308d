//! Issue 16, done-when 4: the Raspberry Pi slot switch under QEMU `virt`, with a real update
//! bundle. Every boot takes exactly the kernel, initrd and command line the Pi firmware would
//! choose from the card's FAT partition as the previous boot left it
//! (`cloudy_image::pi_boot::choose`, read through mtools without mounting), so what is tested is
//! the card's own state: config.txt, slot.txt and the slot directories that RAUC's backend
//! (`/usr/lib/cloudy/rauc-pi-boot`) writes from the guest.
//!
//! The card is rpi3 release 1.0.0 and the update `cloudy-image bundle --board rpi3` of 1.0.1,
//! both of one community's keys (`Community`): `rauc install` in the guest writes slot B and
//! makes it primary, the next boot is 1.0.1 from slot B, which the agent marks good. Then the
//! fallback: slot A, its agent masked (a release that never reaches ready), is made primary
//! again and is never marked good; after its 3 boots the card is back on slot B by itself.
//!
//! Every Pi board also has a test that only takes the update into slot B and boots it
//! (`to_slot_b`, which the rpi3 test above starts with), for the bench's install and downtime
//! figures: rpi2, rpi3 and rpi4 under `virt`, rpi1 on QEMU's
//! own one-core Pi Zero model (`raspi0`: Debian's armel kernel runs on no `virt` machine), its
//! card on the SD controller and the bundles' disk on USB.
//!
//! What QEMU cannot show (README "Pi slots"): the real firmware reading the card, tryboot's
//! hardware flag, and SD wear.

use std::path::{Path, PathBuf};
use std::process::Command;

use cloudy_image::board::Board;
use cloudy_image::cmd::Log;
use cloudy_image::pi_boot::{self, Model};
use cloudy_image::qemu;
use cloudy_image::stages::sdcard;
use cloudy_tests::*;

/// One boot's limit: a TCG boot of the rpi3 image reaches its ready line in about a minute,
/// rpi1's on QEMU's one-core Pi in about four.
const BOOT_LIMIT_S: u64 = 900;
/// `rauc install` of the bundle in a TCG guest: verity checks and up to 1.5 GB written.
const INSTALL_LIMIT_S: u64 = 3600;
/// A guest's whole life: a boot, an install and a shutdown.
const GUEST_LIMIT_S: u64 = BOOT_LIMIT_S + INSTALL_LIMIT_S + 300;

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let t = text(&o);
    assert!(o.status.success(), "{cmd:?} failed:\n{t}");
    t
}

/// Reads partition `n` (1-based) of an MBR disk image: (start, size) in bytes.
fn partition(img: &Path, n: usize) -> (u64, u64) {
    let mut mbr = [0u8; 512];
    std::io::Read::read_exact(&mut std::fs::File::open(img).unwrap(), &mut mbr).unwrap();
    let e = &mbr[446 + 16 * (n - 1)..446 + 16 * n];
    let start = u32::from_le_bytes(e[8..12].try_into().unwrap()) as u64 * 512;
    let size = u32::from_le_bytes(e[12..16].try_into().unwrap()) as u64 * 512;
    (start, size)
}

struct Card {
    img: PathBuf,
    board: Board,
    /// The Pi the card is tested as (`Model::for_board`).
    model: Model,
    dir: PathBuf,
    boots: usize,
    /// A second disk (ext4 labelled `bundles`) holding the update bundle.
    bundles: PathBuf,
}

impl Card {
    /// What the firmware boots now: the choice, and the kernel and initrd copied out.
    fn firmware(&self) -> (pi_boot::Choice, PathBuf, PathBuf) {
        let log = Log::sink();
        let fat = sdcard::read_fat(&self.img, &log).unwrap();
        let choice = pi_boot::choose(&fat, self.model, false).unwrap();
        let files = self.dir.join(format!("boot-{}", self.boots));
        let (kernel, initrd, cmdline) =
            sdcard::boot_files(&self.img, &self.board, self.model, None, &files, &log).unwrap();
        assert_eq!(
            cmdline, choice.cmdline,
            "no console swapped: the card's own line"
        );
        (choice, kernel, initrd)
    }

    /// Boots what the firmware would, writing to the card (no snapshot: the next boot must see
    /// what this one wrote).
    fn boot(&mut self) -> (pi_boot::Choice, Guest) {
        self.boots += 1;
        let (choice, kernel, initrd) = self.firmware();
        let q = &self.board.qemu;
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            "-machine",
            &q.machine,
            "-cpu",
            &q.cpu,
            "-m",
            &q.memory_mib.to_string(),
            "-display",
            "none",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match qemu::raspi_dtb(&q.machine) {
            // QEMU's own Pi (rpi1 as a Zero): one core, the card on its SD controller (raw: the
            // card is a power of two in size), the board's device tree from the chosen slot as
            // `cloudy-image verify` patches it, and no PCI: the NIC and the bundles' disk on USB,
            // behind a hub (the SoC's USB controller has one port).
            Some(dtb) => {
                let scratch = self.dir.join(format!("dtb-{}", self.boots));
                let _ = std::fs::remove_dir_all(&scratch);
                std::fs::create_dir_all(&scratch).unwrap();
                let slot = choice.kernel.rsplit_once('/').map_or("", |(d, _)| d);
                let slot_dtb = format!("{slot}/{dtb}");
                sdcard::extract(&self.img, &[&slot_dtb], &scratch, &Log::sink()).unwrap();
                let patched = qemu::raspi_device_tree(&scratch.join(dtb), &scratch).unwrap();
                args.extend(
                    [
                        "-netdev",
                        "user,id=net0,restrict=on",
                        "-device",
                        "usb-hub",
                        "-device",
                        "usb-net,netdev=net0",
                        "-drive",
                        &format!("if=sd,format=raw,file={}", self.img.display()),
                        "-drive",
                        &format!(
                            "if=none,id=bundles,format=raw,file={}",
                            self.bundles.display()
                        ),
                        "-device",
                        "usb-storage,drive=bundles",
                        "-dtb",
                        patched.to_str().unwrap(),
                    ]
                    .map(String::from),
                );
            }
            None => args.extend(
                [
                    "-smp",
                    "2",
                    "-nic",
                    "user,model=virtio-net-pci,restrict=on",
                    "-drive",
                    &format!("file={},format=raw,if=virtio", self.img.display()),
                    "-drive",
                    &format!("file={},format=raw,if=virtio", self.bundles.display()),
                ]
                .map(String::from),
            ),
        }
        args.extend(
            [
                "-kernel",
                kernel.to_str().unwrap(),
                "-initrd",
                initrd.to_str().unwrap(),
                "-append",
                &choice.cmdline,
            ]
            .map(String::from),
        );
        eprintln!(
            "boot {}: {} + {} with `{}`",
            self.boots,
            choice.kernel,
            choice.initrd.as_deref().unwrap_or("-"),
            choice.cmdline
        );
        let log = self.dir.join(format!("console-{}.log", self.boots));
        let guest = Guest::start(&q.system, &args, GUEST_LIMIT_S, &log);
        (choice, guest)
    }

    /// Replaces a file on the card's FAT partition, as a person would from another computer.
    fn put(&self, path: &str, text: &str) {
        let (_, off) = sdcard::layout(&self.img).unwrap();
        let local = self.dir.join("put.txt");
        std::fs::write(&local, text).unwrap();
        run(Command::new("mcopy")
            .args(["-o", "-i", &format!("{}@@{off}", self.img.display())])
            .arg(&local)
            .arg(format!("::/{path}"))
            .env("MTOOLS_SKIP_CHECK", "1"));
    }

    /// The card's partition `n` as the guest names it: a virtio disk under `virt`, the SD
    /// controller's card under QEMU's own Pi.
    fn part(&self, n: u8) -> String {
        if qemu::raspi_dtb(&self.board.qemu.machine).is_some() {
            format!("/dev/mmcblk0p{n}")
        } else {
            format!("/dev/vda{n}")
        }
    }

    fn get(&self, path: &str) -> String {
        let (_, off) = sdcard::layout(&self.img).unwrap();
        run(Command::new("mtype")
            .args(["-i", &format!("{}@@{off}", self.img.display())])
            .arg(format!("::/{path}"))
            .env("MTOOLS_SKIP_CHECK", "1"))
    }
}

/// Powers the guest off from its shell and waits for QEMU to exit; returns the seconds that
/// took.
fn power_off(g: &mut Guest) -> f64 {
    let t = std::time::Instant::now();
    g.send("sync; poweroff");
    g.wait_exit(300);
    t.elapsed().as_secs_f64()
}

#[test]
#[ignore = "builds rpi3 1.0.0 and its 1.0.1 bundle, installs it and boots six times under TCG (about 1 h): make e2e runs it"]
fn pi_update_slot_switch_and_fallback_under_qemu_virt() {
    let PiSlotB {
        mut card,
        mut g,
        figures,
    } = to_slot_b("rpi3", "slots-pi");
    // The fallback: slot A stands for an update whose system never reaches ready (its agent
    // masked, else the agent would mark it good), made primary through the backend as RAUC
    // does after an install.
    let said = g.shell(
        &format!(
            "mkdir -p /run/slot-a && mount {} /run/slot-a && \
             ln -sf /dev/null /run/slot-a/etc/systemd/system/cloudy-agent.service && \
             umount /run/slot-a && echo masked-a; \
             rauc status mark-active other; /usr/lib/cloudy/rauc-pi-boot status",
            card.part(2)
        ),
        300,
    );
    eprintln!("slot B, making A primary, said:\n{said}");
    assert!(said.contains("masked-a"), "{said}");
    assert!(
        said.contains("next boot: A") && said.contains("on trial: A, 3 of 3 boots left"),
        "{said}"
    );
    power_off(&mut g);
    drop(g);

    for n in 1..=3 {
        let (choice, mut g) = card.boot();
        assert_eq!(choice.kernel, "slot-a/vmlinuz", "boot {n} of slot A");
        assert!(choice.cmdline.contains("rauc.slot=A"), "{}", choice.cmdline);
        g.wait_for(
            &format!("cloudy-pi-boot: slot A on trial: boot {n} of 3"),
            0,
            BOOT_LIMIT_S,
        );
        // Cut the power once the count is on the card (the script syncs before it says so).
        drop(g);
    }
    assert!(
        card.get("slot.txt").contains("os_prefix=slot-b/"),
        "after its last try slot.txt points back at B:\n{}",
        card.get("slot.txt")
    );

    // Boot 6: the firmware is back on slot B by itself, and B records A's failure.
    let (choice, mut g) = card.boot();
    assert_eq!(choice.kernel, "slot-b/vmlinuz");
    assert!(choice.cmdline.contains("rauc.slot=B"), "{}", choice.cmdline);
    g.wait_for(
        "cloudy-pi-boot: slot A was not marked good within 3 boots; back on slot B",
        0,
        BOOT_LIMIT_S,
    );
    let said = g.shell(
        "findmnt -no SOURCE,LABEL /; cat /usr/lib/cloudy/release.json; \
         /usr/lib/cloudy/rauc-pi-boot status; rauc status --detailed",
        300,
    );
    eprintln!("slot B again said:\n{said}");
    assert!(
        said.contains(&format!("{} cloudy-b", card.part(3))),
        "{said}"
    );
    assert!(said.contains("\"version\":\"1.0.1\""), "{said}");
    assert!(
        said.contains("slot A: bad") && said.contains("last failed: A"),
        "{said}"
    );
    power_off(&mut g);
    eprintln!("{figures}");
}

/// Done-when 5 on every Pi board (bench/update.sh runs these): the install into slot B and
/// the reboot to ready (`to_slot_b`).
#[test]
#[ignore = "builds rpi3 1.0.0 and its 1.0.1 bundle, installs it and boots twice under TCG (about 30 min): make e2e runs it"]
fn rpi3_updates_to_the_other_slot_under_qemu_virt() {
    updates_to_the_other_slot("rpi3");
}

#[test]
#[ignore = "builds rpi2 1.0.0 and its 1.0.1 bundle, installs it and boots twice under TCG (about 40 min): make e2e runs it"]
fn rpi2_updates_to_the_other_slot_under_qemu_virt() {
    updates_to_the_other_slot("rpi2");
}

#[test]
#[ignore = "builds rpi4 1.0.0 and its 1.0.1 bundle, installs it and boots twice under TCG (about 40 min): make e2e runs it"]
fn rpi4_updates_to_the_other_slot_under_qemu_virt() {
    updates_to_the_other_slot("rpi4");
}

/// rpi1 on QEMU's own Pi Zero model (`raspi0`: one ARM1176 core, the card on the SD
/// controller, the bundles' disk on USB).
#[test]
#[ignore = "builds rpi1 1.0.0 and its 1.0.1 bundle, installs it and boots twice on QEMU's one-core raspi0 (about 1 h): make e2e runs it"]
fn rpi1_updates_to_the_other_slot_under_qemu_raspi0() {
    updates_to_the_other_slot("rpi1");
}

fn updates_to_the_other_slot(board: &str) {
    let PiSlotB { mut g, figures, .. } = to_slot_b(board, &format!("slots-{board}"));
    power_off(&mut g);
    eprintln!("{figures}");
}

/// A card on slot B at 1.0.1 after `rauc install` from 1.0.0 (`to_slot_b`), still running;
/// `figures` is the line for bench/update.sh.
struct PiSlotB {
    card: Card,
    g: Guest,
    figures: String,
}

/// Builds `board`'s 1.0.0 card and 1.0.1 bundle (one community's keys) in the test directory
/// `dir`, boots the card's slot A as the firmware would, `rauc install`s the bundle there,
/// powers off, and boots what the firmware then picks: slot B at 1.0.1, the same node, marked
/// good by the agent.
fn to_slot_b(board: &str, dir: &str) -> PiSlotB {
    require_root();
    let out = out_dir(dir);
    let img = out.join("card.img");
    // CLOUDY_PI_FROM: a directory holding an earlier run's community/keys, update/ (the 1.0.1
    // bundle and manifest) and <board>/cloudy-<board>.img.xz (the 1.0.0 card), to rerun the
    // boots without the hour of building; its files are read, never changed.
    let (bundle, manifest, rauc_cert, bundle_s) = match std::env::var_os("CLOUDY_PI_FROM") {
        Some(prev) => {
            let prev = PathBuf::from(prev);
            run(Command::new("sh")
                .arg("-c")
                .arg("xz -T2 -dc \"$1\" | dd of=\"$2\" bs=4M conv=sparse status=none")
                .arg("sh")
                .arg(prev.join(format!("{board}/cloudy-{board}.img.xz")))
                .arg(&img));
            (
                prev.join(format!("update/cloudy-{board}-1.0.1.raucb")),
                prev.join(format!("update/{board}.manifest.json")),
                prev.join("community/keys/rauc.cert.pem"),
                None,
            )
        }
        None => {
            let community = Community::new(&out.join("community"));
            // The bundle first: it fails in minutes where the card takes half an hour.
            let t = std::time::Instant::now();
            let (bundle, manifest) = community.bundle(board, "1.0.1", &out);
            let bundle_s = t.elapsed().as_secs_f64();
            community.build(board, "1.0.0", &out);
            let built = out.join(format!("{board}/work/cloudy-{board}.img"));
            run(Command::new("cp")
                .arg("--sparse=always")
                .arg(&built)
                .arg(&img));
            let _ = std::fs::remove_file(&built);
            (
                bundle,
                manifest,
                community.rauc_cert.clone(),
                Some(bundle_s),
            )
        }
    };
    let bundle_bytes = std::fs::metadata(&bundle).unwrap().len();
    let m = read_json(&manifest);
    assert_eq!(m["manifest"]["board"], board, "{m}");
    assert_eq!(m["manifest"]["size"], bundle_bytes, "{m}");
    let info = run(Command::new("rauc")
        .arg(format!("--keyring={}", rauc_cert.display()))
        .arg("info")
        .arg(&bundle));
    assert!(
        info.contains(&format!("'cloudy-{board}'")) && info.contains("'1.0.1'"),
        "{info}"
    );
    let (hw, _) = Board::load(&repo().join(format!("hardware/{board}.toml"))).unwrap();
    // A card 1 GiB bigger than the image: the data partition takes the rest on first boot.
    // QEMU's own Pi takes only a card whose size is a power of two.
    run(Command::new("truncate").args(["-s", "+1G"]).arg(&img));
    if qemu::raspi_dtb(&hw.qemu.machine).is_some() {
        let len = std::fs::metadata(&img).unwrap().len().next_power_of_two();
        run(Command::new("truncate")
            .args(["-s", &len.to_string()])
            .arg(&img));
    }
    let bundles = out.join("bundles.img");
    files_disk(&bundles, "bundles", &[&bundle]);
    let mut card = Card {
        img,
        board: hw,
        model: Model::for_board(board).expect("a Pi board"),
        dir: out.clone(),
        boots: 0,
        bundles,
    };
    let (_, a_size) = partition(&card.img, 2);
    let (_, b_size) = partition(&card.img, 3);
    assert_eq!(a_size, b_size, "both slots have one size");

    // The card's own cmdline.txt, edited as a person would for this machine: QEMU's `virt` has
    // its serial port at ttyAMA0 where a Pi has the mini UART, and a root shell on it. Slot B's
    // is derived from the booted slot's when RAUC makes B primary, so it inherits the edit.
    let line = card.get("slot-a/cmdline.txt");
    assert!(line.contains("rauc.slot=A"), "{line}");
    let line = line.trim().replace(
        &format!("console={}", card.board.console),
        &format!("console={}", card.board.emulated_console()),
    ) + " cloudy.console-login\n";
    card.put("slot-a/cmdline.txt", &line);
    let disk_id = format!("{:08x}", sdcard::layout(&card.img).unwrap().0);

    // Boot 1: slot A at 1.0.0, as the image ships; `rauc install` of the 1.0.1 bundle.
    let (choice, mut g) = card.boot();
    assert_eq!(choice.kernel, "slot-a/vmlinuz");
    assert_eq!(choice.initrd.as_deref(), Some("slot-a/initrd.img"));
    assert!(
        choice
            .cmdline
            .contains(&format!("root=PARTUUID={disk_id}-02"))
            && choice.cmdline.contains("rauc.slot=A"),
        "{}",
        choice.cmdline
    );
    let c = g.wait_for("{\"cloudy\":\"ready\"", 0, BOOT_LIMIT_S);
    assert!(
        c.contains("cloudy-pi-boot: booted slot A"),
        "the counter ran"
    );
    let ready_a = ready_line(&c, 0).expect("ready line");
    let first_ready_s = g.seconds();
    let grown = c
        .lines()
        .find_map(|l| l.split("cloudy: data ").nth(1))
        .unwrap_or_else(|| panic!("no grow-root line for the data partition:\n{c}"))
        .to_string();
    let name = bundle.file_name().unwrap().to_str().unwrap();
    let b = card.part(3);
    let said = g.shell(
        &format!(
            "findmnt -no SOURCE,LABEL /; echo \"id=$(cat /var/lib/cloudy/node-id)\"; \
             cat /usr/lib/cloudy/release.json; mkdir -p /run/b && mount -o ro LABEL=bundles /run/b; \
             s=$(date +%s%N); rauc install /run/b/{name} >/run/rauc.log 2>&1; \
             echo \"rauc-rc $? $(( ($(date +%s%N) - s) / 1000000 ))\"; tail -n 8 /run/rauc.log; \
             umount /run/b; rauc status; /usr/lib/cloudy/rauc-pi-boot status; \
             ls -1 /boot/firmware/slot-b/; cat /boot/firmware/slot-b/cmdline.txt; \
             echo \"label-b=$(blkid -s LABEL -o value {b})\"; \
             echo \"size-b=$(dumpe2fs -h {b} 2>/dev/null | awk '/^Block count/ {{c=$3}} /^Block size/ {{s=$3}} END {{printf \"%.0f\", c*s}}')\""
        ),
        INSTALL_LIMIT_S,
    );
    eprintln!("slot A said:\n{said}");
    assert!(
        said.contains(&format!("{} cloudy-a", card.part(2))),
        "{said}"
    );
    assert!(said.contains("\"version\":\"1.0.0\""), "{said}");
    let node_id = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("id="))
        .unwrap_or_default()
        .to_string();
    assert!(!node_id.is_empty(), "{said}");
    let rc: Vec<&str> = said
        .lines()
        .find_map(|l| l.strip_prefix("rauc-rc "))
        .unwrap_or_else(|| panic!("no rauc-rc in:\n{said}"))
        .split_whitespace()
        .collect();
    assert_eq!(rc[0], "0", "rauc install failed:\n{said}");
    let install_s = rc[1].parse::<f64>().unwrap() / 1000.0;
    assert!(said.contains("Booted from: rootfs.0 (A)"), "{said}");
    assert!(
        said.contains("next boot: B") && said.contains("on trial: B, 3 of 3 boots left"),
        "{said}"
    );
    for f in ["vmlinuz", "initrd.img", "cmdline.txt"] {
        assert!(
            said.lines().any(|l| l.trim() == f),
            "slot-b/{f} on the FAT: {said}"
        );
    }
    assert!(
        said.lines().any(|l| l.trim().ends_with(".dtb")),
        "slot B's device trees on the FAT: {said}"
    );
    assert!(
        said.contains(&format!("root=PARTUUID={disk_id}-03"))
            && said.contains("rauc.slot=B")
            && said.contains("console=ttyAMA0"),
        "slot B's cmdline.txt: {said}"
    );
    assert!(said.contains("label-b=cloudy-b"), "{said}");
    let size_b: u64 = said
        .lines()
        .find_map(|l| l.strip_prefix("size-b="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(
        size_b, b_size,
        "slot B's filesystem fills its partition: {said}"
    );
    let shutdown_s = power_off(&mut g);
    drop(g);

    // Boot 2: what the firmware now picks from the card is slot B, with its own kernel files,
    // at 1.0.1; the agent marks it good once ready (alone: no community to wait for).
    let (choice, mut g) = card.boot();
    assert_eq!(choice.kernel, "slot-b/vmlinuz");
    assert_eq!(choice.initrd.as_deref(), Some("slot-b/initrd.img"));
    assert!(
        choice
            .cmdline
            .contains(&format!("root=PARTUUID={disk_id}-03"))
            && choice.cmdline.contains("rauc.slot=B")
            && choice.cmdline.contains("console=ttyAMA0"),
        "{}",
        choice.cmdline
    );
    g.wait_for(
        "cloudy-pi-boot: slot B on trial: boot 1 of 3",
        0,
        BOOT_LIMIT_S,
    );
    let c = g.wait_for("{\"cloudy\":\"ready\"", 0, BOOT_LIMIT_S);
    let ready_b_s = g.seconds();
    let ready_b = ready_line(&c, 0).expect("ready line");
    let said = g.shell(
        "findmnt -no SOURCE,LABEL /; echo \"id=$(cat /var/lib/cloudy/node-id)\"; \
         cat /usr/lib/cloudy/release.json; cat /proc/cmdline; \
         for i in $(seq 60); do /usr/lib/cloudy/rauc-pi-boot status | grep -q 'on trial' || break; sleep 2; done; \
         rauc status; /usr/lib/cloudy/rauc-pi-boot status",
        300,
    );
    eprintln!("slot B said:\n{said}");
    assert!(
        said.contains(&format!("{} cloudy-b", card.part(3))),
        "the root is slot B: {said}"
    );
    assert!(said.contains("\"version\":\"1.0.1\""), "{said}");
    assert!(
        said.contains(&format!("id={node_id}")),
        "the data partition kept the node id {node_id}: {said}"
    );
    assert!(said.contains("Booted from: rootfs.1 (B)"), "{said}");
    assert!(
        said.contains("slot B: good") && !said.contains("on trial"),
        "the agent marked B good: {said}"
    );
    eprintln!(
        "measured: first boot of slot A ready in {first_ready_s:.1} s (hostname {}), data partition grown: {grown}; slot B (hostname {}) ready in {ready_b_s:.1} s",
        ready_a["hostname"], ready_b["hostname"]
    );
    let bundle_s = bundle_s.map_or("made before".into(), |s| format!("in {s:.0} s"));
    // One line for bench/update.sh.
    let figures = format!(
        "figures: board {board}; bundle {bundle_bytes} bytes {bundle_s}; rauc install into a slot {install_s:.1} s (QEMU TCG); reboot to ready {:.1} s (shutdown {shutdown_s:.1} s + boot of slot B to ready {ready_b_s:.1} s)",
        shutdown_s + ready_b_s
    );
    PiSlotB { card, g, figures }
}
