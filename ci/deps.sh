#!/usr/bin/env bash
# Installs the Debian host packages cloudy-image and the tests need.
#   ci/deps.sh build   what `make image` needs: build an image and boot-check it in QEMU
#   ci/deps.sh test    that, plus what the tests and benchmarks run on the host (`make deps`,
#                      `make test`): tinc, avahi, serf, Syncthing, ffmpeg, Chromium, live-build,
#                      bmap-tools, and Tahoe-LAFS from PyPI in /opt/cloudy/tahoe-lafs
# Idempotent: a second run only checks. QEMU comes from bookworm-backports because the
# machine's qemu-utils is from there and bookworm's qemu-system would conflict with it.
set -euo pipefail

set_name=${1:-test}
case "$set_name" in
  build | test) ;;
  *) echo "usage: ci/deps.sh [build|test]  (default: test)" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "deps.sh: run as root (it installs Debian packages)" >&2; exit 1; }

# Host compiler and the agent's target std (image/rust-std.sha256) must be the same version.
RUSTC_WEB_VERSION=1.96.0+dfsg1-1~deb12u2

# What `cloudy-image build` runs on the host (image/src/tools.rs checks them by board;
# image/tests/deps.rs checks this list against it):
# - the bootstrap: mmdebstrap, arch-test, the keyring, curl, python3-pip (`pip download` of the
#   image's wheels);
# - the layers and media: squashfs, xorriso, isolinux/syslinux, pxelinux, GRUB EFI, mtools,
#   dosfstools, e2fsprogs, fdisk, xz;
# - the agent's cross build: Debian's rustc with its target std, gcc and libc (amd64 boards,
#   and the linker cargo needs for cloudy-image itself), the cross gcc and libc; Rust's std
#   source (rust-web-src: Debian builds no armel std, so rpi1's is compiled from it);
# - the boot check: QEMU (below), OVMF for UEFI boards, ipxe-qemu (the NIC's option ROM, PXE),
#   qemu-img and the device tree tools (rpi1 on QEMU's raspi0: an SD overlay, a patched dtb);
# - update bundles (`cloudy-image bundle`): rauc (`rauc bundle`, `rauc info`).
build_pkgs=(
  mmdebstrap arch-test debian-archive-keyring curl coreutils python3-pip
  squashfs-tools xorriso isolinux syslinux-common pxelinux
  grub-efi-amd64-bin grub-efi-ia32-bin grub-common mtools dosfstools e2fsprogs fdisk xz-utils
  ovmf ipxe-qemu device-tree-compiler rauc
  rustc-web=$RUSTC_WEB_VERSION cargo-web=$RUSTC_WEB_VERSION libstd-rust-web-dev=$RUSTC_WEB_VERSION
  rust-web-src=$RUSTC_WEB_VERSION
  gcc libc6-dev gcc-i686-linux-gnu gcc-arm-linux-gnueabihf gcc-aarch64-linux-gnu
  gcc-arm-linux-gnueabi
  libc6-dev-i386-cross libc6-dev-armhf-cross libc6-dev-arm64-cross libc6-dev-armel-cross
)
# What only the tests and benchmarks run on the host: several nodes in network namespaces
# (tinc, iproute2, avahi, D-Bus, serf, the services), the dashboard's browser tests
# (Chromium), DHCP on the bridged LAN of two booted ISOs (dnsmasq), the SD round trip
# (bmaptool), bench/build.sh's comparison (live-build), and tools for looking inside images by
# hand (cpio, zstd).
test_pkgs=(
  tinc iproute2 iputils-ping procps
  avahi-daemon avahi-utils dbus serf python3-zeroconf
  syncthing ffmpeg python3-venv chromium chromium-driver
  live-build bmap-tools cpio zstd dnsmasq-base
)
pkgs=("${build_pkgs[@]}")
if [ "$set_name" = test ]; then pkgs+=("${test_pkgs[@]}"); fi
backports=(qemu-system-x86 qemu-system-arm qemu-user-static qemu-utils)

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
  if [ "$set_name" = test ]; then install_tahoe; fi
  echo "deps: all host packages of the $set_name set present"
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
if [ "$set_name" = test ]; then install_tahoe; fi
echo "deps: done ($set_name set)"
