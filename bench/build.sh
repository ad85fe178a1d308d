#!/usr/bin/env bash
# Image build and boot numbers, all measured in this run, against Debian's live-build doing
# the same job (same suite, arch, kernel flavour and package list). Prints one table.
#
#   bench/build.sh            # pc-686-pae
#   BOARD=pc-amd64 bench/build.sh
#
# Everything goes under $BENCH_DIR (default /var/tmp/cloudy-bench), removed at the start.
set -euo pipefail
cd "$(dirname "$0")/.."
BOARD=${BOARD:-pc-686-pae}
BENCH_DIR=${BENCH_DIR:-/var/tmp/cloudy-bench}
BIN=${CLOUDY_IMAGE_BIN:-target/release/cloudy-image}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-400}

[ "$(id -u)" = 0 ] || { echo "bench/build.sh: run as root" >&2; exit 1; }
command -v lb >/dev/null || { echo "bench/build.sh: live-build missing: make deps" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench/build.sh: $BIN missing: make tool" >&2; exit 1; }

board_toml=hardware/$BOARD.toml
key() { sed -n "s/^$1 = \"\\(.*\\)\"/\\1/p" "$board_toml" | head -1; }
arch=$(key arch)
flavour=$(key kernel_flavour)
qemu=$(sed -n 's/^system = "\(.*\)"/\1/p' "$board_toml")
cpu=$(sed -n 's/^cpu = "\(.*\)"/\1/p' "$board_toml")
# The same package list for live-build: the recipe's packages and its ISO-only ones.
packages=$(python3 -c 'import tomllib; r = tomllib.load(open("recipes/cloudy.toml","rb")); print(" ".join(r["packages"] + r.get("packages_by_format", {}).get("iso", [])))')

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
log=$BENCH_DIR/bench.log
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }

# Boots an ISO's kernel and initrd (passed to QEMU, same settings for both builders) and prints
# the seconds until the console shows $3, or `timeout` after $BOOT_TIMEOUT s (or `exited` when
# QEMU ends first). The console is captured to a file and matched as it grows
# (bench/console-until.sh), so a login prompt, which ends without a newline, counts when it is
# printed. QEMU is stopped by its pid.
boot_until() {
  local iso=$1 name=$2 pattern=$3 append=$4
  local d=$BENCH_DIR/boot-$name
  mkdir -p "$d"
  local k i
  k=$(xorriso -indev "$iso" -find /live -name 'vmlinuz*' 2>/dev/null | tr -d "'" | sort | tail -1)
  i=$(xorriso -indev "$iso" -find /live -name 'initrd*' 2>/dev/null | tr -d "'" | sort | tail -1)
  xorriso -osirrox on -indev "$iso" -extract "$k" "$d/vmlinuz" -extract "$i" "$d/initrd" >/dev/null 2>&1
  local console=$d/console.log start pid t qemu_status=0
  : >"$console"
  start=$(now)
  # The outer timeout is a guard for a wedged guest; the wait below stops it sooner.
  timeout --kill-after=10 $((BOOT_TIMEOUT + 30)) "$qemu" -accel tcg -machine pc -cpu "$cpu" \
    -m 1024 -smp 2 -display none -no-reboot -nic user,model=virtio-net-pci,restrict=on \
    -cdrom "$iso" -kernel "$d/vmlinuz" -initrd "$d/initrd" -append "$append" \
    -serial "file:$console" -monitor none >"$d/qemu.log" 2>&1 &
  pid=$!
  # Its status only repeats what it prints (seconds, timeout or exited).
  t=$(bench/console-until.sh "$console" "$pattern" "$BOOT_TIMEOUT" "$pid" "$start") || :
  # timeout(1) passes the TERM on to QEMU.
  kill "$pid" 2>/dev/null || :
  wait "$pid" 2>/dev/null || qemu_status=$?
  echo "bench: $name: $t (QEMU exit $qemu_status; console: $console)" >&2
  echo "$t"
}

echo "bench: cloudy-image cold build of $BOARD (empty image cache)..." >&2
cache=$BENCH_DIR/cache
out=$BENCH_DIR/out
t0=$(now)
"$BIN" build --board "$BOARD" --cache "$cache" --out "$out" --no-verify >>"$log" 2>&1
cold=$(secs "$t0" "$(now)")
iso=$out/$BOARD/cloudy-$BOARD.iso
iso_size=$(stat -c %s "$iso")

echo "bench: warm rebuild after an overlay change..." >&2
mark=overlay/etc/cloudy/bench-marker
echo "bench $(date +%s)" >"$mark"
t0=$(now)
"$BIN" build --board "$BOARD" --cache "$cache" --out "$out" --no-verify >>"$log" 2>&1 || { rm -f "$mark"; exit 1; }
warm=$(secs "$t0" "$(now)")
rm -f "$mark"
"$BIN" build --board "$BOARD" --cache "$cache" --out "$out" --no-verify >>"$log" 2>&1

echo "bench: second build from the same cache (base squashfs remade)..." >&2
"$BIN" build --board "$BOARD" --cache "$cache" --out "$BENCH_DIR/out2" --no-verify --rebuild >>"$log" 2>&1
same=no
cmp -s "$iso" "$BENCH_DIR/out2/$BOARD/cloudy-$BOARD.iso" && same=yes

append="boot=live console=tty0 console=ttyS0,115200n8 quiet"
echo "bench: booting the cloudy ISO under TCG..." >&2
ready=$(boot_until "$iso" cloudy '"cloudy":"ready"' "$append")
cloudy_login=$(boot_until "$iso" cloudy-login 'login:' "$append")

echo "bench: live-build cold build of the same job (several minutes)..." >&2
lbdir=$BENCH_DIR/live-build
mkdir -p "$lbdir"
(
  cd "$lbdir"
  lb config --mode debian --distribution bookworm --architectures "$arch" --linux-flavours "$flavour" \
    --binary-images iso-hybrid --debian-installer none --archive-areas main \
    --mirror-bootstrap http://deb.debian.org/debian --mirror-chroot http://deb.debian.org/debian \
    --mirror-binary http://deb.debian.org/debian --security false --apt-recommends false \
    --firmware-chroot false --firmware-binary false --memtest none \
    --bootappend-live "boot=live components console=tty0 console=ttyS0,115200n8 quiet"
  # shellcheck disable=SC2086
  printf '%s\n' $packages > config/package-lists/cloudy.list.chroot
) >>"$log" 2>&1
t0=$(now)
# A failed live-build has no build time to compare: its column says so instead of a number.
if (cd "$lbdir" && lb build) >>"$log" 2>&1; then
  lb_time=$(secs "$t0" "$(now)")
else
  echo "bench: live-build failed: see $log" >&2
  lb_time=failed
fi
lb_iso=$(ls "$lbdir"/*.iso 2>/dev/null | head -1 || true)
if [ -n "$lb_iso" ]; then
  lb_size=$(stat -c %s "$lb_iso")
  echo "bench: booting the live-build ISO under TCG..." >&2
  lb_login=$(boot_until "$lb_iso" live-build 'login:' "boot=live components console=tty0 console=ttyS0,115200n8 quiet")
else
  lb_size=0; lb_login=timeout
fi

python3 - "$BOARD" "$cold" "$warm" "$iso_size" "$ready" "$cloudy_login" "$same" "$lb_time" "$lb_size" "$lb_login" <<'PY'
import sys
board, cold, warm, size, ready, login, same, lbt, lbs, lbl = sys.argv[1:]
def f(x):
    try: return float(x)
    except ValueError: return None
def ratio(a, b):
    a, b = f(a), f(b)
    return f"{a/b:.2f}x" if a is not None and b else "n/a"
mb = lambda b: f"{int(b)/1e6:.0f} MB"
rows = [
    ("cold build (s)", cold, lbt, ratio(cold, lbt), "<= 0.50x"),
    ("warm rebuild after overlay change (s)", warm, "-", "-", "<= 20 s"),
    ("ISO size", mb(size), mb(lbs) if int(lbs) else "n/a", ratio(size, lbs), "<= 0.80x"),
    ("boot to agent ready, TCG (s)", ready, "-", "-", ""),
    ("boot to login prompt, TCG (s)", login, lbl, ratio(login, lbl), ""),
    ("cloudy ready vs live-build login", ready, lbl, ratio(ready, lbl), "<= 0.40x"),
    ("same ISO sha256 on rebuild", same, "-", "-", "yes"),
]
print(f"\nbench: image build, board {board} (QEMU TCG, 2 cores)")
w = [max(len(str(r[i])) for r in rows + [("measure", "cloudy-image", "live-build", "ratio", "target")]) for i in range(5)]
hdr = ("measure", "cloudy-image", "live-build", "ratio", "target")
print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(hdr)))
print("  ".join("-" * w[i] for i in range(5)))
for r in rows:
    print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))
PY
