//! The recipe's `[[pip]]` entries: wheels fetched on the host, one venv hook each.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{io, BootstrapError};
use super::hooks::{hook, PIP_VENV_HOOK};
use super::package::Package;
use crate::board::Board;
use crate::cache;
use crate::cmd::{self, Log};
use crate::progress::Step;
use crate::recipe::Loaded;

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

/// One customize hook per `[[pip]]` entry of this board (see pip-venv.sh), after its wheels
/// are fetched on the host. Returns the requirement files written for the hooks, for the
/// caller to remove once mmdebstrap is done.
#[allow(clippy::too_many_arguments)]
pub(super) fn pip_hooks(
    c: &mut Command,
    board: &Board,
    recipe: &Loaded,
    dir: &Path,
    key: &str,
    pip_list: &Path,
    log: &Log,
    step: &Step,
) -> Result<Vec<PathBuf>, BootstrapError> {
    let mut req_files = Vec::new();
    for (i, (entry, text)) in pip_entries(board, recipe).into_iter().enumerate() {
        step.message(&format!("fetching wheels for {}", entry.venv));
        let wheels = fetch_wheels(entry, text, board, recipe, dir, log, step)?;
        let req = dir.join(format!("{key}.req{i}.tmp"));
        std::fs::write(&req, text).map_err(|source| io("writing", &req, source))?;
        let system_site = if entry.debian.is_empty() { "no" } else { "yes" };
        c.arg(hook(
            "customize",
            PIP_VENV_HOOK,
            &[
                &wheels.display().to_string(),
                &req.display().to_string(),
                &entry.venv,
                system_site,
                &i.to_string(),
                &pip_list.display().to_string(),
            ],
        ));
        req_files.push(req);
    }
    Ok(req_files)
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

/// `pip list --format=freeze` lines (tagged with the entry's index) as manifest packages.
pub(super) fn parse_pip(text: &str, arch: &str) -> Vec<Package> {
    let mut v: Vec<Package> = text
        .lines()
        .filter_map(|l| {
            let (pin, _) = l.split_once('\t')?;
            let (name, version) = pin.split_once("==")?;
            Some(Package {
                name: name.into(),
                version: version.into(),
                arch: format!("pypi/{arch}"),
            })
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v.dedup_by(|a, b| a.name == b.name && a.version == b.version);
    v
}
