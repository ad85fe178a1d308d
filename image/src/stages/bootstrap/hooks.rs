//! mmdebstrap hooks: the shell scripts beside this file, run with their arguments quoted.

/// Builds the initramfs once, at the end (see the script).
pub(crate) const INITRAMFS_HOOK: &str = include_str!("initramfs.sh");
/// Installs one `[[pip]]` entry into its venv (see the script).
pub(crate) const PIP_VENV_HOOK: &str = include_str!("pip-venv.sh");
/// Keeps what a node never runs out of the image, and checks ffmpeg still works (see the
/// script).
pub(crate) const TRIM_HOOK: &str = include_str!("trim.sh");
/// Checks and lists a venv's closure, run by the venv hook (see the script).
pub(crate) const PIP_CLOSURE: &str = include_str!("pip-closure.py");

/// An mmdebstrap `--<kind>-hook` running `script` with `sh -c`: its first argument is the
/// chroot (the hook's "$1"), then `args`.
pub(crate) fn hook(kind: &str, script: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
    format!(
        "--{kind}-hook=sh -c {} cloudy-hook \"$1\" {}",
        sh_quote(script),
        args.join(" ")
    )
}

/// `s` as one shell word.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// Runs trim.sh the way mmdebstrap runs a hook: `sh -c HOOK exec ROOT`.
    fn trim(root: &Path, args: &[&str]) -> std::process::Output {
        let h = hook("customize", TRIM_HOOK, args);
        let body = h.strip_prefix("--customize-hook=").unwrap();
        Command::new("sh")
            .args(["-c", body, "exec"])
            .arg(root)
            .output()
            .unwrap()
    }

    #[test]
    fn trim_setup_keeps_gpu_drivers_and_llvm_unwritten_only_while_building() {
        let d = tempfile::tempdir().unwrap();
        let o = trim(d.path(), &["setup"]);
        assert!(o.status.success(), "{o:?}");
        let cfg =
            std::fs::read_to_string(d.path().join("etc/dpkg/dpkg.cfg.d/cloudy-trim")).unwrap();
        for rule in [
            "path-exclude=/usr/lib/*/dri/*",
            "path-exclude=/usr/lib/*/libLLVM-*",
            "path-exclude=/usr/lib/*/libz3.so*",
            "force-unsafe-io",
        ] {
            assert!(cfg.lines().any(|l| l == rule), "{rule} in {cfg}");
        }
        // No ffmpeg in this root: finish only removes the rule, so apt on the node writes
        // every file again.
        let o = trim(d.path(), &["finish"]);
        assert!(o.status.success(), "{o:?}");
        assert!(!d.path().join("etc/dpkg/dpkg.cfg.d/cloudy-trim").exists());
        let note = std::fs::read_to_string(d.path().join("usr/share/cloudy/trimmed.txt")).unwrap();
        assert!(note.contains("apt-get install --reinstall libgl1-mesa-dri libllvm15"));
    }

    #[test]
    fn trim_finish_drops_pip_and_pyutils_stray_build_tree_only() {
        let d = tempfile::tempdir().unwrap();
        let venv = "/opt/cloudy/tahoe-lafs";
        let site = d
            .path()
            .join("opt/cloudy/tahoe-lafs/lib/python3.11/site-packages");
        for dir in [
            "pip/_internal",
            "pip-23.0.1.dist-info",
            "build/lib/pyutil",
            "pyutil-3.4.1.dist-info",
            "allmydata",
            "setuptools",
        ] {
            std::fs::create_dir_all(site.join(dir)).unwrap();
        }
        std::fs::write(
            site.join("pyutil-3.4.1.dist-info/RECORD"),
            "build/lib/pyutil/__init__.py,,\npyutil/__init__.py,,\n",
        )
        .unwrap();
        let bin = d.path().join("opt/cloudy/tahoe-lafs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        for f in ["pip", "pip3", "pip3.11", "python", "tahoe"] {
            std::fs::write(bin.join(f), "").unwrap();
        }
        let o = trim(d.path(), &["finish", venv]);
        assert!(o.status.success(), "{o:?}");
        for gone in ["pip", "pip-23.0.1.dist-info", "build"] {
            assert!(!site.join(gone).exists(), "{gone} left");
        }
        for kept in ["allmydata", "setuptools", "pyutil-3.4.1.dist-info"] {
            assert!(site.join(kept).exists(), "{kept} removed");
        }
        for f in ["pip", "pip3", "pip3.11"] {
            assert!(!bin.join(f).exists(), "bin/{f} left");
        }
        assert!(bin.join("tahoe").exists() && bin.join("python").exists());

        // A build/ tree that pyutil's RECORD does not name is someone else's: kept.
        std::fs::create_dir_all(site.join("build/lib/other")).unwrap();
        std::fs::write(
            site.join("pyutil-3.4.1.dist-info/RECORD"),
            "pyutil/__init__.py,,\n",
        )
        .unwrap();
        let o = trim(d.path(), &["finish", venv]);
        assert!(o.status.success(), "{o:?}");
        assert!(site.join("build/lib/other").exists());
    }

    /// The venv hook waits for a wheel the host is still building, and stops the bootstrap
    /// with the builder's reason when the build failed (nothing is installed).
    #[test]
    fn venv_hook_waits_for_the_host_built_wheel_and_stops_on_its_failure() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let wheels = d.path().join("wheels");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::create_dir_all(&wheels).unwrap();
        let marker = d.path().join("k.1.wheel0.tmp");
        let h = hook(
            "customize",
            PIP_VENV_HOOK,
            &[
                wheels.to_str().unwrap(),
                "/nonexistent/req.txt",
                "/opt/venv",
                "no",
                "0",
                "/nonexistent/list",
                "",
                marker.to_str().unwrap(),
            ],
        );
        let body = h.strip_prefix("--customize-hook=").unwrap();
        let mut child = Command::new("sh")
            .args(["-c", body, "exec"])
            .arg(&root)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the hook ended before the wheel was there"
        );
        std::fs::write(
            d.path().join("k.1.wheel0.failed"),
            "cannot build the pycddl wheel: linker missing",
        )
        .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("linker missing"), "{err}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("waiting for a wheel"),
            "{o:?}"
        );
        assert!(!root.join("opt/venv").exists());
    }
}
