//! Builds cloudy-agent for the board's architecture with Debian's Rust (`rustc-web`), the same
//! version's target standard library unpacked into a private sysroot, and Debian's cross gcc as
//! linker. No foreign dpkg architecture is added to the host: the std .deb is fetched directly
//! and checked against the pinned hashes in `rust-std.sha256`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::board::Arch;
use crate::cache;
use crate::cmd::{self, CmdError, Log};
use crate::progress::Step;

const PINNED: &str = include_str!("../../rust-std.sha256");
const CARGO: &str = "/usr/bin/cargo";
/// The Cargo profile images ship (Cargo.toml, `[profile.image]`): ThinLTO over 16 codegen
/// units, measured against the release profile's fat LTO in bench/profile.sh.
pub const PROFILE: &str = "image";
const RUSTC: &str = "/usr/bin/rustc";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Builder {
    /// Debian's cargo-web/rustc-web with a private target sysroot (default; no Docker).
    Debian,
    /// `cross` (needs Docker or Podman).
    Cross,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Debian's Rust toolchain is missing ({0})\n  fix: run `make deps` (installs rustc-web and cargo-web)")]
    NoToolchain(String),
    #[error("rustc-web {installed} is installed, but {pinned} is pinned in image/rust-std.sha256\n  fix: apt-get install rustc-web={pinned} cargo-web={pinned} libstd-rust-web-dev={pinned} (what `make deps` does), or update the pin")]
    VersionMismatch { installed: String, pinned: String },
    #[error("cannot fetch {file} from {urls}\n  fix: check the mirror; if Debian replaced that rustc-web version, update RUSTC_WEB_VERSION in ci/deps.sh and image/rust-std.sha256")]
    Fetch { file: String, urls: String },
    #[error("{file} has sha256 {got}, pinned {want}: refusing to use it\n  fix: delete it from the cache and retry; if it persists the mirror serves a different file")]
    Checksum {
        file: String,
        got: String,
        want: String,
    },
    #[error("no Rust standard library for armel: {0}\n  fix: apt-get install rust-web-src=<the rustc-web version> (what `make deps` does); Debian builds no libstd-rust-web-dev for armel, so its std is compiled from that source")]
    NoStdSource(String),
    #[error("building the agent failed: {0}")]
    Build(CmdError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

pub struct Built {
    pub path: PathBuf,
    pub sha256: String,
    pub toolchain: String,
}

pub struct Request<'a> {
    pub arch: Arch,
    pub source: &'a Path,
    pub cache: &'a Path,
    pub mirror: &'a str,
    pub security_mirror: &'a str,
    pub builder: Builder,
    /// Compile at a lower priority: set when a foreign-arch bootstrap (the long pole of a
    /// cold build) runs beside it.
    pub yield_cpu: bool,
}

pub fn build(req: &Request, log: &Log, step: &Step) -> Result<Built, AgentError> {
    let triple = req.arch.rust_target();
    let (path, toolchain) = match req.builder {
        Builder::Cross => {
            let mut c = Command::new("cross");
            priority(&mut c, req.yield_cpu);
            c.current_dir(req.source).args([
                "build",
                "--profile",
                PROFILE,
                "--locked",
                "-p",
                "cloudy-agent",
                "--target",
                triple,
            ]);
            cmd::run(&mut c, log, step).map_err(AgentError::Build)?;
            (
                req.source
                    .join("target")
                    .join(triple)
                    .join(PROFILE)
                    .join("cloudy-agent"),
                "cross".to_string(),
            )
        }
        Builder::Debian => debian(req, triple, log, step)?,
    };
    let sha256 = cache::sha256_file(&path).map_err(|source| io("reading", &path, source))?;
    Ok(Built {
        path,
        sha256,
        toolchain,
    })
}

/// The variables Cargo sets for whoever it runs (`cargo test` for a test that calls
/// cloudy-image: `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, `CARGO`, ...) and wrappers from the
/// caller's own build, named in `vars`: removed from the agent's build, whose fingerprints
/// would otherwise change with the caller. ring's build script tracks `CARGO_MANIFEST_DIR`: a
/// build from a test and the next from a shell each recompiled the whole agent (8 to 11 min
/// on two cores). The user's Cargo home and network settings stay.
fn callers_cargo_env(vars: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const KEEP: [&str; 5] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    vars.filter(|k| {
        let k = k.to_string_lossy();
        (k.starts_with("CARGO_") && !KEEP.iter().any(|p| k.starts_with(p)))
            || [
                "CARGO",
                "RUSTC_WRAPPER",
                "RUSTC_WORKSPACE_WRAPPER",
                "RUSTDOCFLAGS",
            ]
            .contains(&k.as_ref())
    })
    .collect()
}

/// `c` without the caller's Cargo variables (`callers_cargo_env`).
fn without_callers_cargo_env(c: &mut Command) {
    for k in callers_cargo_env(std::env::vars_os().map(|(k, _)| k)) {
        c.env_remove(k);
    }
}

/// Beside a foreign-arch bootstrap (dpkg under qemu-user, mostly one thread) the compile is
/// not the long pole: at a lower priority it takes the CPU the bootstrap leaves. Beside a
/// native bootstrap the compile is the long pole and keeps its priority.
fn priority(c: &mut Command, yield_cpu: bool) {
    if !yield_cpu {
        return;
    }
    use std::os::unix::process::CommandExt;
    // SAFETY: nice(2) is async-signal-safe and changes only the child. nix does not wrap
    // nice(2): this is libc's, through nix's re-export.
    unsafe {
        c.pre_exec(|| {
            nix::libc::nice(10);
            Ok(())
        });
    }
}

fn debian(
    req: &Request,
    triple: &str,
    log: &Log,
    step: &Step,
) -> Result<(PathBuf, String), AgentError> {
    for p in [CARGO, RUSTC] {
        if !Path::new(p).exists() {
            return Err(AgentError::NoToolchain(format!("{p} not found")));
        }
    }
    let version = installed_version()?;
    // One target directory per triple. In one shared directory a board's build and its
    // bundle each recompiled the whole agent whenever another triple's build ran between
    // them; the likely cause (not traced): the build scripts and proc macros built for this
    // host get an x86_64 build's target flags and not a cross build's, and were shared.
    let target_dir = req.source.join("target/agent").join(triple);
    let env_triple = triple.to_uppercase().replace('-', "_");
    let mut rustflags = vec![
        // Paths of this checkout and of the cargo registry must not leak into the binary:
        // builds from different directories give the same agent.
        format!("--remap-path-prefix={}=/build/cloudy", req.source.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home().display()),
    ];
    if req.arch != Arch::Amd64 {
        let sysroot = sysroot(req, &version, log, step)?;
        rustflags.push(format!("--sysroot={}", sysroot.display()));
    }
    let (linker, _) = req.arch.linker();
    let mut c = Command::new(CARGO);
    priority(&mut c, req.yield_cpu);
    without_callers_cargo_env(&mut c);
    c.current_dir(req.source)
        .args([
            "build",
            "--profile",
            PROFILE,
            "--locked",
            "-p",
            "cloudy-agent",
            "--target",
            triple,
        ])
        .env("RUSTC", RUSTC)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env(format!("CARGO_TARGET_{env_triple}_LINKER"), linker)
        .env(
            format!("CARGO_TARGET_{env_triple}_RUSTFLAGS"),
            rustflags.join(" "),
        );
    cmd::run(&mut c, log, step).map_err(AgentError::Build)?;
    Ok((
        target_dir.join(triple).join(PROFILE).join("cloudy-agent"),
        format!("rustc-web {version}"),
    ))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

pub(crate) fn installed_version() -> Result<String, AgentError> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "rustc-web"])
        .output()
        .map_err(|e| AgentError::NoToolchain(format!("dpkg-query: {e}")))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || v.is_empty() {
        return Err(AgentError::NoToolchain(
            "package rustc-web is not installed".into(),
        ));
    }
    Ok(v)
}

/// `(file name, sha256)` of the pinned std .deb for `arch`.
fn pinned(arch: Arch) -> Option<(String, String)> {
    PINNED
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("  "))
        .find(|(_, f)| f.ends_with(&format!("_{}.deb", arch.debian())))
        .map(|(h, f)| (f.to_string(), h.to_string()))
}

fn pinned_version(file: &str) -> String {
    file.split('_').nth(1).unwrap_or_default().to_string()
}

/// `<cache>/rust-sysroot/<version>/<triple>/` holding `lib/rustlib/<triple>` from the std .deb
/// and the host's own rustlib beside it (proc macros and build scripts run on the host). One
/// sysroot per target, so builds for different boards never touch each other's.
pub(crate) fn sysroot(
    req: &Request,
    version: &str,
    log: &Log,
    step: &Step,
) -> Result<PathBuf, AgentError> {
    let triple = req.arch.rust_target();
    let root = req.cache.join("rust-sysroot").join(version).join(triple);
    if req.arch == Arch::Armel {
        // The format is in the path, so in the agent's --sysroot flag: a new std makes cargo
        // rebuild what was compiled against the old one.
        let root = root.with_file_name(format!("{triple}-src{STD_FORMAT}"));
        return std_from_source(req, version, &root, log, step);
    }
    let (file, want) = pinned(req.arch).ok_or_else(|| {
        AgentError::NoToolchain(format!("no pinned std for {}", req.arch.debian()))
    })?;
    let pinned_v = pinned_version(&file);
    if pinned_v != version {
        return Err(AgentError::VersionMismatch {
            installed: version.into(),
            pinned: pinned_v,
        });
    }
    let _held = cache::lock(&root).map_err(|source| io("locking", &root, source))?;
    let rustlib = root.join("lib/rustlib");
    if rustlib.join(triple).join("lib").exists() {
        return Ok(root);
    }
    let debs = req.cache.join("rust-sysroot/debs");
    std::fs::create_dir_all(&debs).map_err(|source| io("creating", &debs, source))?;
    let deb = debs.join(&file);
    if !deb.exists() {
        let urls = [
            format!(
                "{}/pool/updates/main/r/rustc-web/{file}",
                req.security_mirror
            ),
            format!("{}/pool/main/r/rustc-web/{file}", req.mirror),
        ];
        let tmp = cache::tmp_path(&deb);
        let fetched = urls.iter().any(|u| {
            let mut c = Command::new("curl");
            c.args(["-fsSL", "--retry", "2", "-o"]).arg(&tmp).arg(u);
            cmd::run(&mut c, log, step).is_ok()
        });
        if !fetched {
            return Err(AgentError::Fetch {
                file,
                urls: urls.join(" or "),
            });
        }
        let got = cache::sha256_file(&tmp).map_err(|source| io("reading", &tmp, source))?;
        if got != want {
            let _ = std::fs::remove_file(&tmp);
            return Err(AgentError::Checksum { file, got, want });
        }
        std::fs::rename(&tmp, &deb).map_err(|source| io("renaming", &tmp, source))?;
    }
    let unpack = cache::tmp_path(&root);
    let _ = cache::remove_any(&unpack);
    std::fs::create_dir_all(&unpack).map_err(|source| io("creating", &unpack, source))?;
    let mut c = Command::new("dpkg-deb");
    c.arg("-x").arg(&deb).arg(unpack.join("deb"));
    cmd::run(&mut c, log, step).map_err(AgentError::Build)?;
    let lib = unpack.join("lib/rustlib");
    std::fs::create_dir_all(&lib).map_err(|source| io("creating", &lib, source))?;
    let from = unpack.join("deb/usr/lib/rustlib").join(triple);
    std::fs::rename(&from, lib.join(triple)).map_err(|source| io("moving", &from, source))?;
    let host = "x86_64-unknown-linux-gnu";
    std::os::unix::fs::symlink(Path::new("/usr/lib/rustlib").join(host), lib.join(host))
        .map_err(|source| io("linking", &lib, source))?;
    let _ = std::fs::remove_dir_all(unpack.join("deb"));
    cache::publish(&unpack, &root).map_err(|source| io("renaming", &unpack, source))?;
    Ok(root)
}

/// Where rust-web-src puts the standard library's source (rustc's sysroot is /usr).
const STD_SOURCE: &str = "/usr/lib/rustlib/src/rust/library";
/// Part of a std built from source's sysroot path; bumped when the way it is built changes, so
/// an older one is not used. 2: panic_abort compiled with panic=abort. 3: object code with
/// bitcode beside it (2 was bitcode only, which a build without LTO cannot link).
const STD_FORMAT: &str = "3";
/// What Rust's own bootstrap does and cargo's build-std does not: the panic_abort crate is
/// compiled with panic=abort (with the profile's panic=unwind, a panic=abort program such as
/// the agent fails to link: "the crate `panic_abort` does not have the panic strategy
/// `abort`"). cargo runs this as RUSTC_WRAPPER: "$1" is rustc.
const STD_RUSTC_WRAPPER: &str = "#!/bin/sh\ncase \" $* \" in\n*' --crate-name panic_abort '*) exec \"$@\" -C panic=abort ;;\nesac\nexec \"$@\"\n";

/// Debian builds rustc-web for no armel, so there is no libstd-rust-web-dev:armel to unpack
/// (and bookworm's own armel rustc is 1.63). The target's std is compiled once instead, on the
/// host, from rust-web-src of the very version of the host's rustc-web (apt checked that
/// package; its Cargo.lock and vendored crates pin std's dependencies): cargo's build-std on
/// an empty program, then its rlibs laid out as the other targets' sysroots are. Like
/// Debian's and rustup's, they hold object code and bitcode: the agent's release profile links
/// with LTO, a Python extension without. (With LTO on the empty program, cargo builds std as
/// bitcode only, and pycddl's link then fails: "file format not recognized".)
fn std_from_source(
    req: &Request,
    version: &str,
    root: &Path,
    log: &Log,
    step: &Step,
) -> Result<PathBuf, AgentError> {
    let triple = req.arch.rust_target();
    let _held = cache::lock(root).map_err(|source| io("locking", root, source))?;
    if root.join("lib/rustlib").join(triple).join("lib").exists() {
        return Ok(root.to_path_buf());
    }
    let src = src_version()?;
    if src != version {
        return Err(AgentError::NoStdSource(format!(
            "rust-web-src {src} is installed, rustc-web {version}: they must be one version"
        )));
    }
    step.message(&format!(
        "building Rust's std for {triple} from rust-web-src {version} (once)"
    ));
    let unpack = cache::tmp_path(root);
    let _ = cache::remove_any(&unpack);
    let krate = unpack.join("std-build");
    let main = krate.join("src/main.rs");
    std::fs::create_dir_all(krate.join("src")).map_err(|source| io("creating", &krate, source))?;
    let wrapper = unpack.join("rustc-wrapper");
    std::fs::create_dir_all(&unpack)
        .and_then(|()| std::fs::write(&wrapper, STD_RUSTC_WRAPPER))
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        })
        .map_err(|source| io("writing", &wrapper, source))?;
    let manifest = "[package]\nname = \"cloudy-std-build\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[workspace]\n";
    std::fs::write(krate.join("Cargo.toml"), manifest)
        .and_then(|()| std::fs::write(&main, "fn main() {}\n"))
        .map_err(|source| io("writing", &main, source))?;
    let env_triple = triple.to_uppercase().replace('-', "_");
    let target_dir = krate.join("target");
    let mut c = Command::new(CARGO);
    priority(&mut c, req.yield_cpu);
    without_callers_cargo_env(&mut c);
    c.current_dir(&krate)
        .args([
            "build",
            "--release",
            "-Zbuild-std=std,panic_abort,panic_unwind",
            "--target",
            triple,
        ])
        // build-std is a nightly flag: this is how Rust's own bootstrap builds std with a
        // stable compiler.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", RUSTC)
        .env("RUSTC_WRAPPER", &wrapper)
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env(
            format!("CARGO_TARGET_{env_triple}_LINKER"),
            req.arch.linker().0,
        )
        .env(
            format!("CARGO_TARGET_{env_triple}_RUSTFLAGS"),
            format!(
                "--remap-path-prefix={}=/build/std -Cembed-bitcode=yes",
                krate.display()
            ),
        );
    if let Err(e) = cmd::run(&mut c, log, step) {
        let _ = cache::remove_any(&unpack);
        return Err(AgentError::Build(e));
    }
    let deps = target_dir.join(triple).join("release/deps");
    let lib = unpack.join("lib/rustlib").join(triple).join("lib");
    std::fs::create_dir_all(&lib).map_err(|source| io("creating", &lib, source))?;
    let rlibs: Vec<PathBuf> = std::fs::read_dir(&deps)
        .map_err(|source| io("reading", &deps, source))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rlib"))
        .collect();
    if !rlibs.iter().any(|p| file_name_starts(p, "libstd-")) {
        let _ = cache::remove_any(&unpack);
        return Err(AgentError::NoStdSource(format!(
            "building std left no libstd rlib in {}",
            deps.display()
        )));
    }
    for r in &rlibs {
        let to = lib.join(r.file_name().expect("a file"));
        std::fs::rename(r, &to).map_err(|source| io("moving", r, source))?;
    }
    let host = "x86_64-unknown-linux-gnu";
    let rustlib = unpack.join("lib/rustlib");
    std::os::unix::fs::symlink(Path::new("/usr/lib/rustlib").join(host), rustlib.join(host))
        .map_err(|source| io("linking", &rustlib, source))?;
    let _ = std::fs::remove_dir_all(&krate);
    let _ = std::fs::remove_file(&wrapper);
    cache::publish(&unpack, root).map_err(|source| io("renaming", &unpack, source))?;
    Ok(root.to_path_buf())
}

/// The compiler and target std that code for `arch` is linked against, for the cache keys of
/// what is built with them (the host-built Python wheels): the rustc-web version, and for armel,
/// whose std is compiled here from source, that std's format too, so a wheel linked against an
/// older armel std is not taken. Debian's packaged std is named by the version alone.
pub(crate) fn toolchain_id(arch: Arch, version: &str) -> String {
    if arch == Arch::Armel {
        format!("{version} std-from-source-{STD_FORMAT}")
    } else {
        version.to_string()
    }
}

fn file_name_starts(p: &Path, prefix: &str) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
}

/// The installed rust-web-src's version (std's source for targets Debian has no std of).
fn src_version() -> Result<String, AgentError> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "rust-web-src"])
        .output()
        .map_err(|e| AgentError::NoStdSource(format!("dpkg-query: {e}")))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || v.is_empty() || !Path::new(STD_SOURCE).join("Cargo.lock").exists() {
        return Err(AgentError::NoStdSource(
            "package rust-web-src is not installed".into(),
        ));
    }
    Ok(v)
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> AgentError {
    AgentError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `cargo test` sets for a test (which then runs cloudy-image) is not passed on to
    /// the agent's build; the Cargo home and network settings are.
    #[test]
    fn the_callers_cargo_variables_are_not_passed_on() {
        let callers = [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_CRATE_NAME",
            "CARGO_TARGET_TMPDIR",
            "CARGO",
            "RUSTC_WRAPPER",
        ]
        .map(std::ffi::OsString::from);
        let kept = [
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "CARGO_HTTP_PROXY",
            "CARGO_REGISTRIES_CRATES_IO_PROTOCOL",
            "PATH",
            "HOME",
        ]
        .map(std::ffi::OsString::from);
        let removed = callers_cargo_env(callers.iter().chain(&kept).cloned());
        assert_eq!(removed, callers);
    }

    #[test]
    fn every_cross_arch_has_a_pinned_std_of_one_version() {
        let mut versions = vec![];
        for a in [Arch::I386, Arch::Armhf, Arch::Arm64] {
            let (file, sha) = pinned(a).expect("pinned");
            assert_eq!(sha.len(), 64, "{file}");
            versions.push(pinned_version(&file));
        }
        versions.dedup();
        assert_eq!(
            versions.len(),
            1,
            "one toolchain version for all targets: {versions:?}"
        );
        let deps =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/deps.sh"))
                .unwrap();
        assert!(
            deps.contains(&format!("RUSTC_WEB_VERSION={}", versions[0])),
            "ci/deps.sh installs the pinned version"
        );
    }

    /// A wheel's key names the std it links against: armel's own build by its format, the
    /// others (Debian's packages) by the version alone, so their cached wheels keep their keys.
    #[test]
    fn toolchain_id_names_armels_std_format() {
        let v = "1.96.0+dfsg1-1~deb12u2";
        for a in [Arch::I386, Arch::Amd64, Arch::Armhf, Arch::Arm64] {
            assert_eq!(toolchain_id(a, v), v);
        }
        let armel = toolchain_id(Arch::Armel, v);
        assert!(armel.starts_with(v), "{armel}");
        assert!(armel.ends_with(&format!("-{STD_FORMAT}")), "{armel}");
        assert_ne!(armel, v);
    }

    /// Debian has no armel std to pin (no rustc-web for armel): rpi1's std is compiled from
    /// rust-web-src, which must be the host compiler's own version.
    #[test]
    fn armel_std_comes_from_the_source_of_the_pinned_version() {
        assert!(pinned(Arch::Armel).is_none());
        let deps =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/deps.sh"))
                .unwrap();
        assert!(deps.contains("rust-web-src=$RUSTC_WEB_VERSION"), "{deps}");
        assert!(
            deps.contains("gcc-arm-linux-gnueabi\n") || deps.contains("gcc-arm-linux-gnueabi ")
        );
        assert_eq!(Arch::Armel.linker().0, "arm-linux-gnueabi-gcc");
    }
}
