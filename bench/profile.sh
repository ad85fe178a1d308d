#!/usr/bin/env bash
# The agent's cross-compile under several cargo profile settings, each cold (its own empty
# target directory; the registry is already downloaded), the way `cloudy-image build` runs it:
# Debian's rustc-web, the target's std in the build cache's sysroot, Debian's cross gcc.
# Prints wall time, CPU time and the stripped binary's size per variant. Not part of
# `make bench` (about 4-8 min per variant on 2 cores); it is how the `image` profile in
# Cargo.toml was chosen (README, "Why the image profile").
#
#   bench/profile.sh                                  # i686, the variants below
#   TARGET=aarch64-unknown-linux-gnu bench/profile.sh
#   VARIANTS="fat thin" bench/profile.sh
#
# A variant is a set of CARGO_PROFILE_RELEASE_* overrides on the release profile:
#   fat      lto = true, codegen-units = 1 (the release profile as it is)
#   thin     lto = "thin", codegen-units = 16
#   nolto    lto = false, codegen-units = 16 (rustc's crate-local ThinLTO only)
#   o1       opt-level = 1, lto = false, codegen-units = 16 (the least optimisation worth shipping)
#   image    the `image` profile of Cargo.toml, as the image build uses it
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${TARGET:-i686-unknown-linux-gnu}
VARIANTS=${VARIANTS:-image thin nolto fat}
CACHE=${CACHE:-/var/cache/cloudy-image}
DIR=${PROFILE_DIR:-/var/tmp/cloudy-profile}

case $TARGET in
  i686-unknown-linux-gnu) linker=i686-linux-gnu-gcc ;;
  aarch64-unknown-linux-gnu) linker=aarch64-linux-gnu-gcc ;;
  armv7-unknown-linux-gnueabihf) linker=arm-linux-gnueabihf-gcc ;;
  x86_64-unknown-linux-gnu) linker=x86_64-linux-gnu-gcc ;;
  *) echo "bench/profile.sh: unknown TARGET $TARGET" >&2; exit 2 ;;
esac
version=$(dpkg-query -W -f '${Version}' rustc-web)
flags="--remap-path-prefix=$PWD=/build/cloudy"
if [ "$TARGET" != x86_64-unknown-linux-gnu ]; then
  sysroot=$CACHE/rust-sysroot/$version/$TARGET
  [ -d "$sysroot/lib/rustlib/$TARGET" ] ||
    { echo "bench/profile.sh: no sysroot at $sysroot: build that board once first" >&2; exit 1; }
  flags="$flags --sysroot=$sysroot"
fi
env_triple=$(echo "$TARGET" | tr a-z- A-Z_)

rows=()
for v in $VARIANTS; do
  profile=release
  over=()
  case $v in
    fat) over=(CARGO_PROFILE_RELEASE_LTO=true CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1) ;;
    thin) over=(CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16) ;;
    nolto) over=(CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16) ;;
    o1) over=(CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16) ;;
    image) profile=image ;;
    *) echo "bench/profile.sh: unknown variant $v" >&2; exit 2 ;;
  esac
  td=$DIR/$v
  rm -rf "$td"
  mkdir -p "$td"
  echo "bench/profile.sh: $v (log $td/build.log)..." >&2
  t0=$(date +%s.%N)
  env -u RUSTUP_TOOLCHAIN -u RUSTFLAGS "${over[@]}" RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$td" \
    PATH="/usr/bin:$PATH" \
    "CARGO_TARGET_${env_triple}_LINKER=$linker" "CARGO_TARGET_${env_triple}_RUSTFLAGS=$flags" \
    /usr/bin/time -f '%U %S' -o "$td/cpu" \
    /usr/bin/cargo build --profile "$profile" --locked -p cloudy-agent --target "$TARGET" \
    >"$td/build.log" 2>&1 || { tail -20 "$td/build.log"; exit 1; }
  t1=$(date +%s.%N)
  bin=$td/$TARGET/$profile/cloudy-agent
  rows+=("$v $(python3 -c "print(f'{$t1 - $t0:.0f}')") $(awk '{printf "%.0f", $1 + $2}' "$td/cpu") $(stat -c %s "$bin")")
  rm -rf "$td/$TARGET/$profile/deps" "$td/$TARGET/$profile/build" "$td/$TARGET/$profile/incremental"
done
printf '\nbench/profile.sh: cloudy-agent for %s, cold, load average at the end: %s\n' \
  "$TARGET" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %10s %10s %12s\n' variant "wall (s)" "CPU (s)" "size (B)"
for r in "${rows[@]}"; do
  # shellcheck disable=SC2086
  printf '%-8s %10s %10s %12s\n' $r
done
