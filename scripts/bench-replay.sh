#!/usr/bin/env bash
# The replay benchmark of docs/benchmarks.md: a 2,000,000-message W1 file
# (--devices 10000 --seconds 200 --seed 42) through `iotpipe replay` at -w 1 and -w 2,
# three runs each, with messages/s, readings/s and peak RSS.
#
#   scripts/bench-replay.sh [path/to/shared/workload]            (default: ../shared/workload)
#   scripts/bench-replay.sh --compare OLD_BINARY NEW_BINARY [workload]
#   scripts/bench-replay.sh --stage decode|window [--compare OLD_STAGES NEW_STAGES] [workload]
#
# --compare runs two builds interleaved (old, new, old, new, ...) on the same file, so a change
# is measured before and after under the same machine load; build the old one from its commit
# (for example in a git worktree) and pass both release binaries.
#
# --stage runs one stage alone on the same file (examples/stages.rs): `decode` is the source's
# decoding of every line on WORKERS threads, the file already in memory; `window` is
# AggregateWindows and RollupSites on WORKERS timely workers, fed messages decoded, stamped and
# enriched before the clock starts. Together with the whole replay they say how far each stage
# is from its own limit.
set -euo pipefail
cd "$(dirname "$0")/.."
binaries=()
stage=
while [ $# -gt 0 ]; do
    case $1 in
    --compare) binaries=("$2" "$3"); shift 3 ;;
    --stage) stage=$2; shift 2 ;;
    *) break ;;
    esac
done
workload=${1:-../shared/workload}
data=target/bench/w1
mkdir -p "$data"
if [ ! -s "$data/events.jsonl" ]; then
    python3 "$workload/gen_workload.py" --devices 10000 --seconds 200 --seed 42 \
        --out "$data/events.jsonl" --registry-out "$data/registry.jsonl"
fi
if [ -n "$stage" ] && [ ${#binaries[@]} -eq 0 ]; then
    cargo build --release --quiet --example stages
    binaries=(./target/release/examples/stages)
elif [ ${#binaries[@]} -eq 0 ]; then
    cargo build --release --quiet
    binaries=(./target/release/iotpipe)
fi
for workers in 1 2; do
    for run in 1 2 3; do
        for binary in "${binaries[@]}"; do
            if [ -n "$stage" ]; then
                command=("$binary" "$stage" "$data/events.jsonl" "$data/registry.jsonl" "$workers")
            else
                command=("$binary" replay --events "$data/events.jsonl"
                    --registry "$data/registry.jsonl" --out "$data/out-w$workers" -w "$workers")
            fi
            out=$(/usr/bin/time -f "rss_kb=%M" "${command[@]}" 2>&1)
            messages=$(grep '^messages' <<<"$out" | awk '{print $2}')
            readings=$(grep '^readings' <<<"$out" | awk '{print $2}')
            elapsed=$(grep '^elapsed' <<<"$out" | awk '{print $2}')
            rss=$(grep -o 'rss_kb=[0-9]*' <<<"$out" | cut -d= -f2)
            awk -v b="$binary" -v w="$workers" -v r="$run" -v m="$messages" -v n="$readings" \
                -v e="$elapsed" -v k="$rss" \
                'BEGIN { printf "binary=%s workers=%d run=%d elapsed_s=%.2f messages_per_s=%.0f readings_per_s=%.0f peak_rss_mib=%.0f\n", b, w, r, e, m / e, n / e, k / 1024 }'
        done
    done
done
