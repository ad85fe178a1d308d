#!/usr/bin/env bash
# Mesh benchmark (part of `make bench`): release cloudy-agent nodes in network namespaces with
# real tincd; time from starting all agents at once to every member list complete and the VPN
# carrying pings, for 3, 10 and 25 nodes, and the agent's RSS once meshed. Needs root and tinc.
#   CLOUDY_BENCH_SIZES=3,10,25 bench/mesh.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p cloudy-agent
CLOUDY_AGENT_BIN="$PWD/target/release/cloudy-agent" \
  cargo test -q -p cloudy-agent --test mesh -- --ignored --exact bench_mesh --nocapture 2>&1 \
  | grep -E '^(\||agent:|targets:|SKIP|thread|test result)' || true
