#!/usr/bin/env bash
# Waits until a console capture FILE shows PATTERN (an extended regex) and prints the seconds
# since START, or prints `timeout` (exit 1) after TIMEOUT seconds, or `exited` (exit 2) when
# process PID ends first. The file is matched as it grows, not line by line: a login prompt
# ends without a newline and still counts the moment it is written.
#
#   bench/console-until.sh FILE PATTERN TIMEOUT [PID [START]]
#     START: a `date +%s.%N` time (default: now)
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0" >&2; exit 2; }
file=$1 pattern=$2 timeout=$3 pid=${4:-} start=${5:-$(date +%s.%N)}
start_ns=$((10#${start/./}))
deadline_ns=$((start_ns + timeout * 1000000000))
elapsed() {
  local tenths=$((($(date +%s%N) - start_ns) / 100000000))
  echo "$((tenths / 10)).$((tenths % 10))"
}
while :; do
  if [ -f "$file" ] && grep -Eq -- "$pattern" "$file"; then
    elapsed
    exit 0
  fi
  if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
    # One last look: it may have written the match just before it ended.
    if [ -f "$file" ] && grep -Eq -- "$pattern" "$file"; then elapsed; exit 0; fi
    echo exited
    exit 2
  fi
  if [ "$(date +%s%N)" -ge "$deadline_ns" ]; then
    echo timeout
    exit 1
  fi
  sleep 0.2
done
