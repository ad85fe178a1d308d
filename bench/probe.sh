#!/usr/bin/env bash
# Probe and dashboard benchmark (part of `make bench`): a scan of 100 providers listening on
# loopback (the CLI's own scan, no agent), the dashboard's p50/p99 latency under 50 concurrent
# keep-alive clients (a release agent in a network namespace), and the RSS of the agent and its
# dashboard. Needs root, tinc and serf for the dashboard part.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p cloudy-agent
CLOUDY_AGENT_BIN="$PWD/target/release/cloudy-agent" \
  cargo test -q -p cloudy-agent --test probe -- --ignored --exact bench_probe --nocapture 2>&1 \
  | grep -E '^(\||SKIP|thread|test result)' || true
