# mmdebstrap hooks that build the initramfs once, at the end of the bootstrap. Otherwise the
# kernel's postinst builds it and the initramfs-tools trigger builds it again once the other
# packages' hooks are in, and under qemu-user each build takes most of a minute. Until then
# update-initramfs is diverted to a no-op; the host's dpkg-divert edits the chroot's dpkg
# database without emulation.
#
#   $1 ROOT          the chroot (mmdebstrap's "$1")
#   $2 defer|build   defer: an essential hook, before the kernel is installed
#                    build: a customize hook, once every package is in
set -e
root=$1 step=$2
tool=/usr/sbin/update-initramfs
case $step in
defer)
  dpkg-divert --root="$root" --quiet --local --rename --divert "$tool.cloudy-deferred" --add "$tool"
  printf '#!/bin/sh\n# cloudy-image: deferred to the end of the bootstrap\nexit 0\n' >"$root$tool"
  chmod 755 "$root$tool"
  ;;
build)
  rm -f "$root$tool"
  dpkg-divert --root="$root" --quiet --local --rename --remove "$tool"
  chroot "$root" update-initramfs -c -k all
  ;;
*)
  echo "initramfs.sh: defer or build, not '$step'" >&2
  exit 2
  ;;
esac
