#!/usr/bin/env bash
# Installs the Debian host packages cloudy-image and the tests need (`make deps`).
# Idempotent: a second run only checks. QEMU comes from bookworm-backports because the
# machine's qemu-utils is from there and bookworm's qemu-system would conflict with it.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "deps.sh: run as root (it installs Debian packages)" >&2; exit 1; }

# Host compiler and the agent's target std (image/rust-std.sha256) must be the same version.
RUSTC_WEB_VERSION=1.96.0+dfsg1-1~deb12u2

pkgs=(
  mmdebstrap arch-test debian-archive-keyring squashfs-tools xorriso isolinux syslinux-common
  grub-efi-amd64-bin grub-efi-ia32-bin grub-common mtools dosfstools e2fsprogs
  xz-utils zstd cpio ovmf live-build curl coreutils fdisk bmap-tools pxelinux ipxe-qemu
  tinc iproute2 iputils-ping procps
  avahi-daemon avahi-utils dbus serf python3-zeroconf
  syncthing ffmpeg python3-venv python3-pip chromium chromium-driver
  rustc-web=$RUSTC_WEB_VERSION cargo-web=$RUSTC_WEB_VERSION libstd-rust-web-dev=$RUSTC_WEB_VERSION
  gcc-i686-linux-gnu gcc-arm-linux-gnueabihf gcc-aarch64-linux-gnu
  libc6-dev-i386-cross libc6-dev-armhf-cross libc6-dev-arm64-cross
)
backports=(qemu-system-x86 qemu-system-arm qemu-user-static)

missing=()
for p in "${pkgs[@]}" "${backports[@]}"; do
  name=${p%%=*}
  want=${p#*=}
  [ "$want" = "$p" ] && want=
  have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
  case "$have" in
    "install ok installed $want"*) [ -z "$want" ] || [ "$have" = "install ok installed $want" ] || missing+=("$p") ;;
    *) missing+=("$p") ;;
  esac
done
# Tahoe-LAFS is not in Debian: the tests run the same PyPI release the images carry.
TAHOE_VERSION=1.20.0
TAHOE_VENV=/opt/cloudy/tahoe-lafs
# Debian's python, not whatever `python3` is first on root's PATH (a pyenv under /root): the
# agent runs tahoe as the unprivileged cloudy-tahoe user, who must be able to run the venv's
# interpreter.
tahoe_ok() {
  [ "$(readlink -f "$TAHOE_VENV/bin/python3")" = "$(readlink -f /usr/bin/python3)" ] &&
    "$TAHOE_VENV/bin/tahoe" --version 2>/dev/null | grep -qx "tahoe-lafs/$TAHOE_VERSION"
}
install_tahoe() {
  tahoe_ok && return 0
  echo "deps: installing tahoe-lafs $TAHOE_VERSION into $TAHOE_VENV (PyPI)"
  # a venv records its own path, so it is built in place; an interrupted one fails tahoe_ok
  # and is made again from scratch
  rm -rf "$TAHOE_VENV"
  /usr/bin/python3 -m venv "$TAHOE_VENV"
  "$TAHOE_VENV/bin/pip" install -q --disable-pip-version-check "tahoe-lafs==$TAHOE_VERSION"
  tahoe_ok || { echo "deps: tahoe-lafs did not install" >&2; exit 1; }
}

if [ ${#missing[@]} -eq 0 ]; then
  install_tahoe
  echo "deps: all host packages present"
  exit 0
fi
echo "deps: installing ${missing[*]}"

src=/etc/apt/sources.list.d/cloudy-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat >"$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q -o Acquire::Retries=3 || echo "deps: apt-get update reported errors (continuing; see above)" >&2
apt-get install -y -q --no-install-recommends "${pkgs[@]}"
apt-get install -y -q --no-install-recommends -t bookworm-backports "${backports[@]}"
install_tahoe
echo "deps: done"
