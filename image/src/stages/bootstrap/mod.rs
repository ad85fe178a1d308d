//! bootstrap: a Debian root filesystem for the board's architecture made by
//! mmdebstrap, cached under a key of everything that decides its content.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::board::Board;
use crate::cache;
use crate::cmd::{self, CmdError, Log};
use crate::progress::Step;
use crate::recipe::{Loaded, Security};

mod error;
mod hooks;
mod package;
mod pip;
mod wheel;

use error::io;
pub use error::BootstrapError;
use hooks::{hook, sh_quote, INITRAMFS_HOOK, TRIM_HOOK};
pub use package::{Origin, Package};
use pip::{parse_pip, pip_entries, pip_hooks, Plan};

/// Bumped whenever the hooks below change what a rootfs contains, so old caches are not reused.
// 3: a `[[pip]]` venv's closure is checked and listed with where each part came from.
// 4: the trims of trim.sh (Mesa's drivers and LLVM unwritten, pip left out of the venvs).
const BOOTSTRAP_FORMAT: u32 = 4;

/// What every node needs besides the recipe's packages.
const BASE_PACKAGES: &[&str] = &["systemd-sysv", "udev", "zstd", "kmod"];
/// What a live system (ISO, PXE) adds: it boots from a squashfs, not a partition.
const LIVE_PACKAGES: &[&str] = &["live-boot"];

/// Documentation, manual pages and translations: nobody reads them on a node, and they are
/// ~60 MB of a 500 MB rootfs.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
];

/// What the cache keeps beside each rootfs; the manifest copies it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub key: String,
    pub suite: String,
    pub arch: String,
    pub mirror: String,
    /// "used", "off", or "skipped: <why>".
    pub security: String,
    pub packages: Vec<Package>,
    /// Python distributions installed from PyPI by the recipe's `[[pip]]` entries.
    #[serde(default)]
    pub pip: Vec<Package>,
    pub seconds: f64,
}

pub struct Rootfs {
    pub dir: PathBuf,
    pub meta: Meta,
    pub cached: bool,
}

#[derive(Serialize)]
struct KeyInput<'a> {
    format: u32,
    suite: &'a str,
    arch: &'a str,
    mirror: &'a str,
    security_mirror: Option<String>,
    components: &'a [String],
    packages: Vec<String>,
    epoch: u64,
    // Only in keys of boards that set them, so adding them kept existing caches valid.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    board_components: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    initramfs_modules: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initramfs: Option<crate::board::InitramfsPolicy>,
    /// (venv, requirements text) of the recipe's `[[pip]]` entries for this arch.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pip: Vec<(&'a str, &'a str)>,
    /// Pins built on the host, with their source hashes (see wheel.rs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pip_build: Vec<&'a crate::recipe::PipBuild>,
}

pub fn package_set(board: &Board, recipe: &Loaded) -> Vec<String> {
    let mut p: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
    if board.format != crate::board::Format::Sdcard {
        p.extend(LIVE_PACKAGES.iter().map(|s| s.to_string()));
    }
    p.push(board.kernel_package.clone());
    p.extend(board.packages.iter().cloned());
    p.extend(recipe.recipe.packages.iter().cloned());
    if let Some(extra) = recipe.recipe.packages_by_format.get(&board.format) {
        p.extend(extra.iter().cloned());
    }
    let pip = pip_entries(board, recipe);
    if !pip.is_empty() {
        p.push("python3-venv".into());
    }
    for (e, _) in pip {
        p.extend(e.debian.iter().cloned());
    }
    p.sort();
    p.dedup();
    p
}

fn key(board: &Board, recipe: &Loaded, with_security: bool) -> String {
    let r = &recipe.recipe;
    let input = KeyInput {
        format: BOOTSTRAP_FORMAT,
        suite: &r.suite,
        arch: board.arch.debian(),
        mirror: &r.mirror,
        security_mirror: with_security.then(|| r.security_mirror()),
        components: &r.components,
        packages: package_set(board, recipe),
        epoch: r.source_date_epoch,
        board_components: &board.components,
        initramfs_modules: board.initramfs_modules.as_deref(),
        initramfs: board.initramfs,
        pip: pip_entries(board, recipe)
            .into_iter()
            .map(|(e, text)| (e.venv.as_str(), text))
            .collect(),
        pip_build: pip_entries(board, recipe)
            .into_iter()
            .flat_map(|(e, _)| &e.build)
            .collect(),
    };
    cache::sha256_bytes(&serde_json::to_vec(&input).expect("key serialises"))[..24].to_string()
}

/// Returns the cached rootfs for this board and recipe, making it if needed.
pub fn run(
    board: &Board,
    recipe: &Loaded,
    cache_dir: &Path,
    log: &Log,
    step: &Step,
) -> Result<Rootfs, BootstrapError> {
    let dir = cache_dir.join("bootstrap");
    std::fs::create_dir_all(&dir).map_err(|source| io("creating", &dir, source))?;
    let attempts: &[bool] = match recipe.recipe.security {
        Security::Off => &[false],
        Security::Required => &[true],
        Security::Optional => &[true, false],
    };
    let keys: Vec<String> = attempts
        .iter()
        .map(|&with_security| key(board, recipe, with_security))
        .collect();
    // The wheels built on the host are made beside mmdebstrap, not before it (see pip::Job);
    // a rootfs already cached needs none. One builder serves every attempt: an attempt that
    // fails early (a broken security index) does not wait for it.
    let plan = Plan::new(board, recipe, &dir, &keys[0]);
    let build_wheels = !plan.is_empty() && !keys.iter().any(|k| cached(&dir, k).is_some());
    let result = std::thread::scope(|s| {
        let builder = build_wheels.then(|| s.spawn(|| plan.build(board, recipe, &dir, log, step)));
        let result = attempts_in_turn(board, recipe, &dir, attempts, &plan, log, step);
        let wheels = builder.map(|b| {
            b.join().unwrap_or_else(|_| {
                Err(io(
                    "building wheels for",
                    &dir,
                    std::io::Error::other("the wheel builder panicked"),
                ))
            })
        });
        match (result, wheels) {
            // The builder's own error says more than the hook that waited for it.
            (Err(_), Some(Err(e))) => Err(e),
            (result, _) => result,
        }
    });
    plan.clean();
    result
}

/// The bootstrap with the security suite and, where the recipe makes it optional and its
/// index is broken, without.
fn attempts_in_turn(
    board: &Board,
    recipe: &Loaded,
    dir: &Path,
    attempts: &[bool],
    plan: &Plan,
    log: &Log,
    step: &Step,
) -> Result<Rootfs, BootstrapError> {
    let mut skipped = None;
    for &with_security in attempts {
        let k = key(board, recipe, with_security);
        let _held =
            cache::lock(&dir.join(&k)).map_err(|source| io("locking", &dir.join(&k), source))?;
        if let Some(rootfs) = cached(dir, &k) {
            log.line(&format!("bootstrap: cache hit {k}"));
            let mut rootfs = rootfs;
            if let Some(why) = &skipped {
                rootfs.meta.security = format!("skipped: {why}");
            }
            return Ok(rootfs);
        }
        let result = make_with_retries(board, recipe, dir, &k, with_security, plan, log, step);
        match result {
            Ok(mut rootfs) => {
                if let Some(why) = skipped {
                    rootfs.meta.security = format!("skipped: {why}");
                    write_meta(dir, &rootfs.meta)?;
                }
                return Ok(rootfs);
            }
            Err(BootstrapError::SecurityIndexBroken { detail, .. })
                if recipe.recipe.security == Security::Optional =>
            {
                let why = format!(
                    "{}-security index for {} broken on the mirror ({detail})",
                    recipe.recipe.suite,
                    board.arch.debian()
                );
                tracing::info!("building without the security suite: {why}");
                eprintln!(
                    "WARNING: building WITHOUT {}-security: {why}. The manifest records this.",
                    recipe.recipe.suite
                );
                log.line(&format!("WARNING: security suite skipped: {why}"));
                skipped = Some(why);
            }
            // Offline with a rootfs cached from an earlier build without the security suite:
            // that one is what "optional" would give anyway, so build on from it.
            Err(BootstrapError::MirrorUnreachable { detail, .. })
                if with_security
                    && recipe.recipe.security == Security::Optional
                    && cached(dir, &key(board, recipe, false)).is_some() =>
            {
                let why = format!(
                    "mirror unreachable ({detail}); using the cached rootfs built without it"
                );
                eprintln!("WARNING: {why}");
                log.line(&format!("WARNING: {why}"));
                skipped = Some(why);
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt either returns or fails")
}

fn cached(dir: &Path, key: &str) -> Option<Rootfs> {
    let root = dir.join(key);
    let meta: Meta =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{key}.json"))).ok()?).ok()?;
    root.join("etc/os-release").exists().then_some(Rootfs {
        dir: root,
        meta,
        cached: true,
    })
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<(), BootstrapError> {
    let p = dir.join(format!("{}.json", meta.key));
    cache::write_atomic(
        &p,
        &serde_json::to_vec_pretty(meta).expect("meta serialises"),
    )
    .map_err(|source| io("writing", &p, source))
}

/// [`make`], tried twice more when the mirror was unreachable: a name lookup that fails once
/// should not fail a build.
#[allow(clippy::too_many_arguments)]
fn make_with_retries(
    board: &Board,
    recipe: &Loaded,
    dir: &Path,
    key: &str,
    with_security: bool,
    plan: &Plan,
    log: &Log,
    step: &Step,
) -> Result<Rootfs, BootstrapError> {
    let mut result = make(board, recipe, dir, key, with_security, plan, log, step);
    for wait in [5, 15] {
        if !matches!(result, Err(BootstrapError::MirrorUnreachable { .. })) {
            break;
        }
        log.line(&format!(
            "bootstrap: mirror unreachable, retrying in {wait} s"
        ));
        step.message(&format!("mirror unreachable, retrying in {wait} s"));
        std::thread::sleep(std::time::Duration::from_secs(wait));
        result = make(board, recipe, dir, key, with_security, plan, log, step);
    }
    result
}

/// Runs mmdebstrap into a temporary directory and publishes it under `key` with its [`Meta`].
#[allow(clippy::too_many_arguments)]
fn make(
    board: &Board,
    recipe: &Loaded,
    dir: &Path,
    key: &str,
    with_security: bool,
    plan: &Plan,
    log: &Log,
    step: &Step,
) -> Result<Rootfs, BootstrapError> {
    let final_dir = dir.join(key);
    let tmp = cache::tmp_path(&final_dir);
    cache::remove_any(&tmp).map_err(|source| io("removing", &tmp, source))?;
    let lists = Lists {
        packages: dir.join(format!("{key}.packages.tmp")),
        pip: dir.join(format!("{key}.pip.tmp")),
    };
    let started = std::time::Instant::now();

    let mut c = mmdebstrap(board, recipe);
    let mut pip = pip_hooks(&mut c, board, recipe, plan, dir, key, &lists.pip, log, step)?;
    let venvs: Vec<&str> = pip_entries(board, recipe)
        .into_iter()
        .map(|(e, _)| e.venv.as_str())
        .collect();
    c.arg(hook(
        "customize",
        TRIM_HOOK,
        &[&["finish"], &venvs[..]].concat(),
    ));
    // Per-node secrets and identities must be made on the node, never shipped in the image.
    c.arg("--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_* \"$1/var/lib/dbus/machine-id\" && : > \"$1/etc/machine-id\" && rm -f \"$1\"/var/cache/debconf/*-old \"$1\"/var/lib/dpkg/*-old && find \"$1/var/log\" -type f -delete");
    c.arg(format!(
        "--customize-hook=dpkg-query --admindir=\"$1/var/lib/dpkg\" -W -f '${{Package}}\\t${{Version}}\\t${{Architecture}}\\n' > {}",
        sh_quote(&lists.packages.display().to_string())
    ));
    c.arg(&recipe.recipe.suite)
        .arg(&tmp)
        .args(sources(board, recipe, with_security));

    let _ = std::fs::remove_file(&lists.pip);
    let ran = cmd::run(&mut c, log, step);
    for f in &pip.req_files {
        let _ = std::fs::remove_file(f);
    }
    if let Err(e) = ran {
        let _ = cache::remove_any(&tmp);
        let _ = std::fs::remove_file(&lists.pip);
        return Err(classify(e, board, recipe, dir));
    }
    // The venv hooks took every wheel the builder made, so its list is whole.
    plan.record(&mut pip);
    let (packages, pip) = lists.take(board, recipe, &pip)?;
    let r = &recipe.recipe;
    let meta = Meta {
        key: key.to_string(),
        suite: r.suite.clone(),
        arch: board.arch.debian().to_string(),
        mirror: r.mirror.clone(),
        security: if with_security {
            "used".into()
        } else {
            "off".into()
        },
        packages,
        pip,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_meta(dir, &meta)?;
    cache::publish(&tmp, &final_dir).map_err(|source| io("renaming", &tmp, source))?;
    Ok(Rootfs {
        dir: final_dir,
        meta,
        cached: false,
    })
}

/// Files the bootstrap's hooks write on the host: what dpkg and pip installed.
struct Lists {
    packages: PathBuf,
    pip: PathBuf,
}

impl Lists {
    /// Reads and removes both lists.
    fn take(
        &self,
        board: &Board,
        recipe: &Loaded,
        sources: &pip::Hooks,
    ) -> Result<(Vec<Package>, Vec<Package>), BootstrapError> {
        let pip = match std::fs::read_to_string(&self.pip) {
            Ok(text) => parse_pip(&text, board, recipe, sources),
            Err(_) => Vec::new(),
        };
        let _ = std::fs::remove_file(&self.pip);
        let text = std::fs::read_to_string(&self.packages)
            .map_err(|source| io("reading", &self.packages, source))?;
        let _ = std::fs::remove_file(&self.packages);
        Ok((parse_packages(&text), pip))
    }
}

/// The recipe's components and the board's extra ones, in that order.
fn components(board: &Board, recipe: &Loaded) -> Vec<String> {
    let r = &recipe.recipe;
    let mut all = r.components.clone();
    all.extend(
        board
            .components
            .iter()
            .filter(|c| !r.components.contains(c))
            .cloned(),
    );
    all
}

/// The apt sources lines: the suite, its updates and (when used) its security suite.
fn sources(board: &Board, recipe: &Loaded, with_security: bool) -> Vec<String> {
    let r = &recipe.recipe;
    let components = components(board, recipe).join(" ");
    let mut sources = vec![
        format!("deb {} {} {components}", r.mirror, r.suite),
        format!("deb {} {}-updates {components}", r.mirror, r.suite),
    ];
    if with_security {
        sources.push(format!(
            "deb {} {}-security {components}",
            r.security_mirror(),
            r.suite
        ));
    }
    sources
}

/// mmdebstrap with the package set, the dpkg excludes and the initramfs set-up; the caller
/// adds the PyPI and clean-up hooks, the suite, the target and the sources.
fn mmdebstrap(board: &Board, recipe: &Loaded) -> Command {
    let mut c = Command::new("mmdebstrap");
    c.env(
        "SOURCE_DATE_EPOCH",
        recipe.recipe.source_date_epoch.to_string(),
    )
    .arg("--variant=minbase")
    .arg(format!("--arch={}", board.arch.debian()))
    .arg("--mode=root")
    .arg("--format=directory")
    .arg(format!(
        "--include={}",
        package_set(board, recipe).join(",")
    ))
    .arg(format!(
        "--components={}",
        components(board, recipe).join(",")
    ));
    if board.arch == crate::board::Arch::Armel {
        // qemu-user's default CPU is an ARMv7 one, and pip in the chroot would then take
        // armv7l (armhf) wheels and refuse the armv6l ones built for the Pi 1 and Zero.
        c.env("QEMU_CPU", "arm1176");
    }
    // A mirror hiccup (a DNS lookup failing once) should cost a retry, not a build.
    c.arg("--aptopt=Acquire::Retries \"3\"");
    for ex in DPKG_EXCLUDES {
        c.arg(format!("--dpkgopt={ex}"));
    }
    // The initramfs is built (once, at the end) with these settings already in place.
    c.arg("--essential-hook=mkdir -p \"$1/etc/initramfs-tools/conf.d\" && printf 'COMPRESS=zstd\\n' > \"$1/etc/initramfs-tools/conf.d/cloudy.conf\"");
    c.arg(hook("setup", TRIM_HOOK, &["setup"]));
    c.arg(hook("essential", INITRAMFS_HOOK, &["defer"]));
    c.arg(hook("customize", INITRAMFS_HOOK, &["build"]));
    if board.initramfs == Some(crate::board::InitramfsPolicy::Netboot)
        && board.initramfs_modules.is_none()
    {
        c.arg("--setup-hook=mkdir -p \"$1/etc/initramfs-tools/conf.d\" && printf 'MODULES=netboot\\n' > \"$1/etc/initramfs-tools/conf.d/cloudy-modules.conf\"");
    }
    if let Some(modules) = &board.initramfs_modules {
        // A listed set instead of MODULES=most: minutes less under qemu-user, and what an
        // SD card boot (and QEMU's virt machine) needs. modules.d is not a conffile.
        c.arg(format!(
            "--setup-hook=mkdir -p \"$1/etc/initramfs-tools/conf.d\" \"$1/usr/share/initramfs-tools/modules.d\" \"$1/boot/firmware\" && printf 'MODULES=list\\n' > \"$1/etc/initramfs-tools/conf.d/cloudy-modules.conf\" && printf '{}\\n' > \"$1/usr/share/initramfs-tools/modules.d/cloudy\"",
            modules.join("\\n")
        ));
    }
    c
}

fn parse_packages(text: &str) -> Vec<Package> {
    let mut v: Vec<Package> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some(Package {
                name: f.next()?.into(),
                version: f.next()?.into(),
                arch: f.next()?.into(),
                from: None,
                elsewhere: None,
            })
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Turns mmdebstrap's output into the error a user can act on.
fn classify(e: CmdError, board: &Board, recipe: &Loaded, dir: &Path) -> BootstrapError {
    let tail = e.tail().to_string();
    let recipe_file = recipe.path.display().to_string();
    let r = &recipe.recipe;
    if tail.contains("No space left on device") {
        return BootstrapError::DiskFull {
            dir: dir.display().to_string(),
        };
    }
    for marker in ["Unable to locate package ", "Package '"] {
        if let Some(rest) = tail.split(marker).nth(1) {
            let package: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '\'')
                .collect();
            if !package.is_empty()
                && (marker.starts_with("Unable") || rest.contains("has no installation candidate"))
            {
                return BootstrapError::UnknownPackage {
                    package,
                    suite: r.suite.clone(),
                    arch: board.arch.debian().into(),
                    recipe: recipe_file,
                };
            }
        }
    }
    let security_line = tail.lines().find(|l| {
        l.contains("-security")
            && (l.contains("unexpected size")
                || l.contains("Hash Sum mismatch")
                || l.contains("Failed to fetch"))
    });
    let index_broken = tail.contains("unexpected size") || tail.contains("Hash Sum mismatch");
    if let Some(line) = security_line.filter(|_| index_broken) {
        let detail = if line.contains("unexpected size") {
            "file has unexpected size"
        } else {
            "hash sum mismatch"
        };
        return BootstrapError::SecurityIndexBroken {
            suite: r.suite.clone(),
            arch: board.arch.debian().into(),
            detail: detail.into(),
            recipe: recipe_file,
        };
    }
    for marker in [
        "Could not resolve",
        "Temporary failure resolving",
        "Unable to connect",
        "Connection refused",
        "Could not connect",
        "Connection timed out",
        "Network is unreachable",
    ] {
        if let Some(line) = tail.lines().find(|l| l.contains(marker)) {
            return BootstrapError::MirrorUnreachable {
                mirror: r.mirror.clone(),
                detail: line.trim().to_string(),
                recipe: recipe_file,
            };
        }
    }
    BootstrapError::Other(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Recipe;

    fn fixture() -> (Board, Loaded) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (board, _) = Board::load(&root.join("tests/fixtures/boards/good.toml")).unwrap();
        (
            board,
            Recipe::load(&root.join("tests/fixtures/recipes/good.toml")).unwrap(),
        )
    }

    fn failed(tail: &str) -> CmdError {
        CmdError::Failed {
            command: "mmdebstrap".into(),
            status: "exit status: 1".into(),
            tail: tail.into(),
        }
    }

    #[test]
    fn key_depends_on_packages_and_security() {
        let (board, mut recipe) = fixture();
        let k1 = key(&board, &recipe, true);
        assert_eq!(k1, key(&board, &recipe, true));
        assert_ne!(k1, key(&board, &recipe, false));
        recipe.recipe.packages.push("avahi-daemon".into());
        assert_ne!(k1, key(&board, &recipe, true));
        // Order and duplicates in the recipe do not matter.
        let mut r2 = recipe.clone();
        r2.recipe.packages.reverse();
        r2.recipe.packages.push("tinc".into());
        assert_eq!(key(&board, &recipe, true), key(&board, &r2, true));
    }

    #[test]
    fn mmdebstrap_failures_become_actionable_errors() {
        let (board, recipe) = fixture();
        let d = Path::new("/cache");
        let e = classify(
            failed("E: Unable to locate package tincc\nE: apt-get failed"),
            &board,
            &recipe,
            d,
        );
        assert!(
            matches!(&e, BootstrapError::UnknownPackage { package, .. } if package == "tincc"),
            "{e}"
        );
        assert!(e.to_string().contains("good.toml"));
        let e = classify(
            failed("E: Package 'foo' has no installation candidate"),
            &board,
            &recipe,
            d,
        );
        assert!(
            matches!(&e, BootstrapError::UnknownPackage { package, .. } if package == "foo"),
            "{e}"
        );
        let e = classify(failed("E: Failed to fetch http://deb.debian.org/debian-security/dists/bookworm-security/main/binary-i386/Packages.xz  File has unexpected size (346968 != 366648). Mirror sync in progress?"), &board, &recipe, d);
        assert!(
            matches!(e, BootstrapError::SecurityIndexBroken { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("security = \"optional\""));
        let e = classify(failed("Err:1 http://nowhere.invalid/debian bookworm InRelease\n  Could not resolve 'nowhere.invalid'"), &board, &recipe, d);
        assert!(matches!(e, BootstrapError::MirrorUnreachable { .. }), "{e}");
        let e = classify(
            failed("tar: write error: No space left on device"),
            &board,
            &recipe,
            d,
        );
        assert!(matches!(e, BootstrapError::DiskFull { .. }), "{e}");
    }

    /// The hook's script and arguments reach `sh` as they are, quotes and spaces included.
    #[test]
    fn hook_passes_the_root_and_arguments_verbatim() {
        let d = tempfile::tempdir().unwrap();
        let script = "# it's a script\nprintf '%s|' \"$@\" > \"$1/out\"\n";
        let h = hook("customize", script, &["a b", "it's", "$HOME"]);
        let body = h.strip_prefix("--customize-hook=").unwrap();
        // What mmdebstrap does with a hook: `sh -c HOOK exec ROOT`.
        let st = Command::new("sh")
            .args(["-c", body, "exec"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success());
        let out = std::fs::read_to_string(d.path().join("out")).unwrap();
        assert_eq!(out, format!("{}|a b|it's|$HOME|", d.path().display()));
    }

    #[test]
    fn package_list_parses_and_sorts() {
        let p = parse_packages("tinc\t1.0.36-2\ti386\nbash\t5.2-2\ti386\n");
        assert_eq!(p[0].name, "bash");
        assert_eq!(p[1].version, "1.0.36-2");
    }
}
