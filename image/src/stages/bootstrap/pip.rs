//! The recipe's `[[pip]]` entries: wheels fetched (or built, see wheel.rs) on the host, one
//! venv hook each.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{io, BootstrapError};
use super::hooks::{hook, PIP_CLOSURE, PIP_VENV_HOOK};
use super::package::{Origin, Package};
use super::wheel;
use crate::board::Board;
use crate::cache;
use crate::cmd::{self, Log};
use crate::progress::Step;
use crate::recipe::{normalise, Loaded};

/// The recipe's `[[pip]]` entries that apply to this board, with their requirements text
/// (their Debian packages go into the package set, so into the key too).
pub(super) fn pip_entries<'a>(
    board: &Board,
    recipe: &'a Loaded,
) -> Vec<(&'a crate::recipe::Pip, &'a str)> {
    recipe
        .recipe
        .pip
        .iter()
        .zip(&recipe.pip_requirements)
        .filter(|(p, _)| p.applies_to(board.arch.debian()))
        .map(|(p, t)| (p, t.as_str()))
        .collect()
}

/// What the pip hooks were given: requirement files to remove once mmdebstrap is done, and
/// per entry (by index) the wheels it installs from, for the manifest.
pub(super) struct Hooks {
    pub req_files: Vec<PathBuf>,
    /// (recipe entry index, fetched wheels dir, wheels built on the host)
    pub entries: Vec<(usize, PathBuf, Vec<wheel::Built>)>,
}

/// A wheel built on the host (wheel.rs) while mmdebstrap runs: the venv hook needs it only at
/// the end, so a cold build's Rust compile overlaps the download and unpacking of packages
/// instead of coming before them. The builder reports through two files beside the rootfs:
/// `<marker>.ready` (the wheel's path) or `<marker>.failed` (why), and the hook waits for one.
pub(super) struct Job {
    /// The recipe entry (by index) whose venv installs it.
    entry: usize,
    pin: crate::recipe::PipBuild,
    version: String,
    python: String,
    marker: PathBuf,
}

/// The host-built wheels of one bootstrap, and what the builder made of them.
pub(super) struct Plan {
    jobs: Vec<Job>,
    built: std::sync::Mutex<Vec<(usize, wheel::Built)>>,
}

impl Plan {
    /// The wheels this board's `[[pip]]` entries build on the host; stale markers of an
    /// interrupted build are removed, so the hook never takes an old one.
    pub fn new(board: &Board, recipe: &Loaded, dir: &Path, key: &str) -> Plan {
        let mut jobs = Vec::new();
        for (entry, text) in pip_entries(board, recipe) {
            let index = entry_index(recipe, entry);
            for b in &entry.build {
                let version = crate::recipe::Pip::pinned_version(text, &b.name)
                    .expect("checked when the recipe was loaded");
                // The process id keeps two builds of one board sharing a cache apart.
                let marker = dir.join(format!(
                    "{key}.{}.wheel{}.tmp",
                    std::process::id(),
                    jobs.len()
                ));
                for end in ["ready", "failed"] {
                    let _ = std::fs::remove_file(marker.with_extension(end));
                }
                jobs.push(Job {
                    entry: index,
                    pin: b.clone(),
                    version: version.to_string(),
                    python: entry.python.clone(),
                    marker,
                });
            }
        }
        Plan {
            jobs,
            built: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Builds (or finds cached) every wheel in turn, telling the hook of each. After a
    /// failure, or if this ends any other way (a panic), every job without an answer is
    /// marked failed, so no hook waits for ever.
    pub fn build(
        &self,
        board: &Board,
        recipe: &Loaded,
        dir: &Path,
        log: &Log,
        step: &Step,
    ) -> Result<(), BootstrapError> {
        struct Unanswered<'a>(&'a [Job]);
        impl Drop for Unanswered<'_> {
            fn drop(&mut self) {
                for job in self.0 {
                    if !job.marker.with_extension("ready").exists() {
                        let _ = answer(&job.marker, "failed", "the wheel builder stopped");
                    }
                }
            }
        }
        let _guard = Unanswered(&self.jobs);
        let security_mirror = recipe.recipe.security_mirror();
        let env = wheel::Env {
            cache: dir.parent().unwrap_or(dir),
            mirror: &recipe.recipe.mirror,
            security_mirror: &security_mirror,
            recipe: &recipe.path,
        };
        for job in &self.jobs {
            let built = wheel::wheel(
                &job.pin,
                &job.version,
                &job.python,
                board.arch,
                &env,
                log,
                step,
            );
            match built {
                Ok(b) => {
                    answer(&job.marker, "ready", &b.wheel.display().to_string())
                        .map_err(|source| io("writing", &job.marker, source))?;
                    self.built
                        .lock()
                        .expect("the builder holds no lock across a panic")
                        .push((job.entry, b));
                }
                Err(e) => {
                    let _ = answer(&job.marker, "failed", &e.to_string());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The wheels built so far, into the hooks' entries (for the manifest).
    pub fn record(&self, hooks: &mut Hooks) {
        let built = self.built.lock().expect("the builder is done");
        for (index, _, list) in hooks.entries.iter_mut() {
            list.extend(
                built
                    .iter()
                    .filter(|(e, _)| e == index)
                    .map(|(_, b)| b.clone()),
            );
        }
    }

    /// Removes the markers (the builder is done).
    pub fn clean(&self) {
        for job in &self.jobs {
            for end in ["ready", "failed"] {
                let _ = std::fs::remove_file(job.marker.with_extension(end));
            }
        }
    }
}

/// Writes `<marker>.<end>` whole (under a temporary name first): the hook reads it as soon as
/// the name appears.
fn answer(marker: &Path, end: &str, text: &str) -> std::io::Result<()> {
    let tmp = marker.with_extension(format!("{end}.part"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, marker.with_extension(end))
}

/// One customize hook per `[[pip]]` entry of this board (see pip-venv.sh), after its wheels
/// are fetched; the ones built on the host are waited for by the hook (see [`Job`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn pip_hooks(
    c: &mut Command,
    board: &Board,
    recipe: &Loaded,
    plan: &Plan,
    dir: &Path,
    key: &str,
    pip_list: &Path,
    log: &Log,
    step: &Step,
) -> Result<Hooks, BootstrapError> {
    let mut hooks = Hooks {
        req_files: Vec::new(),
        entries: Vec::new(),
    };
    for (i, (entry, text)) in pip_entries(board, recipe).into_iter().enumerate() {
        let index = entry_index(recipe, entry);
        step.message(&format!("fetching wheels for {}", entry.venv));
        let fetched = without_built(text, entry);
        let wheels = fetch_wheels(entry, &fetched, board, recipe, dir, log, step)?;
        let req = dir.join(format!("{key}.req{i}.tmp"));
        std::fs::write(&req, text).map_err(|source| io("writing", &req, source))?;
        let system_site = if entry.debian.is_empty() { "no" } else { "yes" };
        let mut args = vec![
            wheels.display().to_string(),
            req.display().to_string(),
            entry.venv.clone(),
            system_site.to_string(),
            index.to_string(),
            pip_list.display().to_string(),
            PIP_CLOSURE.to_string(),
        ];
        args.extend(
            plan.jobs
                .iter()
                .filter(|j| j.entry == index)
                .map(|j| j.marker.display().to_string()),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.arg(hook("customize", PIP_VENV_HOOK, &args));
        hooks.req_files.push(req);
        hooks.entries.push((index, wheels, Vec::new()));
    }
    Ok(hooks)
}

/// The entry's index in the recipe's `[[pip]]` list (entries of other arches included).
fn entry_index(recipe: &Loaded, entry: &crate::recipe::Pip) -> usize {
    recipe
        .recipe
        .pip
        .iter()
        .position(|p| std::ptr::eq(p, entry))
        .expect("the entry is the recipe's")
}

/// The requirements without the pins built on the host: PyPI has no wheel of them here.
fn without_built(text: &str, entry: &crate::recipe::Pip) -> String {
    text.lines()
        .filter(|l| {
            let name = l.split("==").next().unwrap_or_default().trim();
            !entry
                .build
                .iter()
                .any(|b| normalise(&b.name) == normalise(name))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The wheels of one `[[pip]]` entry for this board's arch, cached under the bootstrap dir by
/// a hash of the pins, arch and Python version (a second build fetches nothing).
fn fetch_wheels(
    entry: &crate::recipe::Pip,
    text: &str,
    board: &Board,
    recipe: &Loaded,
    dir: &Path,
    log: &Log,
    step: &Step,
) -> Result<PathBuf, BootstrapError> {
    let machine = match board.arch {
        crate::board::Arch::Amd64 => "x86_64",
        crate::board::Arch::I386 => "i686",
        crate::board::Arch::Armhf => "armv7l",
        crate::board::Arch::Arm64 => "aarch64",
        // The Pi 1 and Zero's uname; the bootstrap's qemu-user emulates their CPU (arm1176).
        crate::board::Arch::Armel => "armv6l",
    };
    let key = cache::sha256_bytes(format!("{machine}\n{}\n{text}", entry.python).as_bytes())[..24]
        .to_string();
    let wheels = dir.join("wheels").join(&key);
    if wheels.is_dir() {
        log.line(&format!("bootstrap: wheels cached {}", wheels.display()));
        return Ok(wheels);
    }
    let tmp = cache::tmp_path(&wheels);
    cache::remove_any(&tmp).map_err(|source| io("removing", &tmp, source))?;
    std::fs::create_dir_all(&tmp).map_err(|source| io("creating", &tmp, source))?;
    let req = tmp.join("requirements.txt");
    std::fs::write(&req, text).map_err(|source| io("writing", &req, source))?;
    let py = entry.python.replace('.', "");
    let mut c = Command::new("python3");
    c.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--implementation",
        "cp",
    ])
    .args([
        "--python-version",
        &entry.python,
        "--abi",
        &format!("cp{py}"),
        "--abi",
        "abi3",
        "--abi",
        "none",
    ])
    .arg("--dest")
    .arg(&tmp)
    .arg("-r")
    .arg(&req)
    .env("PIP_FIND_LINKS", "");
    for p in &platforms(machine) {
        c.args(["--platform", p]);
    }
    if let Err(e) = cmd::run(&mut c, log, step) {
        let _ = cache::remove_any(&tmp);
        let file = recipe.path.display().to_string();
        return Err(BootstrapError::Wheels {
            venv: entry.venv.clone(),
            arch: board.arch.debian().into(),
            recipe: file,
            detail: e.tail().to_string(),
        });
    }
    let _ = std::fs::remove_file(&req);
    cache::publish(&tmp, &wheels).map_err(|source| io("renaming", &tmp, source))?;
    Ok(wheels)
}

/// pip matches --platform tags literally: every manylinux level a wheel for `machine` may carry.
fn platforms(machine: &str) -> Vec<String> {
    let mut platforms = vec![format!("linux_{machine}")];
    if matches!(machine, "x86_64" | "i686") {
        platforms.extend(
            ["manylinux1", "manylinux2010"]
                .iter()
                .map(|m| format!("{m}_{machine}")),
        );
    }
    platforms.push(format!("manylinux2014_{machine}"));
    platforms.extend((5..=36).map(|n| format!("manylinux_2_{n}_{machine}")));
    platforms
}

/// pip-closure.py's lines (`name==version`, entry index, where) as manifest packages, each
/// with its origin and, where another entry of the same venv pins another version, that one.
pub(super) fn parse_pip(text: &str, board: &Board, recipe: &Loaded, hooks: &Hooks) -> Vec<Package> {
    let arch = board.arch.debian();
    let mut v: Vec<Package> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, version) = f.next()?.split_once("==")?;
            let index: usize = f.next()?.trim().parse().ok()?;
            let where_ = f.next().unwrap_or("venv").trim();
            let from = origin(name, version, where_, index, hooks);
            Some(Package {
                name: name.into(),
                version: version.into(),
                arch: format!("pypi/{arch}"),
                from: Some(from),
                elsewhere: elsewhere(name, version, index, recipe),
            })
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v.dedup_by(|a, b| a.name == b.name && a.version == b.version);
    v
}

fn origin(name: &str, version: &str, where_: &str, index: usize, hooks: &Hooks) -> Origin {
    if let Some(deb) = where_.strip_prefix("debian:") {
        let (package, version) = deb.split_once('=').unwrap_or((deb, ""));
        return Origin::Debian {
            package: package.into(),
            version: version.into(),
        };
    }
    let Some((_, fetched, built)) = hooks.entries.iter().find(|(i, _, _)| *i == index) else {
        return Origin::Venv;
    };
    if let Some(b) = built.iter().find(|b| wheel_is(&b.wheel, name, version)) {
        return Origin::Built {
            file: file_name(&b.wheel),
            sha256: b.sha256.clone(),
            inputs: b.inputs.clone(),
        };
    }
    let wheel = std::fs::read_dir(fetched)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| wheel_is(p, name, version));
    match wheel.and_then(|w| Some((file_name(&w), cache::sha256_file(&w).ok()?))) {
        Some((file, sha256)) => Origin::PypiWheel { file, sha256 },
        None => Origin::Venv,
    }
}

/// Whether `path` is a wheel of `name` `version` (`<name>-<version>-<tags>.whl`, the name
/// normalised as PEP 427 allows).
fn wheel_is(path: &Path, name: &str, version: &str) -> bool {
    let file = file_name(path);
    let mut parts = file.trim_end_matches(".whl").split('-');
    file.ends_with(".whl")
        && parts
            .next()
            .is_some_and(|n| normalise(n) == normalise(name))
        && parts.next() == Some(version)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// "<version> on <arches>" when another `[[pip]]` entry of the same venv pins `name` at
/// another version.
fn elsewhere(name: &str, version: &str, index: usize, recipe: &Loaded) -> Option<String> {
    let pip = &recipe.recipe.pip;
    let venv = &pip.get(index)?.venv;
    pip.iter()
        .zip(&recipe.pip_requirements)
        .enumerate()
        .filter(|(i, (p, _))| *i != index && &p.venv == venv)
        .find_map(|(_, (p, text))| {
            let other = crate::recipe::Pip::pinned_version(text, name)?;
            (other != version).then(|| format!("{other} on {}", p.arches.join(", ")))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Recipe;

    fn shipped() -> (Board, Loaded) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let (board, _) = Board::load(&root.join("hardware/pc-686-pae.toml")).unwrap();
        (
            board,
            Recipe::load(&root.join("recipes/cloudy.toml")).unwrap(),
        )
    }

    #[test]
    fn built_pins_are_not_fetched_from_pypi() {
        let (board, recipe) = shipped();
        let entries = pip_entries(&board, &recipe);
        assert_eq!(entries.len(), 1, "one Tahoe entry on i386");
        let (entry, text) = entries[0];
        assert!(text.contains("pycddl==0.6.4"));
        let fetched = without_built(text, entry);
        assert!(
            !fetched.lines().any(|l| l.starts_with("pycddl==")),
            "{fetched}"
        );
        assert!(fetched.contains("tahoe-lafs==1.20.0"));
    }

    /// The manifest says of each distribution where it came from, and what amd64 pins instead.
    #[test]
    fn closure_lines_become_manifest_entries_with_origins() {
        let (board, recipe) = shipped();
        let (entry, _) = pip_entries(&board, &recipe)[0];
        let index = entry_index(&recipe, entry);
        let fetched = tempfile::tempdir().unwrap();
        std::fs::write(
            fetched.path().join("tahoe_lafs-1.20.0-py3-none-any.whl"),
            "tahoe",
        )
        .unwrap();
        let inputs = wheel::Inputs {
            name: "pycddl".into(),
            version: "0.6.4".into(),
            sdist_sha256: "6946".into(),
            toolchain: "1.96.0".into(),
            target: "i686-unknown-linux-gnu".into(),
            maturin: "1.16.0".into(),
            python: "3.11".into(),
        };
        let hooks = Hooks {
            req_files: vec![],
            entries: vec![(
                index,
                fetched.path().to_path_buf(),
                vec![wheel::Built {
                    wheel: PathBuf::from("/c/pycddl-0.6.4-cp311-cp311-linux_i686.whl"),
                    sha256: "ab".into(),
                    inputs: inputs.clone(),
                }],
            )],
        };
        let text = format!(
            "tahoe-lafs==1.20.0\t{index}\tvenv\npycddl==0.6.4\t{index}\tvenv\n\
             cryptography==38.0.4\t{index}\tdebian:python3-cryptography=38.0.4-3+deb12u1\n\
             setuptools==66.1.1\t{index}\tvenv\n"
        );
        let v = parse_pip(&text, &board, &recipe, &hooks);
        let get = |n: &str| v.iter().find(|p| p.name == n).unwrap();
        assert_eq!(
            get("tahoe-lafs").from,
            Some(Origin::PypiWheel {
                file: "tahoe_lafs-1.20.0-py3-none-any.whl".into(),
                sha256: cache::sha256_bytes(b"tahoe"),
            })
        );
        assert_eq!(get("tahoe-lafs").elsewhere, None, "same on amd64");
        assert_eq!(
            get("pycddl").from,
            Some(Origin::Built {
                file: "pycddl-0.6.4-cp311-cp311-linux_i686.whl".into(),
                sha256: "ab".into(),
                inputs,
            })
        );
        assert_eq!(
            get("cryptography").from,
            Some(Origin::Debian {
                package: "python3-cryptography".into(),
                version: "38.0.4-3+deb12u1".into(),
            })
        );
        assert_eq!(
            get("cryptography").elsewhere.as_deref(),
            Some("50.0.2 on amd64")
        );
        assert_eq!(get("setuptools").from, Some(Origin::Venv));
        assert_eq!(get("setuptools").arch, "pypi/i386");
    }
}
