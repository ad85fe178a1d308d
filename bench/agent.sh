#!/usr/bin/env bash
# The agent's benchmarks (part of `make bench`): builds the release cloudy-agent, runs one
# ignored bench test of cloudy-agent with it and prints that bench's table. Exits non-zero
# when the bench fails or skips itself (a missing tool: it then measured nothing).
#
#   bench/agent.sh NAME      NAME: mesh, discovery, probe, services, streaming or community
#
# mesh       nodes in network namespaces with real tincd: time from starting all agents at
#            once to every member list complete and the VPN carrying pings, and the agent's
#            RSS once meshed. Needs root and tinc.
#            CLOUDY_BENCH_SIZES=3,10,25 (default): the mesh sizes.
# discovery  N-1 nodes run with a service each; then a new node starts, and the time until its
#            service shows in every peer's `cloudy-agent services` is measured, over the LAN
#            (avahi + mDNS, serf off) and over Serf (multicast blocked at the bridge).
#            Needs root, tinc, avahi-daemon and serf.
#            CLOUDY_BENCH_SIZES=10,50 (default), CLOUDY_BENCH_PATHS=lan,serf (default).
# probe      a scan of 100 providers listening on loopback (the CLI's own scan, no agent), the
#            dashboard's p50/p99 latency under 50 concurrent keep-alive HTTPS clients (a release
#            agent in a network namespace), and the RSS of the agent and its dashboard.
#            Needs root, tinc and serf for the dashboard part.
# services   four nodes (real tincd and serf): n1 a Tahoe-LAFS introducer and Syncthing, n2 and
#            n3 Tahoe storage nodes, n4 watching. Time from agent start (seed applied) to each
#            service published in n4's catalog, Tahoe put/get throughput in the 3-node grid,
#            and the RSS of each service process. Needs root, tinc, serf, curl, Tahoe-LAFS
#            (/opt/cloudy/tahoe-lafs) and syncthing (ci/deps.sh).
#            CLOUDY_BENCH_TAHOE_MIB=8 (default): the size of the put/get.
# streaming  a source looping a test video through ffmpeg, peer A joining the source and peer B
#            joining A: stream start-up at the first and second hop (from `cloudy-agent join
#            streaming <provider>` to the first segment served by the joining node), and the
#            memory of the source's agent, its stream process and ffmpeg.
#            Needs root, tinc, serf and ffmpeg.
# community  the time to render the Community tab's map (SVG) for a generated 100-node
#            community (target <= 50 ms), its size, and the size of one node-info message.
#            No root needed.
#
# The full test output is kept in $BENCH_LOG (default target/bench-NAME.log).
set -euo pipefail

usage() {
  sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"
}

name=${1:-}
case $name in
  -h | --help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
  mesh | discovery | probe | services | streaming | community) ;;
  *) echo "bench/agent.sh: unknown bench '$name'" >&2; usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
# The lines of each bench's output that make its table (the rest is test-harness noise).
case $name in
  mesh) keep='^(\||agent:|targets:|SKIP|thread|test result)' ;;
  discovery) keep='^(\||agent:|targets:|bench:|SKIP|thread|test result)' ;;
  probe | services | community) keep='^(\||SKIP|thread|test result)' ;;
  streaming) keep='^(\||SKIP|thread|test result|  left|  right)' ;;
esac
# discovery's rows are followed by a line of detail each.
after=0
[ "$name" = discovery ] && after=1

log=${BENCH_LOG:-target/bench-$name.log}
mkdir -p "$(dirname "$log")"
cargo build --release -q -p cloudy-agent
status=0
CLOUDY_AGENT_BIN="$PWD/target/release/cloudy-agent" \
  cargo test -q -p cloudy-agent --test "$name" -- --ignored --exact "bench_$name" --nocapture \
  >"$log" 2>&1 || status=$?
awk -v keep="$keep" -v after="$after" '
  $0 ~ keep { print; left = after; next }
  left > 0 { print; left-- }
' "$log"
if [ "$status" -ne 0 ]; then
  echo "bench/agent.sh: bench_$name failed (exit $status); full output: $log" >&2
  exit "$status"
fi
if grep -q '^SKIP' "$log"; then
  echo "bench/agent.sh: bench_$name skipped itself (see SKIP above): nothing was measured" >&2
  exit 1
fi
