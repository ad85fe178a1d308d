//! Where the agent reads and writes on the node. Everything goes through a root directory so
//! that tests (and several agents side by side) run against a private tree instead of `/`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct System {
    root: PathBuf,
    /// Only an agent running on the real `/` changes kernel state (hostname, links).
    live: bool,
}

impl System {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let live = root == Path::new("/");
        System { root, live }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Maps an absolute node path (`/etc/hostname`) into this system's root.
    pub fn path(&self, node_path: &str) -> PathBuf {
        self.root.join(node_path.trim_start_matches('/'))
    }

    /// The kernel command line of a live node (where `cloudy.seed=` may name a seed); empty
    /// for a private root, whose seed is only what lies under it.
    pub fn cmdline(&self) -> String {
        if self.live {
            fs::read_to_string("/proc/cmdline").unwrap_or_default()
        } else {
            String::new()
        }
    }

    /// The seed this node boots with (see `cloudy_model::seed::load`).
    pub fn load_seed(&self) -> cloudy_model::seed::Loaded {
        cloudy_model::seed::load(&self.root, &self.cmdline())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("/var/lib/cloudy")
    }

    /// Writes a file so that a crash leaves either the old or the new content, never a mix.
    pub fn write_atomic(&self, node_path: &str, contents: &[u8], mode: u32) -> std::io::Result<()> {
        write_atomic(&self.path(node_path), contents, mode)
    }
}

pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        sys.write_atomic("/var/lib/cloudy/x", b"one", 0o600)
            .unwrap();
        sys.write_atomic("/var/lib/cloudy/x", b"two", 0o600)
            .unwrap();
        let p = sys.path("/var/lib/cloudy/x");
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        assert!(!sys.is_live());
    }
}
