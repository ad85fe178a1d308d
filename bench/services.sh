#!/usr/bin/env bash
# Services benchmark (part of `make bench`): four release cloudy-agent nodes in network
# namespaces (real tincd and serf), n1 a Tahoe-LAFS introducer and Syncthing, n2 and n3 Tahoe
# storage nodes, n4 watching. Prints the time from agent start (seed applied) to each service
# published in n4's catalog, Tahoe put/get throughput in the 3-node grid (CLOUDY_BENCH_TAHOE_MIB,
# default 8) and the memory (RSS) of each service process. Needs root, tinc, serf, curl,
# Tahoe-LAFS (/opt/cloudy/tahoe-lafs) and syncthing (ci/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p cloudy-agent
CLOUDY_AGENT_BIN="$PWD/target/release/cloudy-agent" \
  cargo test -q -p cloudy-agent --test services -- --ignored --exact bench_services --nocapture 2>&1 \
  | grep -E '^(\||SKIP|thread|test result)' || true
