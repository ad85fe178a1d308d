#!/usr/bin/env bash
# Per-board build and boot numbers for SD card and PXE boards, measured in this run:
# cold build (empty image cache and a fresh checkout of HEAD, so the agent compiles from
# scratch too; uncommitted changes are not measured), warm rebuild, image size, xz throughput, boot to ready
# under emulation, PXE install time. Prints one table.
#
#   bench/boards.sh                      # rpi3 and pxe-686-pae
#   BOARDS="rpi2 rpi3 rpi4 pxe-686-pae pxe-amd64" bench/boards.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BOARDS=${BOARDS:-"rpi3 pxe-686-pae"}
BENCH_DIR=${BENCH_DIR:-/var/tmp/cloudy-bench-boards}
BIN=${CLOUDY_IMAGE_BIN:-target/release/cloudy-image}
[ "$(id -u)" = 0 ] || { echo "bench/boards.sh: run as root" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench/boards.sh: $BIN missing: make tool" >&2; exit 1; }
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
src=$BENCH_DIR/src
git worktree prune
git worktree add -q --detach "$src" HEAD
trap 'git worktree remove --force "$src" 2>/dev/null || true' EXIT
echo "bench: measuring $(git rev-parse --short HEAD) from $src" >&2
src_args=(--source "$src")
log=$BENCH_DIR/bench.log
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
rows=$BENCH_DIR/rows.tsv
: >"$rows"

for b in $BOARDS; do
  cache=$BENCH_DIR/cache-$b
  out=$BENCH_DIR/out
  echo "bench: $b cold build (empty cache) and verify..." >&2
  t0=$(now)
  "$BIN" build "${src_args[@]}" --recipe "$src/recipes/cloudy.toml" --board "$b" --cache "$cache" --out "$out" --no-verify >>"$log" 2>&1
  cold=$(secs "$t0" "$(now)")
  echo "bench: $b warm rebuild..." >&2
  t0=$(now)
  "$BIN" build "${src_args[@]}" --recipe "$src/recipes/cloudy.toml" --board "$b" --cache "$cache" --out "$out" --no-verify >>"$log" 2>&1
  warm=$(secs "$t0" "$(now)")
  # `verify` logs "verify: ready after N s" in the board's build.log (no verify.json: that one
  # is the build's own verify stage, skipped above).
  # A verify that ran out of time says `timeout`, one that failed otherwise `failed`: never a
  # number, so no time is read off a boot that did not reach ready.
  ready=failed
  vlog=$BENCH_DIR/verify-$b.log
  if "$BIN" verify "${src_args[@]}" --board "$b" --out "$out" >"$vlog" 2>&1; then
    ready=$(grep -o 'verify: ready after [0-9.]* s' "$out/$b/build.log" | tail -1 | awk '{print $4}')
  elif grep -q 'no ready line from the node within' "$vlog"; then
    ready=timeout
  fi
  cat "$vlog" >>"$log"
  install=-
  if [[ $b == pxe-* ]]; then
    echo "bench: $b install to a blank disk..." >&2
    t0=$(now)
    if "$BIN" verify "${src_args[@]}" --board "$b" --out "$out" --install >>"$log" 2>&1; then
      install=$(secs "$t0" "$(now)")
    else
      install=failed
    fi
  fi
  python3 - "$out/$b" "$b" "$cold" "$warm" "$install" "${ready:-failed}" >>"$rows" <<'PY'
import json, os, re, sys
d, b, cold, warm, install, ready = sys.argv[1:]
m = json.load(open(os.path.join(d, "manifest.json")))
size = next((o["size"] for o in m["outputs"] if o["file"].endswith((".img.xz", ".iso"))), None)
if size is None:
    size = sum(o["size"] for o in m["outputs"])
xz = next((s["note"] for s in m["stages"] if s["stage"] == "compress"), "")
mbps = re.search(r"\((\d+) MB/s\)", xz)
print("\t".join([b, cold, warm, f"{size/1e6:.0f} MB", mbps.group(1) + " MB/s" if mbps else "-", ready, install]))
PY
done

python3 - "$rows" <<'PY'
import sys
hdr = ["board", "cold build (s)", "warm rebuild (s)", "image", "xz", "boot to ready (s)", "PXE install (s)"]
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
w = [max(len(r[i]) for r in rows + [hdr]) for i in range(len(hdr))]
print("\nbench: SD and PXE boards (QEMU TCG, 2 cores). Targets: ARM cold <= 360 s, warm <= 60 s,")
print("       .img.xz <= 200 MB, PXE live boot to ready <= 45 s")
print("  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
print("  ".join("-" * x for x in w))
for r in rows:
    print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
PY
