//! `cloudy-image customise IMAGE`: a user's seed written into (`--seed`), shown from
//! (`--show`) or removed from (`--remove-seed`) a built image without rebuilding it, where the
//! node looks for it at boot: `/cloudy/cloudy.toml` on an ISO, `cloudy.toml` on an SD card's
//! FAT partition.
//!
//! Nothing is changed unless the file is a Cloudy image (`identify`), and a changed file is
//! only ever replaced whole: the work is done on a temporary file beside the result, renamed
//! over it at the end, so a failure leaves the input (and any `-o` output) as it was.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache;
use crate::cmd::{self, CmdError, Log};
use crate::identify::{self, Image, NotCloudy};
use crate::progress::Step;
use crate::tools::Tool;
use crate::{bmap, compress};

/// Where the node reads the seed on each kind of image.
const ISO_SEED: &str = "/cloudy/cloudy.toml";
const SD_SEED: &str = "::/cloudy.toml";
/// What customise runs; checked first, since a missing debugfs or xorriso would otherwise
/// look like an image without Cloudy's markers.
const TOOLS: [Tool; 7] = [
    Tool {
        program: "xorriso",
        package: "xorriso",
    },
    Tool {
        program: "mcopy",
        package: "mtools",
    },
    Tool {
        program: "mdel",
        package: "mtools",
    },
    Tool {
        program: "mdir",
        package: "mtools",
    },
    Tool {
        program: "mtype",
        package: "mtools",
    },
    Tool {
        program: "debugfs",
        package: "e2fsprogs",
    },
    Tool {
        program: "xz",
        package: "xz-utils",
    },
];
/// The first bytes of every xz stream.
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

#[derive(Debug, thiserror::Error)]
pub enum SeedImageError {
    #[error("{0}\n  fix: correct the seed (`cloudy-agent seed check FILE` says the same), then run customise again; the image was not touched")]
    BadSeed(String),
    #[error("{0}\n  the image was not touched")]
    LanSecret(String),
    #[error("{0}\n  fix: give a Cloudy image built by `cloudy-image build` (out/<board>/cloudy-<board>.iso, .img or .img.xz); nothing was changed")]
    NotCloudy(#[from] NotCloudy),
    #[error("{path}: not xz data, or a damaged .xz file\n  fix: give a Cloudy image built by `cloudy-image build`; nothing was changed")]
    NotXz { path: String },
    #[error("{0}")]
    Cmd(#[from] CmdError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// What `customise` does to the seed inside the image.
#[derive(Debug, Clone, Copy)]
pub enum Edit<'a> {
    /// Write this seed file (checked first).
    Write(&'a Path),
    /// Remove the seed: the node boots with the image's defaults.
    Remove,
}

/// `cloudy-image customise IMAGE (--seed FILE | --remove-seed) [-o OUT]`: changes the image
/// (or writes OUT), then updates `SHA256SUMS` beside what changed; says what it did to each
/// file.
pub fn run(image: &Path, edit: Edit, out: Option<&Path>) -> anyhow::Result<()> {
    crate::tools::check(&TOOLS)?;
    if let Edit::Write(seed) = edit {
        let text = fs::read_to_string(seed).unwrap_or_default();
        for w in crate::seed::warnings(&seed.display().to_string(), &text) {
            eprintln!("cloudy-image: {}: warning: {w}", seed.display());
        }
    }
    let done = apply(image, edit, out, &Log::sink())?;
    let changed: Vec<PathBuf> = done.iter().map(|(f, _)| f.clone()).collect();
    update_sums(&changed)?;
    for (_, what) in &done {
        eprintln!("cloudy-image: {what}");
    }
    if done.is_empty() {
        eprintln!(
            "cloudy-image: {} holds no seed; nothing was changed",
            image.display()
        );
    }
    Ok(())
}

/// `cloudy-image customise IMAGE --invite TOKEN [--community NAME]`: the image's seed (or a
/// new one) with `[community] invite = TOKEN` in place of any key, written like `--seed`.
pub fn run_invite(
    image: &Path,
    token: &str,
    community: Option<&str>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    crate::tools::check(&TOOLS)?;
    let inside = read_seed(image, &Log::sink())?;
    let text = with_invite(inside.as_deref(), token, community)?;
    let seed = scratch_path(out.unwrap_or(image), "seed.toml");
    let _ = fs::remove_file(&seed);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // The token is a secret: the scratch seed is for our eyes only.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&seed)?
            .write_all(text.as_bytes())?;
    }
    let r = run(image, Edit::Write(&seed), out);
    let _ = fs::remove_file(&seed);
    r
}

/// `seed` (or an empty one) with `[community] invite = token` (and `name`, if given), its
/// `key` removed: an invitation replaces it. The token never appears in an error.
pub fn with_invite(
    seed: Option<&str>,
    token: &str,
    community: Option<&str>,
) -> anyhow::Result<String> {
    let mut doc: toml_edit::DocumentMut = seed
        .unwrap_or("version = 1\n")
        .parse()
        .map_err(|_| anyhow::anyhow!("the seed inside the image does not parse as TOML"))?;
    if doc
        .get("community")
        .and_then(|c| c.as_table_like())
        .is_none()
    {
        doc["community"] = toml_edit::table();
    }
    let c = doc["community"]
        .as_table_like_mut()
        .ok_or_else(|| anyhow::anyhow!("[community] in the image's seed is not a table"))?;
    if let Some(n) = community {
        c.insert("name", toml_edit::value(n));
    }
    if c.get("name").is_none() {
        anyhow::bail!(
            "the seed inside names no community\n  fix: add --community NAME (the name the inviting member's community has)"
        );
    }
    c.remove("key");
    c.insert("invite", toml_edit::value(token.trim()));
    Ok(doc.to_string())
}

/// `cloudy-image customise IMAGE --show`: the seed inside, its secrets replaced by a note.
pub fn show(image: &Path) -> anyhow::Result<()> {
    crate::tools::check(&TOOLS)?;
    match read_seed(image, &Log::sink())? {
        Some(text) => print!("{}", redact(&text)),
        None => eprintln!(
            "cloudy-image: {} holds no seed; the node boots with the image's defaults",
            image.display()
        ),
    }
    Ok(())
}

/// Validates the seed (when writing one), checks `image` is a Cloudy image, and writes the
/// result to `out` (default: `image` itself), replaced atomically. Returns each file changed
/// with a line saying what was done to it; nothing when there was nothing to remove.
pub fn apply(
    image: &Path,
    edit: Edit,
    out: Option<&Path>,
    log: &Log,
) -> Result<Vec<(PathBuf, String)>, SeedImageError> {
    if let Edit::Write(seed) = edit {
        let text = fs::read_to_string(seed).map_err(|e| io("reading the seed", seed, e))?;
        let name = seed.display().to_string();
        crate::seed::check(&name, &text).map_err(SeedImageError::BadSeed)?;
        if in_pxe_bundle(out.unwrap_or(image)) {
            crate::seed::check_for_lan(&name, &text).map_err(SeedImageError::LanSecret)?;
        }
    }
    let target = out.unwrap_or(image);
    let work = Work::open(image, target, log)?;
    let result = edit_image(&work, image, target, edit, log);
    work.clean();
    result
}

/// A PXE bundle's live ISO: its directory holds the bundle's boot script, and everything
/// in it is served to the LAN.
fn in_pxe_bundle(iso: &Path) -> bool {
    let dir = iso.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    dir.join("boot.ipxe").exists()
}

/// The file the edit works on: the image itself, or a decompressed copy of an `.img.xz`.
struct Work {
    raw: PathBuf,
    kind: Image,
    xz: bool,
    /// A decompressed copy this run made (removed at the end).
    scratch: Option<PathBuf>,
}

impl Work {
    fn open(image: &Path, target: &Path, log: &Log) -> Result<Work, SeedImageError> {
        // A missing path is named as such before anything tries to read it.
        if !image.exists() {
            identify::identify(image)?;
        }
        if !is_xz(image).map_err(|e| io("reading", image, e))? {
            let kind = identify::identify(image)?;
            return Ok(Work {
                raw: image.to_path_buf(),
                kind,
                xz: false,
                scratch: None,
            });
        }
        let raw = scratch_path(target, "raw");
        if let Err(e) = decompress(image, &raw, log) {
            let _ = fs::remove_file(&raw);
            return Err(match e {
                SeedImageError::Cmd(_) => SeedImageError::NotXz {
                    path: image.display().to_string(),
                },
                e => e,
            });
        }
        match identify::identify(&raw) {
            Ok(kind) => Ok(Work {
                raw: raw.clone(),
                kind,
                xz: true,
                scratch: Some(raw),
            }),
            Err(e) => {
                let _ = fs::remove_file(&raw);
                // Name the file the user gave, not the scratch copy.
                Err(NotCloudy::Foreign {
                    path: image.display().to_string(),
                    found: format!(
                        "xz data holding {}",
                        match e {
                            NotCloudy::Foreign { found, .. } => found,
                            e => e.to_string(),
                        }
                    ),
                }
                .into())
            }
        }
    }

    fn clean(&self) {
        if let Some(s) = &self.scratch {
            let _ = fs::remove_file(s);
        }
    }
}

fn edit_image(
    work: &Work,
    image: &Path,
    target: &Path,
    edit: Edit,
    log: &Log,
) -> Result<Vec<(PathBuf, String)>, SeedImageError> {
    if matches!(edit, Edit::Remove) && !has_seed(work)? {
        return Ok(Vec::new());
    }
    let what = match edit {
        Edit::Write(seed) => format!("wrote the seed {} into", seed.display()),
        Edit::Remove => "removed the seed from".to_string(),
    };
    let step = Step::hidden();
    // The new image, complete, under a temporary name (raw: the uncompressed one).
    let tmp = if work.xz {
        work.raw.clone()
    } else {
        cache::tmp_path(target)
    };
    let _ = fs::remove_file(cache::tmp_path(target));
    match work.kind {
        Image::Iso => {
            let mut c = Command::new("xorriso");
            c.arg("-indev").arg(&work.raw).arg("-outdev");
            // xorriso writes a new ISO; for an .xz it goes beside the raw copy.
            let iso_out = if work.xz {
                scratch_path(target, "iso")
            } else {
                tmp.clone()
            };
            c.arg(&iso_out).args(["-boot_image", "any", "replay"]);
            match edit {
                Edit::Write(seed) => {
                    c.arg("-map")
                        .arg(seed)
                        .arg(ISO_SEED)
                        .args(["-chmod", "0644", ISO_SEED, "--"]);
                }
                Edit::Remove => {
                    c.args(["-rm", ISO_SEED, "--"]);
                }
            }
            c.arg("-commit");
            if let Err(e) = cmd::run(&mut c, log, &step) {
                let _ = fs::remove_file(&iso_out);
                return Err(e.into());
            }
            if work.xz {
                fs::rename(&iso_out, &work.raw).map_err(|e| io("renaming", &iso_out, e))?;
            }
        }
        Image::Sd { fat_offset } => {
            if !work.xz {
                // A copy, so a failure part-way never leaves a half-changed card image; kept
                // sparse (a card image is mostly holes, and its block map maps only data).
                let mut c = Command::new("cp");
                c.args(["--sparse=always", "--reflink=auto", "--"])
                    .arg(&work.raw)
                    .arg(&tmp);
                if let Err(e) = cmd::run(&mut c, log, &step) {
                    let _ = fs::remove_file(&tmp);
                    return Err(e.into());
                }
            }
            let spec = format!("{}@@{fat_offset}", tmp.display());
            let mut c = match edit {
                Edit::Write(seed) => {
                    let mut c = Command::new("mcopy");
                    c.args(["-o", "-i", &spec]).arg(seed).arg(SD_SEED);
                    c
                }
                Edit::Remove => {
                    let mut c = Command::new("mdel");
                    c.args(["-i", &spec, SD_SEED]);
                    c
                }
            };
            c.env("MTOOLS_SKIP_CHECK", "1");
            if let Err(e) = cmd::run(&mut c, log, &step) {
                if !work.xz {
                    let _ = fs::remove_file(&tmp);
                }
                return Err(e.into());
            }
        }
    }
    if work.xz {
        compress::xz(&work.raw, target, compress::SD_PRESET)
            .map_err(|e| io("compressing", target, e))?;
    } else {
        fs::rename(&tmp, target).map_err(|e| io("renaming", &tmp, e))?;
    }
    let mut done = vec![(target.to_path_buf(), format!("{what} {}", target.display()))];
    // An SD image's block map lists checksums of its blocks: it is made again for the new
    // image (an .img.xz always has one; a raw .img where the input had one).
    if matches!(work.kind, Image::Sd { .. }) {
        let (src_map, out_map) = if work.xz {
            (bmap_of_xz(image), bmap_of_xz(target))
        } else {
            (
                image.with_extension("img.bmap"),
                target.with_extension("img.bmap"),
            )
        };
        if work.xz || src_map.exists() {
            let map = bmap::make(&work.raw_or(target))
                .map_err(|e| io("mapping", &work.raw_or(target), e))?;
            cache::write_atomic(&out_map, map.as_bytes())
                .map_err(|e| io("writing", &out_map, e))?;
            done.push((
                out_map.clone(),
                format!("regenerated the block map {}", out_map.display()),
            ));
        }
    }
    Ok(done)
}

impl Work {
    /// The uncompressed result: the scratch copy of an .xz, else the written target.
    fn raw_or(&self, target: &Path) -> PathBuf {
        if self.xz {
            self.raw.clone()
        } else {
            target.to_path_buf()
        }
    }
}

/// `cloudy-rpi4.img.xz` -> `cloudy-rpi4.img.bmap`, as `build` names them.
fn bmap_of_xz(xz: &Path) -> PathBuf {
    let name = xz
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".xz").unwrap_or(&name);
    xz.with_file_name(format!("{stem}.bmap"))
}

fn has_seed(work: &Work) -> Result<bool, SeedImageError> {
    Ok(match work.kind {
        Image::Iso => identify::iso_has(&work.raw, ISO_SEED),
        Image::Sd { fat_offset } => Command::new("mdir")
            .args([
                "-b",
                "-i",
                &format!("{}@@{fat_offset}", work.raw.display()),
                SD_SEED,
            ])
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .is_ok_and(|o| o.status.success()),
    })
}

/// The seed text inside `image`, if it holds one.
pub fn read_seed(image: &Path, log: &Log) -> Result<Option<String>, SeedImageError> {
    // Scratch files go to the temporary directory: showing never writes beside the image.
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    let scratch = std::env::temp_dir().join(format!("{}-{name}", std::process::id()));
    let work = Work::open(image, &scratch, log)?;
    let r = read_work_seed(&work, &scratch, log);
    work.clean();
    r
}

fn read_work_seed(
    work: &Work,
    scratch: &Path,
    log: &Log,
) -> Result<Option<String>, SeedImageError> {
    if !has_seed(work)? {
        return Ok(None);
    }
    let step = Step::hidden();
    let text = match work.kind {
        Image::Iso => {
            let to = scratch_path(scratch, "seed");
            let mut c = Command::new("xorriso");
            c.args(["-osirrox", "on", "-indev"])
                .arg(&work.raw)
                .args(["-extract", ISO_SEED])
                .arg(&to);
            let r = cmd::run(&mut c, log, &step)
                .map_err(SeedImageError::from)
                .and_then(|_| fs::read_to_string(&to).map_err(|e| io("reading", &to, e)));
            let _ = fs::remove_file(&to);
            r?
        }
        Image::Sd { fat_offset } => {
            let mut c = Command::new("mtype");
            c.args([
                "-i",
                &format!("{}@@{fat_offset}", work.raw.display()),
                SD_SEED,
            ])
            .env("MTOOLS_SKIP_CHECK", "1");
            cmd::run(&mut c, log, &step)?
        }
    };
    Ok(Some(text))
}

/// The seed with every secret's value replaced (the community key, the dashboard's password
/// hash, a Wi-Fi psk: whatever `is_secret_key` names), comments and layout kept. Text that is
/// not TOML is not shown at all: any line of it could be a secret.
pub fn redact(text: &str) -> String {
    let Ok(mut doc) = text.parse::<toml_edit::DocumentMut>() else {
        return "# (the seed in this image is not valid TOML; not shown, as it may hold secrets)\n"
            .to_string();
    };
    redact_table(doc.as_table_mut());
    doc.to_string()
}

fn redact_table(t: &mut dyn toml_edit::TableLike) {
    for (k, item) in t.iter_mut() {
        // Public keys that may log in are not secrets, and users check them here.
        let secret = k.get() != "authorized_keys"
            && (cloudy_model::seed::is_secret_key(k.get())
                || k.get().contains("psk")
                || k.get() == "invite");
        if let Some(sub) = item.as_table_like_mut() {
            redact_table(sub);
        } else if let Some(arr) = item.as_array_of_tables_mut() {
            for sub in arr.iter_mut() {
                redact_table(sub);
            }
        } else if secret {
            if let Some(v) = item.as_value_mut() {
                let decor = v.decor().clone();
                *v = toml_edit::Value::from("<redacted>");
                *v.decor_mut() = decor;
            }
        }
    }
}

fn is_xz(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 6];
    let mut f = fs::File::open(path)?;
    let n = f.read(&mut head)?;
    Ok(n == head.len() && head == XZ_MAGIC)
}

/// A scratch file beside `target` (same file system, so renames are atomic).
fn scratch_path(target: &Path, what: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.customise-{what}"))
}

/// `xz -dc` straight into a file: no shell, so any path is safe.
fn decompress(xz: &Path, to: &Path, log: &Log) -> Result<(), SeedImageError> {
    let out = fs::File::create(to).map_err(|e| io("creating", to, e))?;
    log.line(&format!("$ xz -dc -T0 {} > {}", xz.display(), to.display()));
    let st = Command::new("xz")
        .args(["-dc", "-T0"])
        .arg(xz)
        .stdout(out)
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|source| CmdError::Spawn {
            program: "xz".into(),
            source,
        })?;
    if !st.success() {
        let _ = fs::remove_file(to);
        return Err(CmdError::Failed {
            command: format!("xz -dc {}", xz.display()),
            status: st.to_string(),
            tail: String::new(),
        }
        .into());
    }
    Ok(())
}

/// Rewrites the lines naming `files` in the `SHA256SUMS` beside them or one level up (a PXE
/// bundle's files are listed as `pxe/<name>`).
pub fn update_sums(files: &[PathBuf]) -> std::io::Result<()> {
    let Some(parent) = files.first().and_then(|f| f.parent()) else {
        return Ok(());
    };
    for dir in [Some(parent), parent.parent()].into_iter().flatten() {
        let sums = dir.join("SHA256SUMS");
        let Ok(text) = fs::read_to_string(&sums) else {
            continue;
        };
        let mut out = String::new();
        for line in text.lines() {
            let name = line.split_once("  ").map(|(_, n)| n).unwrap_or("");
            match files.iter().find(|f| same_file(f, &dir.join(name))) {
                Some(f) => out.push_str(&format!("{}  {name}\n", cache::sha256_file(f)?)),
                None => out.push_str(&format!("{line}\n")),
            }
        }
        return cache::write_atomic(&sums, out.as_bytes());
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> SeedImageError {
    SeedImageError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_seed_refused_before_touching_the_image() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.iso");
        fs::write(&img, b"not touched").unwrap();
        let seed = d.path().join("s.toml");
        fs::write(&seed, "version = 1\n[node]\nname = \"Bad Name!\"\n").unwrap();
        let err = apply(&img, Edit::Write(&seed), None, &Log::sink())
            .unwrap_err()
            .to_string();
        assert!(err.contains("node.name") && err.contains("fix:"), "{err}");
        assert_eq!(fs::read(&img).unwrap(), b"not touched");
    }

    /// A PXE bundle serves `cloudy.iso` to the whole LAN. The old code wrote a seed holding
    /// the community key into it as into any ISO, so anyone on the LAN could fetch the key.
    #[test]
    fn a_secret_is_refused_for_a_pxe_bundle() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("boot.ipxe"), b"#!ipxe\n").unwrap();
        let img = d.path().join("cloudy.iso");
        fs::write(&img, b"not touched").unwrap();
        let seed = d.path().join("s.toml");
        for (text, says) in [
            (
                "version = 1\n[community]\nname = \"lab\"\nkey = \"0123456789abcdef0123\"\n",
                "community key",
            ),
            (
                "version = 1\n[community]\nname = \"lab\"\ninvite = \"cloudy1m:AAAAAAAAAAAAAAAAAAAAAA@10.0.0.1:6655\"\n",
                "several nodes",
            ),
        ] {
            fs::write(&seed, text).unwrap();
            let err = apply(&img, Edit::Write(&seed), None, &Log::sink())
                .unwrap_err()
                .to_string();
            assert!(err.contains(says) && err.contains("single-use invitation"), "{err}");
            // The approval flow is named (issue 15): name only, then approve by fingerprint.
            assert!(
                err.contains("only `[community] name`") && err.contains("cloudy-agent approve"),
                "{err}"
            );
            assert!(!err.contains("0123456789abcdef0123") && !err.contains("AAAAAAAA"), "{err}");
            assert_eq!(fs::read(&img).unwrap(), b"not touched");
        }
        // The same seeds are fine for a lone ISO (the user's own medium); a single-use
        // invitation passes the bundle's check (it then fails here only on the fake image).
        assert!(!in_pxe_bundle(Path::new("/nonexistent/cloudy.iso")));
        fs::write(
            &seed,
            "version = 1\n[community]\nname = \"lab\"\ninvite = \"cloudy1:AAAAAAAAAAAAAAAAAAAAAA@10.0.0.1:6655\"\n",
        )
        .unwrap();
        let err = apply(&img, Edit::Write(&seed), None, &Log::sink())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("PXE"), "{err}");
    }

    #[test]
    fn an_invitation_replaces_the_key_and_keeps_the_rest() {
        let token = "cloudy1:AAAAAAAAAAAAAAAAAAAAAA@10.0.0.1:6655";
        let seed = "version = 1\n# mine\n[node]\nname = \"b\"\n[community]\nname = \"lab\"\nkey = \"0123456789abcdef0\"\n";
        let out = with_invite(Some(seed), token, None).unwrap();
        assert!(
            out.contains("# mine") && out.contains(token) && !out.contains("0123456789abcdef0")
        );
        crate::seed::check("x", &out).unwrap();
        // `--show` hides it like the key.
        assert!(!redact(&out).contains("AAAAAAAA"), "{}", redact(&out));
        let err = with_invite(None, token, None).unwrap_err().to_string();
        assert!(
            err.contains("--community") && !err.contains("AAAA"),
            "{err}"
        );
        let out = with_invite(None, token, Some("lab")).unwrap();
        crate::seed::check("x", &out).unwrap();
    }

    #[test]
    fn xz_decompresses_to_a_path_with_a_quote() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("it's.img");
        fs::write(&src, vec![7u8; 100_000]).unwrap();
        let xz = d.path().join("it's.img.xz");
        compress::xz(&src, &xz, 1).unwrap();
        let back = d.path().join("o'back.img");
        decompress(&xz, &back, &Log::sink()).unwrap();
        assert_eq!(fs::read(&back).unwrap(), vec![7u8; 100_000]);
    }
}
