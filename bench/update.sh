#!/usr/bin/env bash
# Update numbers (issue 16, done-when 5), one row per board, measured in this run:
# - bundle: `cloudy-image bundle` (throwaway keys, release 9.9.9): its seconds and bytes;
# - install on the host: `rauc install` of that bundle's content into a slot that is a loop
#   device, with Debian's rauc and its service on a private D-Bus (as agent/tests/update_rauc.rs
#   runs it). This host has no device-mapper, so RAUC cannot open a verity bundle here: the
#   bundle's own image and manifest are re-bundled in RAUC's plain format for this figure (the
#   same bytes written, the signature checked over the whole bundle instead of per block);
# - install in QEMU and reboot to ready (shutdown + the new slot's boot to ready): from the
#   end-to-end tests' `figures:` lines, one test per board, `<board>_updates_to_the_other_slot`
#   (release 1.0.0 installed, `rauc install` of 1.0.1, the reboot into slot B). Pi boards:
#   tests/slots_pi.rs (the card's slots, the firmware's choice of kernel; rpi2-4 under QEMU
#   virt, rpi1 on QEMU's raspi0); PC and PXE boards: tests/update.rs (an install to disk, GRUB's
#   slots). They run here, one after the other (about 20 min a board, 3 h for all nine), unless
#   their logs are given: SLOTS_PI_LOG="<slots_pi output> ...", UPDATE_LOG="<update output>
#   ..." (one or more logs; the last figures of a board win). PI_E2E=0 / UPDATE_E2E=0 leave a
#   kind out. The VPN tests' logs (UPDATE_LOG) add the fetch from a member over tinc.
# COMPARE_TAR=1 adds the slot as a zstd tar beside its ext4 image (what a tar bundle would carry).
# A step that hits its limit prints `timeout`. Prints one table.
#
#   bench/update.sh                                    # every board with slots (hours)
#   BOARDS=rpi3 SLOTS_PI_LOG=slots_pi.log bench/update.sh
#   PI_E2E=0 UPDATE_E2E=0 bench/update.sh              # bundles and host installs only
#   BUNDLE_DIR=out/update BUNDLE_CERT=keys/rauc.cert.pem bench/update.sh   # bundles made already
set -euo pipefail
cd "$(dirname "$0")/.."
BOARDS=${BOARDS:-"rpi1 rpi2 rpi3 rpi4 pc-i386 pc-686-pae pc-amd64 pxe-686-pae pxe-amd64"}
BENCH_DIR=${BENCH_DIR:-/var/tmp/cloudy-bench-update}
BIN=${CLOUDY_IMAGE_BIN:-target/release/cloudy-image}
BUNDLE_LIMIT=${BUNDLE_LIMIT:-5400}
INSTALL_LIMIT=${INSTALL_LIMIT:-1800}
[ "$(id -u)" = 0 ] || { echo "bench/update.sh: run as root" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench/update.sh: $BIN missing: make tool" >&2; exit 1; }
for t in rauc unsquashfs losetup dbus-daemon python3; do
  command -v "$t" >/dev/null || { echo "bench/update.sh: $t missing: ci/deps.sh test" >&2; exit 1; }
done
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
log=$BENCH_DIR/bench.log
keys=$BENCH_DIR/keys
"$BIN" keys new --out "$keys" --name bench >/dev/null 2>>"$log"
"$BIN" keys new --out "$keys" --rauc >>"$log" 2>&1
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
mib() { python3 -c "print(f'{$1 / 1048576:.1f} MiB')"; }

# Everything the host install starts, taken down on exit (also on failure or Ctrl-C).
loops=()
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
  umount -R "$BENCH_DIR/rig/mnt" 2>/dev/null || true
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  loops=()
}
trap cleanup EXIT

# `rauc install` of bundle $2 (compatible cloudy-$1, plain) into slot B of two loop devices of
# $3 bytes each; sets INSTALLED to the seconds, or `timeout`, or `failed`. Not in a $(...)
# subshell: the EXIT trap must see the loop devices and processes it started.
host_install() {
  local board=$1 bundle=$2 bytes=$3 rig=$BENCH_DIR/rig
  rm -rf "$rig"
  mkdir -p "$rig/mnt" "$rig/data" "$rig/boot"
  for s in A B; do
    truncate -s "$bytes" "$rig/slot$s.img"
    loops+=("$(losetup -f --show "$rig/slot$s.img")")
  done
  # The bootloader: RAUC's custom backend keeping its choice in files.
  cat >"$rig/boot.sh" <<EOF
#!/bin/sh
D=$rig/boot
case "\$1" in
  get-primary) cat \$D/primary 2>/dev/null || echo A ;;
  set-primary) echo "\$2" >\$D/primary ;;
  get-state) cat \$D/state.\$2 2>/dev/null || echo good ;;
  set-state) echo "\$3" >\$D/state.\$2 ;;
  get-current) echo A ;;
  *) exit 1 ;;
esac
EOF
  chmod 755 "$rig/boot.sh"
  cat >"$rig/system.conf" <<EOF
[system]
compatible=cloudy-$board
bootloader=custom
mountprefix=$rig/mnt
data-directory=$rig/data

[handlers]
bootloader-custom-backend=$rig/boot.sh

[keyring]
path=$keys/rauc.cert.pem

[slot.rootfs.0]
device=${loops[0]}
type=ext4
bootname=A

[slot.rootfs.1]
device=${loops[1]}
type=ext4
bootname=B
EOF
  cat >"$rig/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path=$rig/bus</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/></policy></busconfig>
EOF
  dbus-daemon --config-file="$rig/bus.conf" --nofork >>"$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ -S "$rig/bus" ] && break; sleep 0.05; done
  export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$rig/bus
  rauc --conf="$rig/system.conf" service --override-boot-slot=A >>"$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do
    rauc --conf="$rig/system.conf" status >/dev/null 2>&1 && break
    sleep 0.1
  done
  local t0 rc=0
  t0=$(now)
  timeout "$INSTALL_LIMIT" rauc --conf="$rig/system.conf" install "$bundle" >>"$log" 2>&1 || rc=$?
  local took
  took=$(secs "$t0" "$(now)")
  # The slot must hold the bundle's image: RAUC wrote it, not just said so.
  if [ "$rc" = 0 ] && ! cmp -s -n "$(stat -c %s "$BENCH_DIR/x/rootfs.ext4")" "$BENCH_DIR/x/rootfs.ext4" "${loops[1]}"; then
    rc=1
    echo "bench: slot B does not hold the bundle's image" >>"$log"
  fi
  cleanup
  unset DBUS_SYSTEM_BUS_ADDRESS
  rm -rf "$rig"
  case $rc in
    0) INSTALLED="$took s" ;;
    124) INSTALLED=timeout ;;
    *) INSTALLED="failed (see $log)" ;;
  esac
}

# The `figures: board $2;` line of end-to-end tests' output ($1: one or more log files, space
# separated; $2 may be "pc-amd64 over the VPN"): the value after `$3` up to the first character
# of the set `$4` (or the line's end). Logs from before the lines named their board say
# `figures: bundle ...`: the test that printed it is the next `test <board>_... ok` line. The
# last such line of the logs wins; nothing when no log has one.
figure() {
  # shellcheck disable=SC2086
  python3 - "$2" "$3" "$4" $1 <<'EOF'
import re, sys
board, start, ends, logs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
found = None
for log in logs:
    try:
        lines = open(log, errors="replace").read().splitlines()
    except OSError:
        continue
    for i, l in enumerate(lines):
        if "figures: " not in l:
            continue
        f = l.split("figures: ", 1)[1]
        m = re.match(r"board (.+?); (.*)", f)
        if m:
            who, f = m.group(1), m.group(2)
        else:
            who = None
            for later in lines[i + 1:]:
                t = re.match(r"test (\w+?)_updates_\w+ \.\.\. ok", later)
                if t:
                    who = t.group(1).replace("_", "-")
                    break
        if who == board and start in f:
            found = re.split("[" + re.escape(ends) + "]", f.split(start, 1)[1], maxsplit=1)[0].strip()
if found:
    print(found)
EOF
}

# The QEMU figures: the end-to-end test `<board>_updates_to_the_other_slot` of each board in
# BOARDS, one at a time (so that they do not share the two cores), run here unless a log is
# given: SLOTS_PI_LOG for the Pi boards (tests/slots_pi.rs), UPDATE_LOG for the others
# (tests/update.rs). PI_E2E=0 / UPDATE_E2E=0 skip them.
qemu_tests() { # $1: the test file, $2: its log; rpi* boards are slots_pi's, the others update's
  local filters=() b
  for b in $BOARDS; do
    case $1:$b in
      slots_pi:rpi* | update:pc-* | update:pxe-*) filters+=("${b//-/_}_updates_to_the_other_slot") ;;
    esac
  done
  [ "${#filters[@]}" -gt 0 ] || return 0
  echo "bench: tests/$1.rs ${filters[*]} (about 20 min a board under TCG)..." >&2
  timeout 21600 env CLOUDY_IMAGE_BIN="$PWD/$BIN" cargo test -p cloudy-tests --release --features e2e \
    --test "$1" -- --ignored --nocapture --test-threads=1 --skip falls_back "${filters[@]}" >"$2" 2>&1 ||
    echo "bench: tests/$1.rs failed or timed out (exit $?); see $2" >&2
}
pi_log=${SLOTS_PI_LOG:-}
if [ -z "$pi_log" ] && [ "${PI_E2E:-1}" = 1 ]; then
  pi_log=$BENCH_DIR/slots_pi.log
  qemu_tests slots_pi "$pi_log"
fi
pc_log=${UPDATE_LOG:-}
if [ -z "$pc_log" ] && [ "${UPDATE_E2E:-1}" = 1 ]; then
  pc_log=$BENCH_DIR/update.log
  qemu_tests update "$pc_log"
fi

rows=$BENCH_DIR/rows.tsv
: >"$rows"
for b in $BOARDS; do
  out=$BENCH_DIR/out
  bundle=""
  if [ -n "${BUNDLE_DIR:-}" ]; then
    bundle=$(ls "$BUNDLE_DIR"/cloudy-"$b"-*.raucb 2>/dev/null | tail -n1 || true)
  fi
  if [ -n "$bundle" ]; then
    took="made before"
    cert=${BUNDLE_CERT:?BUNDLE_CERT: the certificate the bundles in BUNDLE_DIR were signed with}
  else
    echo "bench: $b bundle..." >&2
    t0=$(now)
    rc=0
    timeout "$BUNDLE_LIMIT" "$BIN" bundle --board "$b" --out "$out" --release-version 9.9.9 \
      --rauc-key "$keys/rauc.key.pem" --rauc-cert "$keys/rauc.cert.pem" --key "$keys/bench.key" >>"$log" 2>&1 || rc=$?
    took="$(secs "$t0" "$(now)") s"
    cert=$keys/rauc.cert.pem
    case $rc in
      0) bundle=$out/update/cloudy-$b-9.9.9.raucb ;;
      124) printf '%s\ttimeout\t-\ttimeout\t-\t-\n' "$b" >>"$rows"; continue ;;
      *) printf '%s\tfailed (see %s)\t-\t%s\t-\t-\n' "$b" "$log" "$took" >>"$rows"; continue ;;
    esac
  fi
  size=$(stat -c %s "$bundle")
  rauc --keyring="$cert" info "$bundle" >>"$log" 2>&1 || { echo "bench: $bundle does not verify against $cert" >&2; exit 1; }
  echo "bench: $b install on the host..." >&2
  x=$BENCH_DIR/x
  rm -rf "$x"
  unsquashfs -q -n -d "$x" "$bundle" >>"$log" 2>&1
  ext4=$(stat -c %s "$x/rootfs.ext4")
  sed -i 's/^format=verity$/format=plain/' "$x/manifest.raucm"
  plain=$BENCH_DIR/plain.raucb
  rm -f "$plain"
  rauc bundle --cert="$keys/rauc.cert.pem" --key="$keys/rauc.key.pem" \
    --mksquashfs-args="-comp zstd -Xcompression-level 3" "$x" "$plain" >>"$log" 2>&1
  host_install "$b" "$plain" "$(( (ext4 / 1048576 + 64) * 1048576 ))"
  tar="-"
  if [ "${COMPARE_TAR:-0}" = 1 ]; then
    mkdir -p "$x/tree"
    debugfs -R "rdump / $x/tree" "$x/rootfs.ext4" >>"$log" 2>&1
    tar --numeric-owner -C "$x/tree" -cf - . | zstd -q -15 -T0 >"$x/rootfs.tar.zst"
    tar=$(mib "$(stat -c %s "$x/rootfs.tar.zst")")
  fi
  rm -rf "$x" "$plain"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$b" "$size" "$(mib "$size")" "$took" "$(mib "$ext4")" \
    "$INSTALLED" >>"$rows"
  [ "${COMPARE_TAR:-0}" = 1 ] && echo "bench: $b slot as zstd tar: $tar" >&2
done
echo
echo "update bundles and installs ($(date -u +%Y-%m-%d), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores)"
printf 'board\tbundle bytes\tbundle\tbundle time\tslot image\trauc install (host, loop device, plain copy)\trauc install (QEMU TCG)\treboot to ready (QEMU TCG)\tfetch from a member over tinc (QEMU TCG)\n'
# The QEMU columns last: the logs are read once every bundle is made (a test writing them
# beside this script has then had the most time to finish).
while IFS=$'\t' read -r b rest; do
  qemu="-"
  down="-"
  vpn="-"
  case $b in
    rpi*)
      qemu=$(figure "$pi_log" "$b" "rauc install into a slot" ";(")
      down=$(figure "$pi_log" "$b" "reboot to ready" ";")
      qemu=${qemu:-"not run (see ${pi_log:-PI_E2E=0})"}
      down=${down:-"not run"}
      ;;
    pc-*|pxe-*)
      qemu=$(figure "$pc_log" "$b" "rauc install into a slot" ";(")
      down=$(figure "$pc_log" "$b" "reboot to ready on slot B" ";")
      vpn=$(figure "$pc_log" "$b over the VPN" "fetched from the member in" ";")
      qemu=${qemu:-"not run (see ${pc_log:-UPDATE_E2E=0})"}
      down=${down:-"not run"}
      vpn=${vpn:-"not run"}
      ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$b" "$rest" "$qemu" "$down" "$vpn"
done <"$rows"
