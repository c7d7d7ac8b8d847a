#!/usr/bin/env bash
# What opening a device set costs two btrs binaries: `cat` of one small file
# (and `ls /`) on a RAID1 pair whose every tree block is of the newest
# generation (a fresh `mkfs --rootdir` of SRC), where open checks the most:
# superblocks, dev items, chunk stripes, stale devices and the copies of the
# newest commit's tree blocks. Interleaved rounds, medians of 20 runs each.
# Usage: benches/open.sh OLD_BTRS NEW_BTRS [SRC_DIR] [ROUNDS]
set -euo pipefail
old=$1; new=$2; src=${3:-/usr/include}; rounds=${4:-7}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$new" mkfs -f -b 1G -d raid1 -m raid1 -r "$src" "$work/a.img" "$work/b.img" >/dev/null
small=$(find "$src" -maxdepth 1 -type f -size -8k -printf "%f\n" | sort | head -1)
cat "$work/a.img" "$work/b.img" > /dev/null
now() { date +%s.%N; }
twenty() { local s e; s=$(now); for _ in $(seq 20); do "$@" >/dev/null 2>&1; done; e=$(now); echo "($e - $s) / 20" | bc -l; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
declare -A t
for r in $(seq 1 "$rounds"); do
  for who in old new; do
    bin=${!who}
    t[$who,ls]+="$(twenty "$bin" ls "$work/a.img" /) "
    t[$who,cat]+="$(twenty "$bin" cat "$work/a.img" "/$small") "
  done
done
printf '| work (RAID1 pair, mkfs -r %s, %d rounds of 20) | old median per run | new median per run | new / old |\n| --- | --- | --- | --- |\n' "$src" "$rounds"
for w in ls cat; do
  o=$(echo "${t[old,$w]}" | tr ' ' '\n' | grep . | median)
  n=$(echo "${t[new,$w]}" | tr ' ' '\n' | grep . | median)
  printf '| %s | %.1f ms | %.1f ms | %.2f |\n' "$w" "$(echo "$o * 1000" | bc -l)" "$(echo "$n * 1000" | bc -l)" "$(echo "$n / $o" | bc -l)"
done
