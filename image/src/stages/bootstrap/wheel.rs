//! Wheels PyPI has none of for an arch (pycddl, a PyO3 Rust extension, on i686/armv7/aarch64),
//! built on the host: `maturin build` of the pin's PyPI source release, cross-compiled with the
//! agent's toolchain (Debian's rustc-web, the target std in its private sysroot, Debian's cross
//! gcc as linker). Nothing is compiled under qemu-user and nothing is fetched unpinned: the
//! source release is checked against the recipe's sha256, maturin against the hash below, and
//! the crates against the source's own Cargo.lock (`--locked`). The wheel is cached under a key
//! of every input, written under a temporary name and renamed, behind the cache's lock.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{io, BootstrapError};
use crate::board::Arch;
use crate::cache;
use crate::cmd::{self, Log};
use crate::progress::Step;
use crate::recipe::PipBuild;
use crate::stages::agent;

/// The maturin release that builds the wheels: its manylinux x86_64 wheel (a static binary and
/// the PEP 517 shim), by the hash PyPI lists.
const MATURIN_VERSION: &str = "1.16.0";
const MATURIN_SHA256: &str = "837db2f4d93d4899c3ac393fb3cc9eebf35b6002336e5d574f4a4fb6c49fe283";
/// Where source releases are looked up (PEP 503); the file is then checked by its hash.
const PYPI_SIMPLE: &str = "https://pypi.org/simple";
/// Bumped when the way a wheel is built changes, so cached wheels are remade.
const FORMAT: u32 = 1;

/// Everything that decides the wheel's content; the cache key is its hash and the manifest
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    pub name: String,
    pub version: String,
    pub sdist_sha256: String,
    /// Debian's rustc-web version (host compiler and target std are that one version), and
    /// for armel the format of its std built from source ([`agent::toolchain_id`]).
    pub toolchain: String,
    pub target: String,
    pub maturin: String,
    pub python: String,
}

impl Inputs {
    fn key(&self) -> String {
        let json = serde_json::to_vec(&(FORMAT, self)).expect("inputs serialise");
        cache::sha256_bytes(&json)[..24].to_string()
    }
}

/// A wheel built (or found in the cache) for one pin.
#[derive(Debug, Clone)]
pub struct Built {
    pub wheel: PathBuf,
    pub sha256: String,
    pub inputs: Inputs,
}

/// Where things come from: the cache root (`--cache`) and the recipe's mirrors, for the
/// target std .deb of the sysroot.
pub struct Env<'a> {
    pub cache: &'a Path,
    pub mirror: &'a str,
    pub security_mirror: &'a str,
    pub recipe: &'a Path,
}

/// The wheel of `pin` (version `version`) for `arch` and CPython `python`, built once per
/// set of inputs.
pub fn wheel(
    pin: &PipBuild,
    version: &str,
    python: &str,
    arch: Arch,
    env: &Env,
    log: &Log,
    step: &Step,
) -> Result<Built, BootstrapError> {
    let toolchain = agent::installed_version().map_err(|e| toolchain_error(pin, env, e))?;
    let inputs = Inputs {
        name: pin.name.clone(),
        version: version.to_string(),
        sdist_sha256: pin.sdist_sha256.clone(),
        toolchain: agent::toolchain_id(arch, &toolchain),
        target: arch.rust_target().to_string(),
        maturin: format!("{MATURIN_VERSION} sha256:{MATURIN_SHA256}"),
        python: python.to_string(),
    };
    let dir = env.cache.join("bootstrap/built").join(inputs.key());
    let _held = cache::lock(&dir).map_err(|source| io("locking", &dir, source))?;
    if let Some(built) = cached(&dir, &inputs) {
        log.line(&format!(
            "bootstrap: wheel cached {}",
            built.wheel.display()
        ));
        return Ok(built);
    }
    step.message(&format!(
        "building a {} {version} wheel for {} (maturin, rustc-web {toolchain})",
        pin.name,
        arch.debian()
    ));
    let sysroot = (arch != Arch::Amd64)
        .then(|| {
            let req = agent::Request {
                arch,
                source: env.cache,
                cache: env.cache,
                mirror: env.mirror,
                security_mirror: env.security_mirror,
                builder: agent::Builder::Debian,
                yield_cpu: false,
            };
            agent::sysroot(&req, &toolchain, log, step)
        })
        .transpose()
        .map_err(|e| toolchain_error(pin, env, e))?;
    let maturin = maturin(env.cache, log, step)?;
    let sdist = sdist(pin, version, env, log, step)?;

    let tmp = cache::tmp_path(&dir);
    let work = dir.with_extension("work");
    for d in [&tmp, &work] {
        cache::remove_any(d).map_err(|source| io("removing", d, source))?;
        std::fs::create_dir_all(d).map_err(|source| io("creating", d, source))?;
    }
    let result = compile(
        &inputs,
        &maturin,
        &sdist,
        sysroot.as_deref(),
        &work,
        log,
        step,
    );
    let out = work.join("out");
    let made = result.and_then(|()| {
        the_wheel(&out).ok_or_else(|| BootstrapError::WheelBuild {
            name: inputs.name.clone(),
            version: inputs.version.clone(),
            target: inputs.target.clone(),
            detail: format!("maturin wrote no wheel into {}", out.display()),
        })
    });
    let wheel = match made {
        Ok(w) => w,
        Err(e) => {
            let _ = cache::remove_any(&tmp);
            let _ = cache::remove_any(&work);
            return Err(e);
        }
    };
    let name = wheel.file_name().expect("a wheel file").to_owned();
    std::fs::rename(&wheel, tmp.join(&name)).map_err(|source| io("moving", &wheel, source))?;
    let meta = tmp.join("inputs.json");
    let json = serde_json::to_vec_pretty(&inputs).expect("inputs serialise");
    std::fs::write(&meta, json).map_err(|source| io("writing", &meta, source))?;
    let _ = cache::remove_any(&work);
    cache::publish(&tmp, &dir).map_err(|source| io("renaming", &tmp, source))?;
    cached(&dir, &inputs).ok_or_else(|| {
        io(
            "reading",
            &dir,
            std::io::Error::other("the wheel just built is gone"),
        )
    })
}

fn toolchain_error(pin: &PipBuild, env: &Env, e: agent::AgentError) -> BootstrapError {
    BootstrapError::WheelToolchain {
        name: pin.name.clone(),
        recipe: env.recipe.display().to_string(),
        detail: e.to_string(),
    }
}

/// The single `.whl` file in `dir`.
fn the_wheel(dir: &Path) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    (v.len() == 1).then(|| v.pop()).flatten()
}

fn cached(dir: &Path, inputs: &Inputs) -> Option<Built> {
    let stored: Inputs =
        serde_json::from_slice(&std::fs::read(dir.join("inputs.json")).ok()?).ok()?;
    let wheel = the_wheel(dir)?;
    let sha256 = cache::sha256_file(&wheel).ok()?;
    (&stored == inputs).then_some(Built {
        wheel,
        sha256,
        inputs: stored,
    })
}

/// `maturin build` of the unpacked source release into `work/out`.
fn compile(
    inputs: &Inputs,
    maturin: &Path,
    sdist: &Path,
    sysroot: Option<&Path>,
    work: &Path,
    log: &Log,
    step: &Step,
) -> Result<(), BootstrapError> {
    let failed = |detail: String| BootstrapError::WheelBuild {
        name: inputs.name.clone(),
        version: inputs.version.clone(),
        target: inputs.target.clone(),
        detail,
    };
    let mut c = Command::new("tar");
    c.arg("-xzf").arg(sdist).arg("-C").arg(work);
    cmd::run(&mut c, log, step).map_err(|e| failed(e.to_string()))?;
    let src = work.join(format!("{}-{}", inputs.name, inputs.version));
    if !src.join("Cargo.lock").exists() {
        return Err(failed(format!(
            "{} has no Cargo.lock: its crates could not be pinned",
            src.display()
        )));
    }
    let triple = &inputs.target;
    let env_triple = triple.to_uppercase().replace('-', "_");
    let arch = arch_of(triple);
    let mut rustflags = vec![
        // Build paths must not leak into the extension: the same inputs give the same wheel.
        format!("--remap-path-prefix={}=/build", work.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home().display()),
    ];
    if let Some(s) = sysroot {
        rustflags.push(format!("--sysroot={}", s.display()));
    }
    let mut c = Command::new(maturin);
    nice(&mut c);
    c.current_dir(&src)
        .args(["build", "--release", "--locked", "--target", triple])
        .arg("--interpreter")
        .arg(format!("python{}", inputs.python))
        // A plain linux_<machine> tag: the wheel is made for Debian's glibc, not audited
        // against a manylinux policy, and pip on the node accepts that tag.
        .args(["--compatibility", "linux", "--out"])
        .arg(work.join("out"))
        // Debian's toolchain, not rustup's: the source's rust-toolchain.toml is not obeyed.
        .env("CARGO", "/usr/bin/cargo")
        .env("RUSTC", "/usr/bin/rustc")
        .env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .env("CARGO_TARGET_DIR", work.join("target"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env(
            format!("CARGO_TARGET_{env_triple}_LINKER"),
            arch.map(|a| a.linker().0).unwrap_or("cc"),
        )
        .env(
            format!("CARGO_TARGET_{env_triple}_RUSTFLAGS"),
            rustflags.join(" "),
        );
    cmd::run(&mut c, log, step).map_err(|e| failed(e.tail().to_string()))?;
    Ok(())
}

fn arch_of(triple: &str) -> Option<Arch> {
    [
        Arch::I386,
        Arch::Amd64,
        Arch::Armhf,
        Arch::Arm64,
        Arch::Armel,
    ]
    .into_iter()
    .find(|a| a.rust_target() == triple)
}

/// Beside a foreign bootstrap and the agent's compile, the wheel takes what CPU is left.
fn nice(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: nice(2) is async-signal-safe and changes only the child.
    unsafe {
        c.pre_exec(|| {
            nix::libc::nice(10);
            Ok(())
        });
    }
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// The pinned maturin binary, fetched once with `pip download --require-hashes` into
/// `<cache>/bootstrap/maturin/<version>/`.
fn maturin(cache_root: &Path, log: &Log, step: &Step) -> Result<PathBuf, BootstrapError> {
    let dir = cache_root.join("bootstrap/maturin").join(MATURIN_VERSION);
    let bin = dir.join("maturin");
    let _held = cache::lock(&dir).map_err(|source| io("locking", &dir, source))?;
    if bin.exists() {
        return Ok(bin);
    }
    let tmp = cache::tmp_path(&dir);
    cache::remove_any(&tmp).map_err(|source| io("removing", &tmp, source))?;
    std::fs::create_dir_all(&tmp).map_err(|source| io("creating", &tmp, source))?;
    let fail = |detail: String| BootstrapError::Maturin {
        version: MATURIN_VERSION.into(),
        detail,
    };
    let req = tmp.join("requirements.txt");
    std::fs::write(
        &req,
        format!("maturin=={MATURIN_VERSION} --hash=sha256:{MATURIN_SHA256}\n"),
    )
    .map_err(|source| io("writing", &req, source))?;
    let mut c = Command::new("python3");
    c.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--no-input",
        "--dest",
    ])
    .arg(&tmp)
    .arg("-r")
    .arg(&req)
    .env("PIP_FIND_LINKS", "");
    let fetched = cmd::run(&mut c, log, step).map_err(|e| fail(e.tail().to_string()));
    let whl = fetched.and_then(|_| {
        the_wheel(&tmp).ok_or_else(|| fail("pip downloaded no maturin wheel".into()))
    });
    let unpacked = whl.and_then(|whl| {
        let mut c = Command::new("python3");
        c.args(["-m", "zipfile", "-e"])
            .arg(&whl)
            .arg(tmp.join("wheel"));
        cmd::run(&mut c, log, step).map_err(|e| fail(e.to_string()))
    });
    let script = tmp
        .join("wheel")
        .join(format!("maturin-{MATURIN_VERSION}.data/scripts/maturin"));
    if let Err(e) = unpacked.and_then(|_| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::rename(&script, tmp.join("maturin"))
            .and_then(|()| {
                std::fs::set_permissions(
                    tmp.join("maturin"),
                    std::fs::Permissions::from_mode(0o755),
                )
            })
            .map_err(|e| fail(format!("{}: {e}", script.display())))
    }) {
        let _ = cache::remove_any(&tmp);
        return Err(e);
    }
    let _ = cache::remove_any(&tmp.join("wheel"));
    cache::publish(&tmp, &dir).map_err(|source| io("renaming", &tmp, source))?;
    Ok(bin)
}

/// The pin's source release from PyPI, checked against the recipe's sha256, kept in
/// `<cache>/bootstrap/sdist/`.
fn sdist(
    pin: &PipBuild,
    version: &str,
    env: &Env,
    log: &Log,
    step: &Step,
) -> Result<PathBuf, BootstrapError> {
    let dir = env.cache.join("bootstrap/sdist");
    std::fs::create_dir_all(&dir).map_err(|source| io("creating", &dir, source))?;
    let file = format!("{}-{version}.tar.gz", pin.name);
    let path = dir.join(&file);
    let _held = cache::lock(&path).map_err(|source| io("locking", &path, source))?;
    let recipe = env.recipe.display().to_string();
    if path.exists() {
        let got = cache::sha256_file(&path).map_err(|source| io("reading", &path, source))?;
        if got == pin.sdist_sha256 {
            return Ok(path);
        }
        // Left by a run with another pin of the same version: fetched again below.
        let _ = std::fs::remove_file(&path);
    }
    let index = format!("{PYPI_SIMPLE}/{}/", crate::recipe::normalise(&pin.name));
    let mut c = Command::new("curl");
    c.args(["-fsSL", "--retry", "2", &index]);
    let page = cmd::run(&mut c, log, step).map_err(|e| BootstrapError::Sdist {
        file: file.clone(),
        recipe: recipe.clone(),
        detail: format!("{index}: {}", e.tail()),
    })?;
    let url = sdist_url(&page, &index, &file).ok_or_else(|| BootstrapError::Sdist {
        file: file.clone(),
        recipe: recipe.clone(),
        detail: format!("{index} lists no {file}"),
    })?;
    let tmp = cache::tmp_path(&path);
    let mut c = Command::new("curl");
    c.args(["-fsSL", "--retry", "2", "-o"]).arg(&tmp).arg(&url);
    if let Err(e) = cmd::run(&mut c, log, step) {
        let _ = std::fs::remove_file(&tmp);
        return Err(BootstrapError::Sdist {
            file,
            recipe,
            detail: format!("{url}: {}", e.tail()),
        });
    }
    let got = cache::sha256_file(&tmp).map_err(|source| io("reading", &tmp, source))?;
    if got != pin.sdist_sha256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(BootstrapError::SdistChecksum {
            file,
            got,
            want: pin.sdist_sha256.clone(),
            recipe,
        });
    }
    std::fs::rename(&tmp, &path).map_err(|source| io("renaming", &tmp, source))?;
    Ok(path)
}

/// The address of `file` on a PEP 503 index page (fragment dropped: the recipe's hash is the
/// one checked), made absolute against `index`.
fn sdist_url(page: &str, index: &str, file: &str) -> Option<String> {
    page.split("href=\"").skip(1).find_map(|rest| {
        let href = rest.split('"').next()?.replace("&amp;", "&");
        let href = href.split('#').next()?.to_string();
        let name = href.rsplit('/').next()?;
        if name != file {
            return None;
        }
        if href.starts_with("https://") {
            return Some(href);
        }
        if href.starts_with('/') {
            let origin: String = index.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
            return Some(format!("{origin}{href}"));
        }
        Some(format!("{index}{href}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdist_url_is_found_on_an_index_page() {
        let page = r#"<a href="https://files.pythonhosted.org/packages/aa/pycddl-0.6.4-cp311-cp311-manylinux_2_17_x86_64.whl#sha256=84">x</a>
<a href="https://files.pythonhosted.org/packages/6b/e7/pycddl-0.6.4.tar.gz#sha256=6946" >pycddl-0.6.4.tar.gz</a>
<a href="../../packages/pycddl-0.6.3.tar.gz#sha256=00">y</a>"#;
        let index = "https://pypi.org/simple/pycddl/";
        assert_eq!(
            sdist_url(page, index, "pycddl-0.6.4.tar.gz").as_deref(),
            Some("https://files.pythonhosted.org/packages/6b/e7/pycddl-0.6.4.tar.gz")
        );
        assert_eq!(
            sdist_url(page, index, "pycddl-0.6.3.tar.gz").as_deref(),
            Some("https://pypi.org/simple/pycddl/../../packages/pycddl-0.6.3.tar.gz")
        );
        assert_eq!(sdist_url(page, index, "pycddl-0.6.5.tar.gz"), None);
        let rooted = r#"<a href="/packages/pycddl-0.6.4.tar.gz">z</a>"#;
        assert_eq!(
            sdist_url(rooted, index, "pycddl-0.6.4.tar.gz").as_deref(),
            Some("https://pypi.org/packages/pycddl-0.6.4.tar.gz")
        );
    }

    /// Every input is in the key: a new toolchain, target or source makes a new wheel.
    #[test]
    fn key_covers_every_input() {
        let base = Inputs {
            name: "pycddl".into(),
            version: "0.6.4".into(),
            sdist_sha256: "6946".into(),
            toolchain: "1.96.0".into(),
            target: "i686-unknown-linux-gnu".into(),
            maturin: "1.16.0".into(),
            python: "3.11".into(),
        };
        let k = base.key();
        assert_eq!(k, base.clone().key());
        let variants: [fn(&mut Inputs); 7] = [
            |i| i.name.push('x'),
            |i| i.version.push('1'),
            |i| i.sdist_sha256.push('0'),
            |i| i.toolchain.push('1'),
            |i| i.target = "aarch64-unknown-linux-gnu".into(),
            |i| i.maturin.push('1'),
            |i| i.python = "3.12".into(),
        ];
        for change in variants {
            let mut i = base.clone();
            change(&mut i);
            assert_ne!(i.key(), k, "{i:?}");
        }
    }

    /// A half-built or foreign entry is never taken for the wheel: only a directory that was
    /// renamed into place (with its inputs) and holds exactly one wheel counts.
    #[test]
    fn cache_entry_needs_matching_inputs_and_one_wheel() {
        let d = tempfile::tempdir().unwrap();
        let inputs = Inputs {
            name: "pycddl".into(),
            version: "0.6.4".into(),
            sdist_sha256: "6946".into(),
            toolchain: "1.96.0".into(),
            target: "i686-unknown-linux-gnu".into(),
            maturin: "1.16.0".into(),
            python: "3.11".into(),
        };
        assert!(cached(d.path(), &inputs).is_none());
        std::fs::write(
            d.path().join("pycddl-0.6.4-cp311-cp311-linux_i686.whl"),
            "w",
        )
        .unwrap();
        assert!(cached(d.path(), &inputs).is_none(), "no inputs.json");
        let mut other = inputs.clone();
        other.toolchain = "1.85.0".into();
        std::fs::write(
            d.path().join("inputs.json"),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        assert!(cached(d.path(), &inputs).is_none(), "other inputs");
        std::fs::write(
            d.path().join("inputs.json"),
            serde_json::to_vec(&inputs).unwrap(),
        )
        .unwrap();
        let b = cached(d.path(), &inputs).unwrap();
        assert_eq!(b.sha256, cache::sha256_bytes(b"w"));
        std::fs::write(d.path().join("second.whl"), "w").unwrap();
        assert!(cached(d.path(), &inputs).is_none(), "two wheels");
    }
}
