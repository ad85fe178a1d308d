//! Issue 16, done-when 2, with real RAUC on this machine: two root slots on loop devices, a
//! RAUC `system.conf` whose bootloader is a tiny script keeping its choice in files (RAUC's
//! `custom` backend: `noop` cannot say which slot is primary), RAUC's service on a private
//! D-Bus, bundles made by `rauc bundle` with a test certificate (openssl), manifests signed by
//! update keys (K = 2 of N = 3), served from an HTTP directory on loopback (the seed's
//! `[update] url`). The agent's `cloudy-agent update now` must refuse, with a clear message in
//! `update status` and nothing written to either slot (each loop device hashed before and
//! after):
//! - a bundle whose bytes do not match its signed manifest (tampered in transit),
//! - a manifest changed after signing (its signatures no longer verify: "bad signature"),
//! - a manifest with fewer than K signatures,
//! - a bundle for another board,
//! - a downgrade (the same version is no refusal: nothing newer, nothing written);
//!
//! and install a good one: the inactive slot's bytes become the bundle's image and the
//! bootloader's primary switches to it, the booted slot untouched; booted into it (RAUC's
//! service told so), the agent's RAUC wrapper marks it good.
//!
//! Needs root, `rauc`, `dbus-daemon`, `openssl` and loop devices; says SKIP without them.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudy_model::update::{encode_signing_key, sha256_hex, Channel, Manifest, SignedManifest};
use ed25519_dalek::SigningKey;

const BOARD: &str = "pc-amd64";
const SLOT_BYTES: u64 = 8 << 20;

fn agent() -> String {
    env!("CARGO_BIN_EXE_cloudy-agent").to_string()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Everything the test set up, taken down on drop (also when an assertion fails).
struct Rig {
    dir: tempfile::TempDir,
    loops: Vec<String>,
    dbus: Option<Child>,
    rauc: Option<Child>,
    bus: String,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in [self.rauc.take(), self.dbus.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        // RAUC mounts bundles under its mount prefix; none may stay.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("mnt"))
            .stderr(Stdio::null())
            .status();
        for l in &self.loops {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
    }
}

impl Rig {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn slot_hashes(&self) -> Vec<String> {
        self.loops
            .iter()
            .map(|l| sha256_hex(&std::fs::read(l).unwrap()))
            .collect()
    }

    fn cli(&self, args: &[&str]) -> (String, i32) {
        let o = Command::new(agent())
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .env("CLOUDY_LOG", "warn")
            .output()
            .unwrap();
        (
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            o.status.code().unwrap_or(-1),
        )
    }

    /// RAUC's service again, told that the machine booted `slot` (what a reboot changes).
    fn restart_service(&mut self, slot: &str) {
        if let Some(mut c) = self.rauc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.rauc = Some(
            Command::new("rauc")
                .arg(format!(
                    "--conf={}",
                    self.root().join("etc/rauc/system.conf").display()
                ))
                .args(["service", &format!("--override-boot-slot={slot}")])
                .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        for _ in 0..100 {
            if self.rauc_status()["booted"] == slot {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("RAUC's service did not come back as booted {slot}");
    }

    fn rauc_status(&self) -> serde_json::Value {
        let o = Command::new("rauc")
            .arg(format!(
                "--conf={}",
                self.root().join("etc/rauc/system.conf").display()
            ))
            .args(["status", "--output-format=json"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let line = out.lines().find(|l| l.starts_with('{')).unwrap_or("null");
        serde_json::from_str(line).unwrap()
    }
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Loop devices, the bootloader script, system.conf, the certificate, D-Bus and RAUC's service.
fn rig() -> Option<Rig> {
    if !nix_is_root() {
        eprintln!("SKIP: needs root (loop devices, RAUC's mounts)");
        return None;
    }
    for t in ["rauc", "dbus-daemon", "openssl", "losetup"] {
        if !have(t) {
            eprintln!("SKIP: {t} not installed (apt-get install rauc dbus openssl mount)");
            return None;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let mut rig = Rig {
        dir,
        loops: vec![],
        dbus: None,
        rauc: None,
        bus: format!("unix:path={}", d.join("bus").display()),
    };
    for name in ["slotA.img", "slotB.img"] {
        let p = d.join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(SLOT_BYTES).unwrap();
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&p)
            .output()
            .unwrap();
        if !o.status.success() {
            eprintln!(
                "SKIP: no loop device: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        rig.loops
            .push(String::from_utf8_lossy(&o.stdout).trim().to_string());
    }
    // The bootloader: what it boots next and each slot's state, in files.
    let boot = d.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    let script = d.join("bootloader.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nD={}\ncase \"$1\" in\n  get-primary) cat $D/primary 2>/dev/null || echo A ;;\n  set-primary) echo \"$2\" > $D/primary ;;\n  get-state) cat $D/state.$2 2>/dev/null || echo good ;;\n  set-state) echo \"$3\" > $D/state.$2 ;;\n  get-current) echo A ;;\n  *) exit 1 ;;\nesac\n",
            boot.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=cloudy update test",
            "-keyout",
        ])
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("cert.pem"))
        .stderr(Stdio::null()));
    let conf = format!(
        "[system]\ncompatible=cloudy-{BOARD}\nbootloader=custom\nmountprefix={mnt}\ndata-directory={data}\n\n\
         [handlers]\nbootloader-custom-backend={script}\n\n[keyring]\npath={cert}\n\n\
         [slot.rootfs.0]\ndevice={a}\ntype=raw\nbootname=A\n\n[slot.rootfs.1]\ndevice={b}\ntype=raw\nbootname=B\n",
        mnt = d.join("mnt").display(),
        data = d.join("rauc-data").display(),
        script = script.display(),
        cert = d.join("cert.pem").display(),
        a = rig.loops[0],
        b = rig.loops[1],
    );
    std::fs::create_dir_all(d.join("mnt")).unwrap();
    std::fs::create_dir_all(d.join("rauc-data")).unwrap();
    let root = rig.root();
    std::fs::create_dir_all(root.join("etc/rauc")).unwrap();
    std::fs::write(root.join("etc/rauc/system.conf"), conf).unwrap();
    // A system bus of our own: RAUC's CLI talks to its service over D-Bus.
    std::fs::write(
        d.join("bus.conf"),
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig><type>system</type>\
             <listen>unix:path={}</listen><auth>EXTERNAL</auth><policy context=\"default\">\
             <allow user=\"*\"/><allow own=\"*\"/><allow send_destination=\"*\"/><allow receive_sender=\"*\"/>\
             </policy></busconfig>\n",
            d.join("bus").display()
        ),
    )
    .unwrap();
    rig.dbus = Some(
        Command::new("dbus-daemon")
            .arg(format!("--config-file={}", d.join("bus.conf").display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if d.join("bus").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    rig.rauc = Some(
        Command::new("rauc")
            .arg(format!(
                "--conf={}",
                root.join("etc/rauc/system.conf").display()
            ))
            .args(["service", "--override-boot-slot=A"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &rig.bus)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("rauc-service.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if rig.rauc_status()["booted"] == "A" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rig.rauc_status()["booted"], "A", "RAUC's service answers");
    Some(rig)
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A RAUC bundle (plain format: no device-mapper here) of a 2 MiB image starting with `tag`.
fn bundle(rig: &Rig, name: &str, version: &str, tag: &[u8]) -> (PathBuf, Vec<u8>) {
    let src = rig.path(&format!("src-{name}"));
    std::fs::create_dir_all(&src).unwrap();
    let mut image = tag.to_vec();
    image.resize(2 << 20, 0);
    for (i, b) in image.iter_mut().enumerate().skip(tag.len()) {
        *b = (i * 7 % 251) as u8;
    }
    std::fs::write(src.join("rootfs.img"), &image).unwrap();
    std::fs::write(
        src.join("manifest.raucm"),
        format!(
            "[update]\ncompatible=cloudy-{BOARD}\nversion={version}\n\n[bundle]\nformat=plain\n\n[image.rootfs]\nfilename=rootfs.img\n"
        ),
    )
    .unwrap();
    let out = rig.path(&format!("{name}.raucb"));
    run(Command::new("rauc")
        .arg(format!("--cert={}", rig.path("cert.pem").display()))
        .arg(format!("--key={}", rig.path("key.pem").display()))
        .arg("bundle")
        .arg(&src)
        .arg(&out)
        .stderr(Stdio::null()));
    (out, image)
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n + 40; 32])
}

fn manifest(board: &str, version: &str, bundle_name: &str, bytes: &[u8]) -> Manifest {
    Manifest {
        board: board.into(),
        version: version.parse().unwrap(),
        bundle: bundle_name.into(),
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
        channel: Channel::Stable,
        min_version: "0.1".parse().unwrap(),
    }
}

fn signed(m: Manifest, by: &[u8]) -> SignedManifest {
    let mut s = SignedManifest {
        manifest: m,
        signatures: vec![],
    };
    for k in by {
        s.sign(&key(*k));
    }
    s
}

/// An HTTP directory on loopback: serves whatever `files` holds now (200 or 404; no Range).
struct Dir {
    files: Arc<Mutex<std::collections::BTreeMap<String, Vec<u8>>>>,
    port: u16,
}

fn http_dir() -> Dir {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let files: Arc<Mutex<std::collections::BTreeMap<String, Vec<u8>>>> = Default::default();
    let f = files.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req);
            let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
            let name = path.trim_start_matches("/updates/").to_string();
            let body = f.lock().unwrap().get(&name).cloned();
            let _ = match body {
                Some(b) => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    );
                    s.write_all(&b)
                }
                None => s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    Dir { files, port }
}

#[test]
fn refused_updates_write_nothing_and_a_good_one_switches_the_slot() {
    let Some(mut rig) = rig() else { return };
    let root = rig.root();
    let write = |p: &str, b: &[u8]| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    };
    write(
        "usr/lib/cloudy/release.json",
        format!("{{\"board\": \"{BOARD}\", \"version\": \"1.0\"}}").as_bytes(),
    );
    let public: Vec<String> = (1..=3).map(|i| encode_signing_key(&key(i)).1).collect();
    write(
        "usr/lib/cloudy/update-keys.json",
        serde_json::json!({"threshold": 2, "keys": public})
            .to_string()
            .as_bytes(),
    );
    let dir = http_dir();
    write(
        "boot/firmware/cloudy.toml",
        format!(
            "version = 1\n[update]\nurl = \"http://127.0.0.1:{}/updates/\"\n",
            dir.port
        )
        .as_bytes(),
    );
    let (good_path, good_image) = bundle(&rig, "good", "1.1", b"CLOUDY-1.1");
    let good = std::fs::read(&good_path).unwrap();
    let manifest_name = format!("{BOARD}.manifest.json");
    let offer = |s: &SignedManifest, bundle: &[u8]| {
        let mut f = dir.files.lock().unwrap();
        f.clear();
        f.insert(manifest_name.clone(), s.to_json().into_bytes());
        f.insert(s.manifest.bundle.clone(), bundle.to_vec());
    };
    let before = rig.slot_hashes();
    let primary_before = rig.rauc_status()["boot_primary"].clone();

    let mut tampered = good.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    let mut changed = signed(manifest(BOARD, "1.1", "good.raucb", &good), &[1, 2]);
    changed.manifest.sha256 = sha256_hex(&tampered);
    changed.manifest.size = tampered.len() as u64;
    let other_board = {
        let (p, _) = bundle(&rig, "rpi", "1.1", b"RPI");
        let b = std::fs::read(p).unwrap();
        (signed(manifest("rpi3", "1.1", "rpi.raucb", &b), &[1, 2]), b)
    };
    let cases: Vec<(&str, SignedManifest, Vec<u8>, &str)> = vec![
        (
            "bytes that do not match the signed hash",
            signed(manifest(BOARD, "1.1", "good.raucb", &good), &[1, 2]),
            tampered.clone(),
            "does not match its manifest",
        ),
        (
            "a manifest changed after signing",
            changed,
            tampered.clone(),
            "bad signature(s) from",
        ),
        (
            "fewer than K signatures",
            signed(manifest(BOARD, "1.1", "good.raucb", &good), &[3]),
            good.clone(),
            "only 1 valid signature(s) by the community's update keys, 2 needed",
        ),
        (
            "a bundle for another board",
            other_board.0,
            other_board.1,
            "for board \"rpi3\", this node is \"pc-amd64\"",
        ),
        (
            "a downgrade",
            signed(manifest(BOARD, "0.9", "old.raucb", &good), &[1, 2]),
            good.clone(),
            "not newer than the running 1.0: a downgrade is refused",
        ),
    ];
    for (what, s, bytes, says) in cases {
        offer(&s, &bytes);
        let (out, code) = rig.cli(&["update", "now"]);
        assert_eq!(code, 1, "{what}: refused with exit 1:\n{out}");
        assert!(out.contains(says), "{what}: says {says:?}:\n{out}");
        let (status, _) = rig.cli(&["update", "status"]);
        assert!(
            status.contains("last:     refused:") && status.contains(says),
            "{what}: update status keeps the refusal:\n{status}"
        );
        assert_eq!(
            rig.slot_hashes(),
            before,
            "{what}: nothing written to a slot"
        );
        assert_eq!(rig.rauc_status()["boot_primary"], primary_before, "{what}");
        assert!(
            !root
                .join("var/lib/cloudy/update/bundles/good.raucb")
                .exists(),
            "{what}: nothing unverified under a final name"
        );
        eprintln!(
            "refused {what}: {}",
            out.lines().find(|l| l.starts_with("last:")).unwrap_or("")
        );
    }

    // The release that runs, offered again: nothing newer (no refusal: the url keeps serving
    // what every updated node runs), nothing written.
    offer(
        &signed(manifest(BOARD, "1.0", "same.raucb", &good), &[2, 3]),
        &good,
    );
    let (out, code) = rig.cli(&["update", "now"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("last:     none: nothing newer than 1.0 offered"),
        "{out}"
    );
    assert_eq!(
        rig.slot_hashes(),
        before,
        "the same version: nothing written"
    );

    // The good one: verified, handed to RAUC, written to the other slot, made primary.
    offer(
        &signed(manifest(BOARD, "1.1", "good.raucb", &good), &[1, 3]),
        &good,
    );
    let t0 = std::time::Instant::now();
    let (out, code) = rig.cli(&["update", "now"]);
    eprintln!("installed in {:?}:\n{out}", t0.elapsed());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("version 1.1 installed into the other slot"),
        "{out}"
    );
    let after = rig.slot_hashes();
    assert_eq!(after[0], before[0], "the booted slot A is untouched");
    assert_ne!(after[1], before[1], "the inactive slot B was written");
    let b = std::fs::read(&rig.loops[1]).unwrap();
    assert_eq!(
        &b[..good_image.len()],
        &good_image[..],
        "slot B holds the bundle's image"
    );
    let st = rig.rauc_status();
    assert_eq!(
        st["boot_primary"], "rootfs.1",
        "the next boot is slot B: {st}"
    );
    assert_eq!(
        std::fs::read_to_string(rig.path("boot/primary"))
            .unwrap()
            .trim(),
        "B"
    );
    let (status, _) = rig.cli(&["update", "status"]);
    assert!(
        status.contains("installed: 1.1 (from 1.0)") && status.contains("held:     1.1"),
        "{status}"
    );

    // "Reboot" into slot B (RAUC's service told it booted B), where the agent marks the booted
    // slot good through the same RAUC wrapper: the bootloader's state for B turns good.
    assert_eq!(
        std::fs::read_to_string(rig.path("boot/state.B"))
            .unwrap()
            .trim(),
        "bad",
        "RAUC counts the new slot unconfirmed until it is marked good"
    );
    rig.restart_service("B");
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &rig.bus);
    let sys = cloudy_agent::os::system::System::new(rig.root());
    let rauc = cloudy_agent::update::rauc::Rauc::find(&sys).expect("a system.conf");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(rauc.mark_good()).unwrap();
    assert_eq!(
        std::fs::read_to_string(rig.path("boot/state.B"))
            .unwrap()
            .trim(),
        "good"
    );
    let st = rt.block_on(rauc.status()).unwrap();
    assert_eq!(st.booted.as_deref(), Some("B"), "{st:?}");
}
