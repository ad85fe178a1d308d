//! Issue 16, the image side: an installed PC node (pc-686-pae, pc-amd64) takes a signed A/B update and falls
//! back by itself from one that never gets ready.
//!
//! Real builds (`cloudy-image build` at release N, `cloudy-image bundle` at N+1), a real
//! install (the ISO's "Install Cloudy to disk" entry onto a blank disk), real RAUC on the node
//! (`rauc install` from the serial console's root shell, as the agent runs it), real GRUB
//! switching slots; QEMU under TCG, every boot under an outer `timeout`. The bundles reach the
//! guest on a second small disk: fetching them over the VPN from another member is the
//! agent's part (`Community`, `install_from_iso` and `files_disk` in util.rs are there to be
//! reused for that).

use std::path::{Path, PathBuf};
use std::process::Command;

use cloudy_tests::*;

const N: &str = "1.0.0";
const N1: &str = "1.0.1";
const BROKEN: &str = "1.0.2";
/// Seconds for a TCG boot of the installed disk to ready; for `rauc install` of a slot.
const READY_S: u64 = 900;
const INSTALL_S: u64 = 2400;

const SEED: &str = "version = 1\n[node]\nname = \"updater\"\n[community]\nname = \"upd\"\nkey = \"correct horse battery staple 42\"\n";

/// The ISO of release N of `board` with the test's seed in it.
fn release_n(c: &Community, board: &str, out: &Path) -> Iso {
    c.build(board, N, out);
    let iso = out.join(format!("{board}/cloudy-{board}.iso"));
    let seed = out.join("seed.toml");
    std::fs::write(&seed, SEED).unwrap();
    let o = cloudy_image(&[
        "customise",
        iso.to_str().unwrap(),
        "--seed",
        seed.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    Iso::read(&iso, out)
}

/// A bundle whose system never gets ready: `good`'s root filesystem with the agent replaced by
/// /bin/false (debugfs, no mounts), re-bundled at `version` with the community's RAUC key, so
/// RAUC on the node takes it as any other.
fn broken_bundle(c: &Community, board: &str, good: &Path, version: &str, out: &Path) -> PathBuf {
    let dir = out.join("broken");
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("rauc")
        .arg(format!("--keyring={}", c.rauc_cert.display()))
        .arg("extract")
        .arg(good)
        .arg(&dir));
    let img = dir.join("rootfs.ext4");
    for req in [
        "rm /usr/bin/cloudy-agent",
        "symlink /usr/bin/cloudy-agent /bin/false",
    ] {
        run(Command::new("debugfs").args(["-w", "-R", req]).arg(&img));
    }
    std::fs::write(
        dir.join("manifest.raucm"),
        format!(
            "[update]\ncompatible=cloudy-{board}\nversion={version}\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.ext4\n"
        ),
    )
    .unwrap();
    let bundle = out.join(format!("cloudy-{board}-{version}.raucb"));
    let _ = std::fs::remove_file(&bundle);
    run(Command::new("rauc")
        .arg("bundle")
        .arg(format!("--cert={}", c.rauc_cert.display()))
        .arg(format!("--key={}", c.rauc_key.display()))
        .arg(&dir)
        .arg(&bundle));
    let _ = std::fs::remove_dir_all(&dir);
    bundle
}

fn run(c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(o.status.success(), "{c:?}: {}", text(&o));
    text(&o)
}

fn sha256(p: &Path) -> String {
    run(Command::new("sha256sum").arg(p))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// One boot of the installed disk (with the bundles' disk beside it).
fn boot_disk(qemu: &str, disk: &Path, bundles: &Path, log: &Path) -> Guest {
    Guest::start(
        qemu,
        &pc_qemu_args(&["-boot".into(), "c".into()], &[disk, bundles]),
        READY_S + INSTALL_S + 600,
        log,
    )
}

/// What a booted node says of itself: its ready line (None if `expect_ready` is false), the
/// slot GRUB chose, its release, RAUC's view, where /var/lib/cloudy is.
struct Seen {
    ready: Option<serde_json::Value>,
    grub: String,
    release: serde_json::Value,
    rauc: serde_json::Value,
    shell: String,
}

fn look(g: &mut Guest, expect_ready: bool) -> Seen {
    let c = g.wait_for("cloudy-boot: ", 0, 300);
    let grub = c[c.find("cloudy-boot: ").unwrap()..]
        .lines()
        .next()
        .unwrap()
        .to_string();
    eprintln!("GRUB after {:.0} s: {grub}", g.seconds());
    let ready = if expect_ready {
        let c = g.wait_for("{\"cloudy\":\"ready\"", 0, READY_S);
        let r = ready_line(&c, 0).expect("ready line");
        eprintln!("ready after {:.0} s: {r}", g.seconds());
        Some(r)
    } else {
        None
    };
    let shell = g.shell(
        "echo \"release $(cat /usr/lib/cloudy/release.json)\"; \
         echo \"rauc $(rauc status --output-format=json 2>/dev/null)\"; \
         echo \"data $(findmnt -no SOURCE,FSTYPE /var/lib/cloudy)\"; \
         echo \"agent $(systemctl is-active cloudy-agent)\"; \
         grep -o 'rauc.slot=[AB]' /proc/cmdline; grub-editenv /boot/cloudy/grub/grubenv list",
        600,
    );
    let field = |prefix: &str| -> serde_json::Value {
        let line = shell
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{shell}"));
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{prefix}{line}: {e}"))
    };
    Seen {
        ready,
        grub,
        release: field("release "),
        rauc: field("rauc "),
        shell,
    }
}

/// `rauc install` of `bundle` (on the bundles' disk) from the console; returns its seconds.
fn rauc_install(g: &mut Guest, bundle: &str) -> u64 {
    let out = g.shell(
        &format!(
            "mkdir -p /run/b; mountpoint -q /run/b || mount -o ro LABEL=bundles /run/b; \
             s=$(date +%s); rauc install /run/b/{bundle} >/run/rauc.log 2>&1; \
             echo \"rauc-rc $? $(( $(date +%s) - s ))\"; tail -n 5 /run/rauc.log"
        ),
        INSTALL_S,
    );
    let rc: Vec<&str> = out
        .lines()
        .find_map(|l| l.strip_prefix("rauc-rc "))
        .unwrap_or_else(|| panic!("no rauc-rc in:\n{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(rc[0], "0", "rauc install {bundle} failed:\n{out}");
    eprintln!("rauc install {bundle}: {} s", rc[1]);
    rc[1].parse().unwrap()
}

fn reboot(g: &mut Guest) {
    g.send("sync; systemctl reboot");
    let st = g.wait_exit(300);
    eprintln!("rebooting after {:.0} s ({st})", g.seconds());
}

/// Done-when 1 (by hand, from a disk) and 3 on pc-686-pae (see `updates_and_falls_back`).
#[test]
#[ignore = "FAILS until install-to-disk lays out the A/B slots (issue 16, README Updates); make e2e skips it; ~1.5 h under TCG"]
fn pc_686_pae_updates_to_the_other_slot_and_falls_back_from_a_release_that_never_gets_ready() {
    updates_and_falls_back("pc-686-pae", "qemu-system-i386");
}

/// The same on pc-amd64.
#[test]
#[ignore = "FAILS until install-to-disk lays out the A/B slots (issue 16, README Updates); make e2e skips it; ~1.5 h under TCG"]
fn pc_amd64_updates_to_the_other_slot_and_falls_back_from_a_release_that_never_gets_ready() {
    updates_and_falls_back("pc-amd64", "qemu-system-x86_64");
}

/// Release N installed onto a blank disk boots slot A; `rauc install` of the N+1 bundle
/// writes slot B, and the next boot is slot B at N+1, the same node (id on the data
/// partition). Then a release whose agent never starts is installed (into A, the other slot
/// now), booted once, and the boot after that is slot B at N+1 again, with nothing but reboots.
fn updates_and_falls_back(board: &str, qemu: &str) {
    require_root();
    let out = out_dir(&format!("update-{board}"));
    let c = Community::new(&out);
    let t = std::time::Instant::now();
    let iso = release_n(&c, board, &out);
    eprintln!("release {N} built in {:.0} s", t.elapsed().as_secs_f64());
    let t = std::time::Instant::now();
    let (bundle, manifest) = c.bundle(board, N1, &out);
    eprintln!(
        "bundle {N1} in {:.0} s: {} bytes",
        t.elapsed().as_secs_f64(),
        std::fs::metadata(&bundle).unwrap().len()
    );
    // The manifest beside it names this bundle exactly, and carries the community's signature.
    let m = read_json(&manifest);
    assert_eq!(m["manifest"]["board"], board, "{m}");
    assert_eq!(m["manifest"]["version"], N1, "{m}");
    assert_eq!(m["manifest"]["min_version"], N, "{m}");
    assert_eq!(m["manifest"]["sha256"], sha256(&bundle), "{m}");
    assert_eq!(
        m["manifest"]["size"],
        std::fs::metadata(&bundle).unwrap().len(),
        "{m}"
    );
    assert_eq!(m["signatures"][0]["key"], c.update_public.as_str(), "{m}");
    let broken = broken_bundle(&c, board, &bundle, BROKEN, &out);
    let bundles = out.join("bundles.raw");
    files_disk(&bundles, "bundles", &[&bundle, &broken]);

    let disk = out.join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    let installing = install_from_iso(qemu, &iso, &disk, &out.join("install-console.log"));

    // Boot 1: slot A, release N.
    let mut g = boot_disk(qemu, &disk, &bundles, &out.join("boot1-console.log"));
    let a = look(&mut g, true);
    let ready_a = a.ready.clone().unwrap();
    assert!(a.grub.contains("slot A"), "{}", a.grub);
    assert_eq!(a.release["version"], N, "{}", a.shell);
    assert_eq!(a.release["board"], board, "{}", a.shell);
    assert_eq!(a.rauc["booted"], "A", "{}", a.shell);
    assert!(a.shell.contains("data /dev/vda5 ext4"), "{}", a.shell);
    assert_eq!(ready_a["node_id"], installing["node_id"], "{ready_a}");
    let install_s = rauc_install(&mut g, &bundle.file_name().unwrap().to_string_lossy());
    reboot(&mut g);
    drop(g);

    // Boot 2: slot B, release N+1, the same node; marked good as the agent will once ready.
    let mut g = boot_disk(qemu, &disk, &bundles, &out.join("boot2-console.log"));
    let b = look(&mut g, true);
    let ready_b = b.ready.clone().unwrap();
    let downtime = g.seconds();
    assert!(b.grub.contains("slot B"), "{}", b.grub);
    assert_eq!(b.release["version"], N1, "{}", b.shell);
    assert_eq!(b.rauc["booted"], "B", "{}", b.shell);
    assert_eq!(ready_b["node_id"], ready_a["node_id"], "{ready_b}");
    assert_eq!(ready_b["hostname"], "updater", "{ready_b}");
    let marked = g.shell("rauc status mark-good; echo \"mark-rc $?\"", 300);
    assert!(marked.contains("mark-rc 0"), "{marked}");
    let broken_s = rauc_install(&mut g, &broken.file_name().unwrap().to_string_lossy());
    reboot(&mut g);
    drop(g);

    // Boot 3: slot A now holds the broken release: GRUB gives it its one try; no ready.
    let mut g = boot_disk(qemu, &disk, &bundles, &out.join("boot3-console.log"));
    let x = look(&mut g, false);
    assert!(x.grub.contains("slot A"), "{}", x.grub);
    assert_eq!(x.release["version"], BROKEN, "{}", x.shell);
    assert!(
        !g.console().contains("{\"cloudy\":\"ready\""),
        "the broken release got ready"
    );
    assert!(!x.shell.contains("agent active"), "{}", x.shell);
    // Nothing but a reboot (power cycle: the guest is killed).
    drop(g);

    // Boot 4: GRUB falls back to slot B by itself: N+1, the same node.
    let mut g = boot_disk(qemu, &disk, &bundles, &out.join("boot4-console.log"));
    let back = look(&mut g, true);
    let ready_back = back.ready.clone().unwrap();
    drop(g);
    assert!(back.grub.contains("slot B"), "{}", back.grub);
    assert_eq!(back.release["version"], N1, "{}", back.shell);
    assert_eq!(back.rauc["booted"], "B", "{}", back.shell);
    assert_eq!(ready_back["node_id"], ready_a["node_id"], "{ready_back}");
    eprintln!(
        "figures: bundle {} bytes; rauc install into a slot {install_s} s (broken release {broken_s} s); reboot to ready on slot B {downtime:.0} s",
        std::fs::metadata(&bundle).unwrap().len()
    );
}
