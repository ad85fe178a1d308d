#!/usr/bin/env bash
# Streaming benchmark (part of `make bench`): release cloudy-agent nodes in network namespaces
# (real tincd and serf), a source looping a test video through ffmpeg, peer A joining the
# source and peer B joining A. Prints stream start-up at the first and second hop (from
# `cloudy-agent join streaming <provider>` to the first segment served by the joining node) and
# the memory of the source's agent, its stream process and ffmpeg. Needs root, tinc, serf, ffmpeg.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p cloudy-agent
CLOUDY_AGENT_BIN="$PWD/target/release/cloudy-agent" \
  cargo test -q -p cloudy-agent --test streaming -- --ignored --exact bench_streaming --nocapture 2>&1 \
  | grep -E '^(\||SKIP|thread|test result|  left|  right)' || true
