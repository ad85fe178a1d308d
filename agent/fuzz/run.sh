#!/bin/sh
# Runs each fuzz target given as NAME:MAX_LEN for FUZZ_TIME seconds (default 600), one after
# the other, then prints target / runs / result and fails if any target crashed. A crash's
# reproducer stays in agent/fuzz/artifacts/NAME/ (`cargo +nightly fuzz run NAME FILE` replays it).
# The corpus grows in agent/fuzz/corpus/NAME; agent/fuzz/seeds/NAME starts it.
set -u
cd "$(dirname "$0")"
time=${FUZZ_TIME:-600}
[ $# -gt 0 ] || { echo "usage: $0 NAME:MAX_LEN..." >&2; exit 2; }
names=$(for t in "$@"; do printf '%s ' "${t%%:*}"; done)
# Built once, all together, before the clock starts for any of them.
for n in $names; do
    cargo +nightly fuzz build "$n" || exit 2
done
mkdir -p logs
table=""
failed=0
for t in "$@"; do
    n=${t%%:*}
    len=${t#*:}
    mkdir -p "corpus/$n"
    log="logs/$n.log"
    echo "fuzz: $n for ${time} s (log: agent/fuzz/$log)"
    if cargo +nightly fuzz run "$n" "corpus/$n" "seeds/$n" -- \
        -max_total_time="$time" -max_len="$len" -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="crash (reproducer in agent/fuzz/artifacts/$n/, log agent/fuzz/$log)"
        failed=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    table="$table$(printf '%-10s %12s  %s' "$n" "${runs:--}" "$result")
"
done
printf '\n%-10s %12s  %s\n%s' TARGET RUNS RESULT "$table"
exit $failed
