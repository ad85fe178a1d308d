#!/usr/bin/env bash
# Update numbers (issue 16, done-when 5), measured in this run with throwaway keys:
# - per board: `cloudy-image bundle` time and the bundle's size, against the same slot as a
#   zstd tar (what a tar-image bundle would carry instead of the ext4 image);
# - with UPDATE_E2E=1 (long, ~1 h under TCG): tests/update.rs's own figures: `rauc install`
#   into a slot on a TCG guest, and reboot-to-ready on the new slot.
# Prints one table. Builds into BENCH_DIR with the shared cache (the bootstrap is reused).
#
#   bench/update.sh                          # pc-686-pae
#   BOARDS="pc-686-pae pc-amd64" UPDATE_E2E=1 bench/update.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BOARDS=${BOARDS:-"pc-686-pae"}
BENCH_DIR=${BENCH_DIR:-/var/tmp/cloudy-bench-update}
BIN=${CLOUDY_IMAGE_BIN:-target/release/cloudy-image}
[ "$(id -u)" = 0 ] || { echo "bench/update.sh: run as root" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench/update.sh: $BIN missing: make tool" >&2; exit 1; }
for t in rauc debugfs mksquashfs zstd; do
  command -v "$t" >/dev/null || { echo "bench/update.sh: $t missing: ci/deps.sh test" >&2; exit 1; }
done
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
log=$BENCH_DIR/bench.log
keys=$BENCH_DIR/keys
"$BIN" keys new --out "$keys" --name bench >/dev/null 2>>"$log"
"$BIN" keys new --out "$keys" --rauc 2>>"$log"
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
mib() { python3 -c "print(f'{$1 / 1048576:.0f} MiB')"; }
rows=$BENCH_DIR/rows.tsv
: >"$rows"
for b in $BOARDS; do
  out=$BENCH_DIR/out
  echo "bench: $b bundle..." >&2
  t0=$(now)
  "$BIN" bundle --board "$b" --out "$out" --release-version 9.9.9 \
    --rauc-key "$keys/rauc.key.pem" --rauc-cert "$keys/rauc.cert.pem" --key "$keys/bench.key" >>"$log" 2>&1
  took=$(secs "$t0" "$(now)")
  bundle=$out/update/cloudy-$b-9.9.9.raucb
  size=$(stat -c %s "$bundle")
  echo "bench: $b the same slot as a tar..." >&2
  x=$BENCH_DIR/extract-$b
  rauc --keyring="$keys/rauc.cert.pem" extract "$bundle" "$x" >>"$log" 2>&1
  mkdir -p "$x/tree"
  debugfs -R "rdump / $x/tree" "$x/rootfs.ext4" >>"$log" 2>&1
  tar --numeric-owner -C "$x/tree" -cf - . | zstd -q -15 -T0 >"$x/rootfs.tar.zst"
  ext4=$(stat -c %s "$x/rootfs.ext4")
  tar=$(stat -c %s "$x/rootfs.tar.zst")
  printf '%s\t%s\t%s\t%s\t%s\n' "$b" "$(mib "$size")" "$took s" "$(mib "$ext4") ext4 image" "$(mib "$tar") tar.zst" >>"$rows"
  rm -rf "$x"
done
e2e="not run (UPDATE_E2E=1)"
if [ "${UPDATE_E2E:-0}" = 1 ]; then
  echo "bench: tests/update.rs (long)..." >&2
  CLOUDY_IMAGE_BIN=$PWD/$BIN cargo test -p cloudy-tests --release --features e2e --test update -- --include-ignored --nocapture >"$BENCH_DIR/e2e.log" 2>&1
  e2e=$(grep -o 'figures: .*' "$BENCH_DIR/e2e.log" | tail -n1)
fi
echo
printf 'board\tbundle\tbundle time\tslot image\tsame slot as tar\n'
cat "$rows"
echo
echo "install into a slot and reboot to ready (pc-686-pae, TCG): $e2e"
