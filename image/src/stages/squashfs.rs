//! squashfs images of a root tree: the cached base layer and the small Cloudy layer on top.

use std::path::Path;
use std::process::Command;

use crate::cache;
use crate::cmd::{self, CmdError, Log};
use crate::progress::Step;
use crate::recipe::Squashfs;

/// Makes `out` from `src`, written under a temporary name first. Every timestamp is the build
/// epoch so the same tree always gives the same bytes.
pub fn make(
    src: &Path,
    out: &Path,
    opts: &Squashfs,
    epoch: u64,
    excludes: &[&str],
    log: &Log,
    step: &Step,
) -> Result<(), CmdError> {
    let tmp = cache::tmp_path(out);
    let _ = cache::remove_any(&tmp);
    let mut c = Command::new("mksquashfs");
    c.arg(src)
        .arg(&tmp)
        .args([
            "-noappend",
            "-no-progress",
            "-comp",
            opts.compression.name(),
        ])
        .args([
            "-mkfs-time",
            &epoch.to_string(),
            "-all-time",
            &epoch.to_string(),
        ])
        // mksquashfs refuses SOURCE_DATE_EPOCH together with the explicit times above.
        .env_remove("SOURCE_DATE_EPOCH");
    if let Some(level) = opts.level {
        c.args(["-Xcompression-level", &level.to_string()]);
    }
    if !excludes.is_empty() {
        c.arg("-wildcards").arg("-e").args(excludes);
    }
    cmd::run(&mut c, log, step)?;
    cache::publish(&tmp, out).map_err(|e| CmdError::Failed {
        command: format!("rename {}", tmp.display()),
        status: e.to_string(),
        tail: String::new(),
    })
}
