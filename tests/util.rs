//! Helpers for the end-to-end tests: where the checkout and the built tool are, and whether
//! this machine can run them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the checkout")
        .to_path_buf()
}

/// The release cloudy-image that `make test` builds before running these tests.
pub fn image_bin() -> PathBuf {
    let p = std::env::var_os("CLOUDY_IMAGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/cloudy-image"));
    assert!(
        p.exists(),
        "{} missing: run `make test` (it builds the tool first)",
        p.display()
    );
    p
}

/// End-to-end tests build images as root with host tools. None of them skips itself: those
/// `make test` runs are `#[ignore]`d unless the `e2e` feature is on (`make test` turns it on),
/// and those only `make e2e` runs are always `#[ignore]`d (`make e2e` passes
/// `--include-ignored`), so a test that did not run is counted as ignored, never as passed.
pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "end-to-end image tests need root (mmdebstrap, chroot)"
    );
}

/// `make e2e` (CLOUDY_E2E_ALL=1): tests that `make test` also runs check more, e.g. boot a
/// customised SD image a second time.
pub fn all_boards() -> bool {
    std::env::var("CLOUDY_E2E_ALL").is_ok_and(|v| v == "1")
}

/// Runs cloudy-image from the checkout with the shared cache; returns its output.
pub fn cloudy_image(args: &[&str]) -> Output {
    let out = Command::new(image_bin())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run cloudy-image");
    eprintln!(
        "$ cloudy-image {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .expect("json")
}

/// Output directory for a test, under target/ so `cargo clean` takes it away.
pub fn out_dir(name: &str) -> PathBuf {
    let d = repo().join("target/e2e").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Files under `dir` whose names end in `.iso` (a final output).
pub fn isos(dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "iso") {
                v.push(p);
            }
        }
    }
    v
}

/// A QEMU guest whose serial console is this process's to read and type into, under an outer
/// `timeout` (a wedged TCG guest never exits by itself). Killed when dropped.
pub struct Guest {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    console: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    started: std::time::Instant,
}

impl Guest {
    /// Starts `qemu` (its arguments given, `-serial stdio` added) under `timeout limit_s`;
    /// the console is also written to `log`.
    pub fn start(qemu: &str, args: &[String], limit_s: u64, log: &Path) -> Guest {
        use std::io::{Read, Write};
        use std::process::Stdio;
        let mut child = Command::new("timeout")
            .args(["--kill-after=10", &limit_s.to_string(), qemu])
            .args(args)
            .args(["-serial", "stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {qemu}: {e}"));
        let console = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut out = child.stdout.take().unwrap();
        let (c, log) = (console.clone(), log.to_path_buf());
        let reader = std::thread::spawn(move || {
            let mut f = std::fs::File::create(&log).ok();
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(f) = f.as_mut() {
                    let _ = f.write_all(&buf[..n]);
                }
                c.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
            }
        });
        Guest {
            stdin: child.stdin.take(),
            child,
            console,
            reader: Some(reader),
            started: std::time::Instant::now(),
        }
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Waits until the console holds `needle` (after byte `from`); returns the console then.
    /// Panics with the console's tail after `secs`, or when QEMU has exited.
    pub fn wait_for(&mut self, needle: &str, from: usize, secs: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let c = self.console();
            if c.get(from..).is_some_and(|t| t.contains(needle)) {
                return c;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || std::time::Instant::now() > deadline {
                let tail: String = c
                    .chars()
                    .rev()
                    .take(3000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "no {needle:?} on the console after {:.0} s (QEMU {}); tail:\n{tail}",
                    self.seconds(),
                    match exited {
                        Some(s) => format!("exited: {s}"),
                        None => "still running".into(),
                    }
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Types a line on the serial console.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let i = self.stdin.as_mut().expect("console open");
        let _ = i.write_all(format!("{line}\n").as_bytes());
        let _ = i.flush();
    }

    /// Runs `script` in the console's root shell (the guest booted with
    /// `cloudy.console-login`) and returns what it printed between two markers. The markers
    /// are typed split in two so the shell's echo of the command never matches them.
    pub fn shell(&mut self, script: &str, secs: u64) -> String {
        // The shell may not be up yet: knock until it answers.
        let from = self.console().len();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            self.send("echo \"==\"\"UP\"");
            std::thread::sleep(std::time::Duration::from_secs(2));
            if self.console()[from..].contains("==UP\n") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no shell on the console: {}",
                &self.console()[from..]
            );
        }
        let from = self.console().len();
        self.send(&format!(
            "echo \"==\"\"BEGIN\"; {script}; echo \"==\"\"END\""
        ));
        let c = self.wait_for("==END\n", from, secs);
        let body = &c[from..];
        let start = body.find("==BEGIN\n").map(|i| i + 8).unwrap_or(0);
        let end = body.rfind("==END\n").unwrap_or(body.len());
        body[start..end].to_string()
    }

    /// Waits for QEMU to exit (the guest powered off, or `-no-reboot` on a reboot).
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "QEMU still running after {secs} s; console tail: {}",
                self.console()
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<String>()
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // `timeout` passes the TERM on to QEMU.
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// The kernel and initrd of a built ISO (for booting it with a kernel command line of one's
/// own, as `cloudy-image boot` does), extracted into `dir`.
pub fn iso_kernel(iso: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let (k, i) = (dir.join("vmlinuz"), dir.join("initrd.img"));
    let o = Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", "/live/vmlinuz"])
        .arg(&k)
        .args(["-extract", "/live/initrd.img"])
        .arg(&i)
        .output()
        .expect("xorriso");
    assert!(o.status.success(), "{}", text(&o));
    (k, i)
}

/// The `{"cloudy":"ready",...}` line on a console after byte `from`, parsed.
pub fn ready_line(console: &str, from: usize) -> Option<serde_json::Value> {
    console[from..]
        .lines()
        .filter_map(|l| l.find("{\"cloudy\":\"ready\"").map(|i| &l[i..]))
        .find_map(|l| serde_json::from_str(l).ok())
}

/// Builds `board` into `out` without the verify boot (the test boots it itself); panics with
/// the build's output when it fails.
pub fn build_unverified(board: &str, out: &Path) {
    let o = cloudy_image(&[
        "build",
        "--board",
        board,
        "--out",
        out.to_str().unwrap(),
        "--no-verify",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

/// A built ISO, its kernel and initrd (extracted, to boot with a command line of one's own)
/// and its ISOLINUX menu.
pub struct Iso {
    pub iso: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub isolinux: String,
}

impl Iso {
    /// Extracts the kernel, initrd and menu of `iso` into `dir`.
    pub fn read(iso: &Path, dir: &Path) -> Iso {
        let (kernel, initrd) = iso_kernel(iso, dir);
        let cfg = dir.join("isolinux.cfg");
        let o = Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(iso)
            .args(["-extract", "/isolinux/isolinux.cfg"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        Iso {
            iso: iso.to_path_buf(),
            kernel,
            initrd,
            isolinux: std::fs::read_to_string(&cfg).unwrap(),
        }
    }

    /// The kernel command line of the ISOLINUX entry `label`, as the menu would boot it.
    pub fn append(&self, label: &str) -> String {
        let entry = self
            .isolinux
            .split(&format!("label {label}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no label {label} in isolinux.cfg:\n{}", self.isolinux));
        let line = entry
            .lines()
            .find_map(|l| l.trim().strip_prefix("append "))
            .expect("append line");
        line.split_whitespace()
            .filter(|w| !w.starts_with("initrd="))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// QEMU's media arguments for booting this ISO from a CD drive with its own kernel and
    /// initrd passed in and the kernel command line `append`.
    pub fn cdrom(&self, append: &str) -> Vec<String> {
        vec![
            "-cdrom".into(),
            self.iso.display().to_string(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            append.to_string(),
        ]
    }
}

/// A community's release keys and a recipe that lists them, for building releases N, N+1...
/// of one recipe (README "Updates"): an update key (ed25519, signs manifests), RAUC's signing
/// key and certificate, and a copy of recipes/ whose `[update]` names them.
pub struct Community {
    pub dir: PathBuf,
    pub recipe: PathBuf,
    pub update_key: PathBuf,
    pub update_public: String,
    pub rauc_key: PathBuf,
    pub rauc_cert: PathBuf,
}

impl Community {
    /// New keys (`cloudy-image keys new`, `keys new --rauc`) and the recipe copy, under `dir`.
    pub fn new(dir: &Path) -> Community {
        let keys = dir.join("keys");
        let o = cloudy_image(&[
            "keys",
            "new",
            "--out",
            keys.to_str().unwrap(),
            "--name",
            "release",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let update_public = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let o = cloudy_image(&["keys", "new", "--out", keys.to_str().unwrap(), "--rauc"]);
        assert!(o.status.success(), "{}", text(&o));
        let recipes = dir.join("recipes");
        std::fs::create_dir_all(&recipes).unwrap();
        for e in std::fs::read_dir(repo().join("recipes")).unwrap().flatten() {
            std::fs::copy(e.path(), recipes.join(e.file_name())).unwrap();
        }
        let recipe = recipes.join("cloudy.toml");
        let rauc_cert = keys.join("rauc.cert.pem");
        let t = std::fs::read_to_string(&recipe).unwrap();
        assert!(
            t.contains("\nkeys = []\n"),
            "recipes/cloudy.toml's [update] has no `keys = []`"
        );
        let t = t.replace(
            "\nkeys = []\n",
            &format!(
                "\nkeys = [\"{update_public}\"]\nrauc_keyring = \"{}\"\n",
                rauc_cert.display()
            ),
        );
        std::fs::write(&recipe, t).unwrap();
        Community {
            dir: dir.to_path_buf(),
            recipe,
            update_key: keys.join("release.key"),
            update_public,
            rauc_key: keys.join("rauc.key.pem"),
            rauc_cert,
        }
    }

    /// Builds `board` at release `version` into `out` (no verify boot).
    pub fn build(&self, board: &str, version: &str, out: &Path) {
        let o = cloudy_image(&[
            "build",
            "--board",
            board,
            "--recipe",
            self.recipe.to_str().unwrap(),
            "--release-version",
            version,
            "--out",
            out.to_str().unwrap(),
            "--no-verify",
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }

    /// The update bundle of `board` at `version` (signed by the community's key) in
    /// `out`/update/; returns the bundle and its manifest.
    pub fn bundle(&self, board: &str, version: &str, out: &Path) -> (PathBuf, PathBuf) {
        let o = cloudy_image(&[
            "bundle",
            "--board",
            board,
            "--recipe",
            self.recipe.to_str().unwrap(),
            "--release-version",
            version,
            "--out",
            out.to_str().unwrap(),
            "--rauc-key",
            self.rauc_key.to_str().unwrap(),
            "--rauc-cert",
            self.rauc_cert.to_str().unwrap(),
            "--key",
            self.update_key.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let dir = out.join("update");
        (
            dir.join(format!("cloudy-{board}-{version}.raucb")),
            dir.join(format!("{board}.manifest.json")),
        )
    }
}

/// A raw disk image at `path` holding `files` in an ext4 filesystem labelled `label` (how a
/// test hands bundles to a guest without a network).
pub fn files_disk(path: &Path, label: &str, files: &[&Path]) {
    let dir = path.with_extension("d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = 64u64 << 20;
    for f in files {
        let to = dir.join(f.file_name().unwrap());
        if std::fs::hard_link(f, &to).is_err() {
            std::fs::copy(f, &to).unwrap();
        }
        bytes += std::fs::metadata(f).unwrap().len() * 11 / 10;
    }
    let _ = std::fs::remove_file(path);
    let o = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", label, "-d"])
        .arg(&dir)
        .arg(path)
        .arg(format!("{}k", bytes / 1024))
        .output()
        .expect("mke2fs");
    assert!(o.status.success(), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// QEMU arguments for a PC guest under TCG: no display, no reboot (a guest's reboot ends
/// QEMU, and the test starts the next boot), a user network restricted to the guest, `media`
/// and `disks` as virtio drives.
pub fn pc_qemu_args(media: &[String], disks: &[&Path]) -> Vec<String> {
    let mut a: Vec<String> = [
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
        "-display",
        "none",
        "-no-reboot",
        "-nic",
        "user,model=virtio-net-pci,restrict=on",
    ]
    .map(String::from)
    .to_vec();
    a.extend(media.iter().cloned());
    for d in disks {
        a.push("-drive".into());
        a.push(format!("file={},format=raw,if=virtio", d.display()));
    }
    a
}

/// Installs a built ISO onto the blank `disk` through its boot menu's "Install Cloudy to
/// disk" entry (plus a console shell, which the installed node keeps), until the installer
/// reboots. Returns the ready line of the installing (live) boot: the installed node is that
/// node.
pub fn install_from_iso(qemu: &str, iso: &Iso, disk: &Path, log: &Path) -> serde_json::Value {
    let append = format!("{} cloudy.console-login", iso.append("install"));
    install_booted(qemu, &pc_qemu_args(&iso.cdrom(&append), &[disk]), disk, log)
}

/// Boots QEMU with `args` (a live system in install mode onto `disk`) until the installer is
/// done and the guest exits; returns the installing boot's ready line.
pub fn install_booted(qemu: &str, args: &[String], disk: &Path, log: &Path) -> serde_json::Value {
    let mut g = Guest::start(qemu, args, 3600, log);
    let c = g.wait_for("{\"cloudy\":\"ready\"", 0, 900);
    let ready = ready_line(&c, 0).expect("ready line");
    g.wait_for("] installed to ", 0, 2400);
    let st = g.wait_exit(600);
    eprintln!(
        "installed to {} after {:.0} s ({st})",
        disk.display(),
        g.seconds()
    );
    ready
}

/// A LAN for QEMU guests on this machine: a network namespace holding a bridge (the host's
/// side at 10.`net`.0.1/24), taps `tap0`..`tapN-1` on it and dnsmasq for DHCP only. Guests
/// started in the namespace ([`Lan::guest`]) reach each other and the bridge's address, and
/// nothing outside. The namespace goes (dnsmasq and whatever runs in it killed) when dropped.
pub struct Lan {
    pub ns: String,
    /// The bridge's address: where a program the test runs in the namespace listens.
    pub host: String,
    dnsmasq: std::process::Child,
}

impl Lan {
    pub fn new(ns: &str, net: u8, taps: usize, dir: &Path) -> Lan {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
        let o = Command::new("ip")
            .args(["netns", "add", ns])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let host = format!("10.{net}.0.1");
        let mut script = format!(
            "ip link set lo up; ip link add br0 type bridge; ip addr add {host}/24 dev br0; ip link set br0 up"
        );
        for t in 0..taps {
            script.push_str(&format!(
                "; ip tuntap add tap{t} mode tap; ip link set tap{t} master br0; ip link set tap{t} up"
            ));
        }
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-euc", &script])
            .output()
            .unwrap();
        assert!(o.status.success(), "{script}: {}", text(&o));
        let dnsmasq = Command::new("ip")
            .args(["netns", "exec", ns, "dnsmasq", "--keep-in-foreground"])
            .args(["--interface=br0", "--bind-interfaces", "--port=0"])
            .arg(format!("--dhcp-range=10.{net}.0.10,10.{net}.0.50,12h"))
            .arg("--pid-file=")
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base; make deps installs it)");
        Lan {
            ns: ns.to_string(),
            host,
            dnsmasq,
        }
    }

    /// A PC guest under TCG (one CPU: guests share the machine) whose only network is an e1000
    /// on `tap`, with `media` (e.g. `-boot c`) and `disks` as virtio drives.
    #[allow(clippy::too_many_arguments)]
    pub fn guest(
        &self,
        qemu: &str,
        tap: &str,
        mac: &str,
        media: &[String],
        disks: &[&Path],
        limit_s: u64,
        log: &Path,
    ) -> Guest {
        let mut a: Vec<String> = [
            "netns",
            "exec",
            &self.ns,
            qemu,
            "-accel",
            "tcg",
            "-machine",
            "pc",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "1",
            "-display",
            "none",
            "-no-reboot",
        ]
        .map(String::from)
        .to_vec();
        a.push("-netdev".into());
        a.push(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
        a.push("-device".into());
        a.push(format!("e1000,netdev=n0,mac={mac}"));
        a.extend(media.iter().cloned());
        for d in disks {
            a.push("-drive".into());
            a.push(format!("file={},format=raw,if=virtio", d.display()));
        }
        Guest::start("ip", &a, limit_s, log)
    }

    /// Starts `program` with `args` inside the namespace (killed with it at the latest).
    pub fn spawn(&self, program: &str, args: &[&str]) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, program])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} in {}: {e}", self.ns))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = self.dnsmasq.kill();
        let _ = self.dnsmasq.wait();
        // Whatever still runs in the namespace (a server a test started) goes with it.
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a process inside the test's own namespace.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

impl Guest {
    /// Whether QEMU has exited (the guest powered off, or rebooted under `-no-reboot`).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}
