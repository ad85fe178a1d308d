#!/usr/bin/env bash
# Discovery benchmark (part of `make bench`): release cloudy-agent nodes in network namespaces
# with real tincd, avahi-daemon and serf. N-1 nodes run with a service each; then a new node
# starts, and the time until its service shows in every peer's `cloudy-agent services` is
# measured, for the LAN (avahi + mDNS, serf off) and for Serf (multicast blocked at the bridge).
# Needs root, tinc, avahi-daemon and serf.
#   CLOUDY_BENCH_SIZES=10,50 CLOUDY_BENCH_PATHS=lan,serf bench/discovery.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p cloudy-agent
CLOUDY_AGENT_BIN="$PWD/target/release/cloudy-agent" \
  cargo test -q -p cloudy-agent --test discovery -- --ignored --exact bench_discovery --nocapture 2>&1 \
  | grep -A1 -E '^(\||agent:|targets:|bench:|SKIP|thread|test result)' | grep -v '^--$' || true
