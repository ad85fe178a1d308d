#!/usr/bin/env bash
# `make image` as on a fresh Debian 12 machine: a new bookworm chroot (mmdebstrap's
# `important` variant, plus make, git and ca-certificates), this checkout cloned into it, then
# `make image` inside, timed. Prints the time of each phase and the disk each part takes, and
# which test-only packages are (not) there. Not part of `make bench`: it downloads ~2 GB and
# takes half an hour on 2 cores.
#
#   bench/fresh.sh               # under /var/tmp/cloudy-fresh (removed at the start and end)
#   KEEP=1 bench/fresh.sh        # keep the chroot to look around
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${FRESH_DIR:-/var/tmp/cloudy-fresh}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" = 0 ] || { echo "bench/fresh.sh: run as root" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { echo "bench/fresh.sh: mmdebstrap missing: apt-get install mmdebstrap" >&2; exit 1; }

unmount() { for m in dev/pts dev sys proc; do umount "$DIR/$m" 2>/dev/null || true; done; }
cleanup() { unmount; [ -n "${KEEP:-}" ] || rm -rf "$DIR"; }
trap cleanup EXIT
unmount
rm -rf "$DIR"
mb() { du -sxB1M "$1" | cut -f1; }

mmdebstrap --quiet --variant=important --include=make,git,ca-certificates bookworm "$DIR" \
  "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
  "deb ${MIRROR%/debian}/debian-security bookworm-security main"
# A machine behind a TLS-inspecting proxy trusts its CA; the chroot must too (crates.io, PyPI).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$DIR/usr/local/share/ca-certificates/"
  chroot "$DIR" update-ca-certificates >/dev/null
fi
git clone -q "$PWD" "$DIR/root/cloudy"
for m in proc sys dev dev/pts; do mount --bind "/$m" "$DIR/$m"; done
cp /etc/resolv.conf "$DIR/etc/resolv.conf"
base=$(mb "$DIR")

t0=$(date +%s)
chroot "$DIR" make -C /root/cloudy deps-build >"$DIR/root/deps.log" 2>&1 ||
  { tail -20 "$DIR/root/deps.log"; exit 1; }
t1=$(date +%s)
after_deps=$(mb "$DIR")
chroot "$DIR" bash -c 'cd /root/cloudy && time make image' >"$DIR/root/image.log" 2>&1 ||
  { tail -30 "$DIR/root/image.log"; exit 1; }
t2=$(date +%s)

printf '%-34s %s\n' "what" "measured"
printf '%-34s %s\n' "host packages (make deps-build)" "$((t1 - t0)) s, $((after_deps - base)) MiB ($(mb "$DIR/var/cache/apt") MiB of it apt's .debs)"
printf '%-34s %s\n' "build and boot check (make image)" "$((t2 - t1)) s wall; $(grep -E '^(user|sys)' "$DIR/root/image.log" | tr '\n\t' '  ')"
for p in var/cache/cloudy-image root/cloudy/target root/cloudy/out root/.cargo; do
  printf '%-34s %s MiB\n' "/$p" "$(mb "$DIR/$p")"
done
printf '%-34s %s MiB\n' "total over the fresh system" "$(($(mb "$DIR") - base))"
for p in chromium tinc avahi-daemon serf live-build syncthing ffmpeg; do
  if chroot "$DIR" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
    printf '%-34s %s\n' "test package $p" "INSTALLED (should not be)"
  fi
done
[ -e "$DIR/opt/cloudy" ] && printf '%-34s %s\n' "/opt/cloudy (Tahoe for tests)" "PRESENT (should not be)"
grep -E '^  ok ' "$DIR/root/image.log" || true
