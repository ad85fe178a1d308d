//! customise: the Cloudy layer laid over the cached rootfs: `overlay/`, the agent,
//! the default seed and systemd unit links. It is its own small squashfs (live-boot stacks it on
//! the base), so changing the overlay never touches the cached base.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cache;

#[derive(Debug, thiserror::Error)]
pub enum CustomiseError {
    #[error("overlay/{rel}: /{rel} is a symlink in the image (Debian's merged /usr), and a directory here would hide it\n  fix: move these files under overlay/usr/{rel}")]
    ShadowsSymlink { rel: String },
    #[error("unit `{unit}` (recipe key `enable` or overlay) not found in the overlay or the rootfs\n  fix: install the package that has it, or remove it from `enable`")]
    UnitNotFound { unit: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// Where unit files live on a Debian node (merged /usr: /lib is /usr/lib).
const UNIT_DIRS: &[&str] = &["etc/systemd/system", "usr/lib/systemd/system"];
/// Always enabled: the node does nothing without it.
pub const AGENT_UNIT: &str = "cloudy-agent.service";

pub struct Inputs<'a> {
    pub base: &'a Path,
    pub overlay: &'a Path,
    pub agent: &'a Path,
    pub seed: &'a str,
    pub enable: &'a [String],
}

/// Builds the layer tree at `out` (replaced if present). Returns the units it enabled.
pub fn make_layer(inp: &Inputs, out: &Path) -> Result<Vec<String>, CustomiseError> {
    let tmp = cache::tmp_path(out);
    cache::remove_any(&tmp).map_err(|e| io("removing", &tmp, e))?;
    fs::create_dir_all(&tmp).map_err(|e| io("creating", &tmp, e))?;
    copy_tree(inp.overlay, &tmp, inp.base, Path::new(""))?;
    install(inp.agent, &tmp.join("usr/bin/cloudy-agent"), 0o755)?;
    write(
        &tmp.join("etc/cloudy/agent.toml"),
        inp.seed.as_bytes(),
        0o644,
    )?;

    // Overlay units that say how to be enabled are enabled; so is what the recipe names.
    let mut units: Vec<String> = vec![AGENT_UNIT.to_string()];
    for d in UNIT_DIRS {
        if let Ok(rd) = fs::read_dir(tmp.join(d)) {
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                let text = fs::read_to_string(tmp.join(d).join(&n)).unwrap_or_default();
                if n.contains('.') && !n.ends_with(".d") && !install_section(&text).is_empty() {
                    units.push(n);
                }
            }
        }
    }
    units.extend(inp.enable.iter().cloned());
    let mut done = Vec::new();
    while let Some(u) = units.pop() {
        if done.contains(&u) {
            continue;
        }
        enable(&tmp, inp.base, &u, &mut units)?;
        done.push(u);
    }
    done.sort();
    cache::publish(&tmp, out).map_err(|e| io("renaming", &tmp, e))?;
    Ok(done)
}

/// `[Install]` entries of a unit: (key, value) pairs.
fn install_section(unit: &str) -> Vec<(String, String)> {
    let mut in_install = false;
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
        } else if in_install {
            if let Some((k, v)) = line.split_once('=') {
                for item in v.split_whitespace() {
                    out.push((k.trim().to_string(), item.to_string()));
                }
            }
        }
    }
    out
}

/// What `systemctl enable` does, done offline: the `.wants/` links and `Also=` units.
fn enable(
    layer: &Path,
    base: &Path,
    unit: &str,
    queue: &mut Vec<String>,
) -> Result<(), CustomiseError> {
    let (dir, text) = UNIT_DIRS
        .iter()
        .flat_map(|d| [(d, layer.join(d).join(unit)), (d, base.join(d).join(unit))])
        .find_map(|(d, p)| fs::read_to_string(&p).ok().map(|t| (*d, t)))
        .ok_or_else(|| CustomiseError::UnitNotFound {
            unit: unit.to_string(),
        })?;
    let target = Path::new("/").join(dir).join(unit);
    for (k, v) in install_section(&text) {
        let link = match k.as_str() {
            "WantedBy" => layer
                .join("etc/systemd/system")
                .join(format!("{v}.wants"))
                .join(unit),
            "RequiredBy" => layer
                .join("etc/systemd/system")
                .join(format!("{v}.requires"))
                .join(unit),
            "Alias" => layer.join("etc/systemd/system").join(&v),
            "Also" => {
                queue.push(v);
                continue;
            }
            _ => continue,
        };
        fs::create_dir_all(link.parent().expect("has parent"))
            .map_err(|e| io("creating", &link, e))?;
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).map_err(|e| io("linking", &link, e))?;
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path, base: &Path, rel: &Path) -> Result<(), CustomiseError> {
    let mut entries: Vec<PathBuf> = fs::read_dir(src.join(rel))
        .map_err(|e| io("reading", &src.join(rel), e))?
        .flatten()
        .map(|e| rel.join(e.file_name()))
        .collect();
    entries.sort();
    for r in entries {
        let from = src.join(&r);
        let meta = fs::symlink_metadata(&from).map_err(|e| io("reading", &from, e))?;
        let to = dst.join(&r);
        if meta.is_dir() {
            if fs::symlink_metadata(base.join(&r))
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
            {
                return Err(CustomiseError::ShadowsSymlink {
                    rel: r.display().to_string(),
                });
            }
            fs::create_dir_all(&to).map_err(|e| io("creating", &to, e))?;
            copy_tree(src, dst, base, &r)?;
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&from).map_err(|e| io("reading", &from, e))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| io("linking", &to, e))?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            install(&from, &to, meta.permissions().mode() & 0o7777)?;
        }
    }
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<(), CustomiseError> {
    let bytes = fs::read(from).map_err(|e| io("reading", from, e))?;
    write(to, &bytes, mode)
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<(), CustomiseError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = to.parent() {
        fs::create_dir_all(d).map_err(|e| io("creating", d, e))?;
    }
    fs::write(to, bytes).map_err(|e| io("writing", to, e))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(|e| io("chmod", to, e))
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> CustomiseError {
    CustomiseError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base");
        let overlay = d.path().join("overlay");
        fs::create_dir_all(base.join("usr/lib/systemd/system")).unwrap();
        std::os::unix::fs::symlink("usr/lib", base.join("lib")).unwrap();
        fs::write(base.join("usr/lib/systemd/system/systemd-networkd.service"), "[Unit]\n[Install]\nWantedBy=multi-user.target\nAlso=systemd-networkd.socket\nAlias=dbus-org.freedesktop.network1.service\n").unwrap();
        fs::write(
            base.join("usr/lib/systemd/system/systemd-networkd.socket"),
            "[Install]\nWantedBy=sockets.target\n",
        )
        .unwrap();
        fs::create_dir_all(overlay.join("usr/lib/systemd/system")).unwrap();
        fs::write(overlay.join("usr/lib/systemd/system/cloudy-agent.service"), "[Service]\nExecStart=/usr/bin/cloudy-agent run\n[Install]\nWantedBy=multi-user.target\n").unwrap();
        fs::write(d.path().join("agent"), "ELF").unwrap();
        (d, base, overlay.clone(), overlay)
    }

    #[test]
    fn layer_has_overlay_agent_seed_and_unit_links() {
        let (d, base, overlay, _) = tree();
        let out = d.path().join("layer");
        let enable = vec!["systemd-networkd.service".to_string()];
        let units = make_layer(
            &Inputs {
                base: &base,
                overlay: &overlay,
                agent: &d.path().join("agent"),
                seed: "version = 1\n",
                enable: &enable,
            },
            &out,
        )
        .unwrap();
        assert_eq!(
            units,
            [
                "cloudy-agent.service",
                "systemd-networkd.service",
                "systemd-networkd.socket"
            ]
        );
        let wants = out.join("etc/systemd/system/multi-user.target.wants");
        assert_eq!(
            fs::read_link(wants.join("cloudy-agent.service")).unwrap(),
            Path::new("/usr/lib/systemd/system/cloudy-agent.service")
        );
        assert!(fs::symlink_metadata(wants.join("systemd-networkd.service")).is_ok());
        assert!(fs::symlink_metadata(
            out.join("etc/systemd/system/sockets.target.wants/systemd-networkd.socket")
        )
        .is_ok());
        assert!(fs::symlink_metadata(
            out.join("etc/systemd/system/dbus-org.freedesktop.network1.service")
        )
        .is_ok());
        assert_eq!(
            fs::read_to_string(out.join("etc/cloudy/agent.toml")).unwrap(),
            "version = 1\n"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(out.join("usr/bin/cloudy-agent"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert!(!cache::tmp_path(&out).exists());
    }

    /// Debian's serf package enables its own Serf agent (unencrypted, every address, the port
    /// the agent's Serf needs); the repository's overlay masks it in every image, and the mask
    /// (a unit file that is a link to /dev/null) does not trip the layer's unit scan.
    #[test]
    fn the_overlay_masks_debians_own_serf_agent() {
        let (d, base, _, _) = tree();
        let repo_overlay = Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlay");
        let out = d.path().join("layer");
        make_layer(
            &Inputs {
                base: &base,
                overlay: &repo_overlay,
                agent: &d.path().join("agent"),
                seed: "",
                enable: &[],
            },
            &out,
        )
        .unwrap();
        assert_eq!(
            fs::read_link(out.join("etc/systemd/system/serf.service")).unwrap(),
            Path::new("/dev/null")
        );
    }

    #[test]
    fn overlay_may_not_hide_merged_usr_symlinks() {
        let (d, base, overlay, _) = tree();
        fs::create_dir_all(overlay.join("lib/systemd")).unwrap();
        let err = make_layer(
            &Inputs {
                base: &base,
                overlay: &overlay,
                agent: &d.path().join("agent"),
                seed: "",
                enable: &[],
            },
            &d.path().join("layer"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("overlay/usr/lib"), "{err}");
    }

    #[test]
    fn unknown_unit_is_named() {
        let (d, base, overlay, _) = tree();
        let enable = vec!["nope.service".to_string()];
        let err = make_layer(
            &Inputs {
                base: &base,
                overlay: &overlay,
                agent: &d.path().join("agent"),
                seed: "",
                enable: &enable,
            },
            &d.path().join("layer"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope.service"), "{err}");
    }
}
