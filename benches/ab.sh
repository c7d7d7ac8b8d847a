#!/usr/bin/env bash
# The same work by two btrs binaries, interleaved round by round, medians:
# what a change costs. No root needed (no kernel): a RAID1 pair made by
# `btrs mkfs` (NEW's), a 1 GiB file written by each binary into its own copy.
# Rows: write buffered, write --direct, cat (warm), scrub (warm).
# Usage: benches/ab.sh OLD_BTRS NEW_BTRS [SIZE_MIB] [ROUNDS] [CSUM]
set -euo pipefail
old=$1; new=$2; size=${3:-1024}; rounds=${4:-5}; csum=${5:-crc32c}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
head -c $((size << 20)) /dev/urandom > "$work/input"
now() { date +%s.%N; }
secs() { local s e; s=$(now); "$@" >/dev/null 2>&1; e=$(now); echo "$e - $s" | bc -l; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
declare -A t
for r in $(seq 1 "$rounds"); do
  for who in old new; do
    bin=${!who}
    d="$work/$who"; rm -rf "$d"; mkdir -p "$d"
    "$new" mkfs -f -b $((size * 3))M -d raid1 -m raid1 --csum "$csum" "$d/a.img" "$d/b.img" >/dev/null
    t[$who,write]+="$(secs "$bin" write "$d/a.img" /f --from "$work/input") "
    t[$who,direct]+="$(secs "$bin" write "$d/a.img" /g --from "$work/input" --direct) "
    cat "$d/a.img" "$d/b.img" > /dev/null
    t[$who,cat]+="$(secs "$bin" cat "$d/a.img" /f) "
    t[$who,scrub]+="$(secs "$bin" scrub --no-progress "$d/a.img") "
  done
done
printf '| work (%d MiB RAID1 %s, %d rounds) | old median (runs) | new median (runs) | new / old |\n| --- | --- | --- | --- |\n' "$size" "$csum" "$rounds"
for w in write direct cat scrub; do
  o=$(echo "${t[old,$w]}" | tr ' ' '\n' | grep . | median)
  n=$(echo "${t[new,$w]}" | tr ' ' '\n' | grep . | median)
  printf '| %s | %.3f s (%s) | %.3f s (%s) | %.2f |\n' "$w" "$o" "$(printf '%.2f ' ${t[old,$w]})" "$n" "$(printf '%.2f ' ${t[new,$w]})" "$(echo "$n / $o" | bc -l)"
done
