#!/usr/bin/env bash
# Installs the Debian host packages cloudy-image and the tests need (`make deps`).
# Idempotent: a second run only checks. QEMU comes from bookworm-backports because the
# machine's qemu-utils is from there and bookworm's qemu-system would conflict with it.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "deps.sh: run as root (it installs Debian packages)" >&2; exit 1; }

pkgs=(
  mmdebstrap arch-test debian-archive-keyring squashfs-tools xorriso isolinux syslinux-common
  grub-efi-amd64-bin grub-efi-ia32-bin grub-common mtools dosfstools e2fsprogs
  xz-utils zstd cpio ovmf live-build
  rustc-web cargo-web gcc-i686-linux-gnu gcc-arm-linux-gnueabihf gcc-aarch64-linux-gnu
  libc6-dev-i386-cross
)
backports=(qemu-system-x86 qemu-system-arm qemu-user-static)

missing=()
for p in "${pkgs[@]}" "${backports[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
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
echo "deps: done"
