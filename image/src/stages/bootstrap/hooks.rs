//! mmdebstrap hooks: the shell scripts beside this file, run with their arguments quoted.

/// Builds the initramfs once, at the end (see the script).
pub(crate) const INITRAMFS_HOOK: &str = include_str!("initramfs.sh");
/// Installs one `[[pip]]` entry into its venv (see the script).
pub(crate) const PIP_VENV_HOOK: &str = include_str!("pip-venv.sh");
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
