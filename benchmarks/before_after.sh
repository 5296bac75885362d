#!/usr/bin/env bash
# Throughput of two versions of the package, interleaved in one run: benchmarks/throughput.py of commit BEFORE (from
# a temporary git worktree) and of the working tree take turns, ROUNDS times, so that machine noise hits both alike.
# Each turn is one throughput.py round (--pairs 1); the summary gives every ratio line per turn and the medians.
#
# Usage: benchmarks/before_after.sh BEFORE [ROUNDS] [OUT_DIR] [-- throughput.py options]
#   e.g. benchmarks/before_after.sh 614d262 3 benchmarks/results/before_after
#        benchmarks/before_after.sh 614d262 3 benchmarks/results/before_after_pixels -- --pixels --train-steps 500
set -euo pipefail
before=$1
rounds=${2:-3}
out=${3:-benchmarks/results/before_after}
shift $(($# < 3 ? $# : 3))
[ "${1:-}" = "--" ] && shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
tree=$(mktemp -d)/before
git worktree add --detach "$tree" "$before" >/dev/null
trap 'git worktree remove --force "$tree"' EXIT
after_commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- sb3_ddpg_paper || echo "+changes")
echo "before: $(git -C "$tree" rev-parse --short HEAD)   after: $after_commit   rounds: $rounds   options: $*" > "$out/summary.txt"
for round in $(seq 1 "$rounds"); do
  for side in before after; do
    root=$([ "$side" = before ] && echo "$tree" || pwd)
    # PYTHONPATH puts that tree's sb3_ddpg_paper ahead of the installed (editable) one
    (cd "$root" && PYTHONPATH="$root" python benchmarks/throughput.py --pairs 1 --long-steps 0 "$@" \
      --out "$out/$side-$round.json") > "$out/$side-$round.txt"
    # Ratio lines ("Pendulum-v1 A/B = 1.64 (...)") and each contender's ms per step ("pair 0 <env> <X> ... ms/step")
    grep -E "^\S+ +[A-F]/[A-F] = " "$out/$side-$round.txt" | sed "s/^/round $round $side  /" | cut -d'(' -f1 >> "$out/summary.txt" || true
    grep -E "^pair 0 " "$out/$side-$round.txt" | awk -v r="$round" -v s="$side" '{print "round", r, s, " " $3, $4, "=", $(NF-1), "ms/step"}' >> "$out/summary.txt" || true
  done
done
echo "medians over rounds:" >> "$out/summary.txt"
grep "^round" "$out/summary.txt" | awk '{key=$3" "$4" "$5; v[key]=v[key]" "$7} END {for (k in v) print k, v[k]}' | sort -k2,2 -k3,3 -k1,1 |
  while read -r side env ratio values; do
    median=$(echo "$values" | tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    echo "  $env $ratio $side: $median  (rounds: $values)"
  done >> "$out/summary.txt"
cat "$out/summary.txt"
