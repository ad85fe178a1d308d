//! Foreign-architecture chroots run through qemu-user, which the kernel finds by binfmt_misc.
//! Nothing registers the handlers by itself where PID 1 is not systemd, so we do.

use std::path::Path;
use std::process::Command;

use crate::board::Arch;

#[derive(Debug, thiserror::Error)]
#[error("cannot run {arch} programs on this host: the binfmt_misc handler {handler} is not registered ({detail})\n  fix: apt-get install qemu-user-static (make deps), then as root: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; /lib/systemd/systemd-binfmt /usr/lib/binfmt.d/{handler}.conf")]
pub struct BinfmtError {
    pub arch: String,
    pub handler: String,
    pub detail: String,
}

const ROOT: &str = "/proc/sys/fs/binfmt_misc";

pub fn handler(arch: Arch) -> Option<&'static str> {
    match arch {
        Arch::Armhf | Arch::Armel => Some("qemu-arm"),
        Arch::Arm64 => Some("qemu-aarch64"),
        Arch::I386 | Arch::Amd64 => None,
    }
}

/// Makes sure `arch` binaries run; registers Debian's qemu-user-static handler if needed.
pub fn ensure(arch: Arch) -> Result<(), BinfmtError> {
    let Some(name) = handler(arch) else {
        return Ok(());
    };
    let entry = Path::new(ROOT).join(name);
    if entry.exists() {
        return Ok(());
    }
    let err = |detail: String| BinfmtError {
        arch: arch.debian().into(),
        handler: name.into(),
        detail,
    };
    if !Path::new(ROOT).join("register").exists() {
        let st = Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc", ROOT])
            .status()
            .map_err(|e| err(e.to_string()))?;
        if !st.success() {
            return Err(err("mounting binfmt_misc failed".into()));
        }
    }
    let conf = format!("/usr/lib/binfmt.d/{name}.conf");
    if !Path::new(&conf).exists() {
        return Err(err(format!("{conf} missing")));
    }
    let st = Command::new("/lib/systemd/systemd-binfmt")
        .arg(&conf)
        .status()
        .map_err(|e| err(e.to_string()))?;
    if !st.success() || !entry.exists() {
        return Err(err("systemd-binfmt did not register it".into()));
    }
    Ok(())
}
