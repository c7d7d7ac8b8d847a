#!/usr/bin/env bash
# Snapshots and subvolume deletion against the size of the subvolume.
# For N files (4 KiB each, 100 per directory) in subvolume /sv of an image
# made by `btrs mkfs -r DIR --subvol sv`:
#   snapshot: `btrs subvolume snapshot IMG /sv /snap` (then deleted again,
#             which drops the one block it copied), ROUNDS times, median;
#   create:   `btrs subvolume create IMG /e` on the same image (then
#             deleted): the same transaction's open and commit, nothing
#             copied, what the snapshot's time is to be read against;
#   delete:   `btrs subvolume delete IMG /sv` on a fresh copy of the image
#             (every block and data extent of /sv freed), beside
#   write:    `btrs put` of the same tree into a fresh copy (what btrs needs
#             to write the same tree), medians of ROUNDS interleaved rounds.
# Usage: benches/subvol.sh BTRS [ROUNDS] [N...]   (default N: 1000 10000 100000)
set -euo pipefail
bin=$1; rounds=${2:-3}; shift $(( $# >= 2 ? 2 : 1 ))
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000 100000)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
el() { echo "$2 - $1" | bc -l; }
printf '| files in /sv | snapshot (runs) | create, for comparison (runs) | delete /sv (runs) | put of the same tree (runs) | delete / put |\n| --- | --- | --- | --- | --- | --- |\n'
for n in "${sizes[@]}"; do
  src="$work/src-$n"; rm -rf "$src"; mkdir -p "$src/sv"
  python3 - "$src/sv" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:05}")
    if i % 100 == 0:
        os.mkdir(d)
    with open(os.path.join(d, f"f{i:06}"), "wb") as f:
        f.write(os.urandom(4096))
PY
  size=$(( n * 8 / 1024 + 256 ))
  img="$work/base.img"
  "$bin" mkfs -f -b ${size}M -r "$src" --subvol sv "$img" >/dev/null
  declare -A t=()
  for r in $(seq 1 "$rounds"); do
    s=$(now); "$bin" subvolume snapshot "$img" /sv /snap >/dev/null; e=$(now)
    t[snap]+="$(el "$s" "$e") "
    "$bin" subvolume delete "$img" /snap >/dev/null
    s=$(now); "$bin" subvolume create "$img" /e >/dev/null; e=$(now)
    t[create]+="$(el "$s" "$e") "
    "$bin" subvolume delete "$img" /e >/dev/null
    cp --sparse=always "$img" "$work/del.img"; sync -f "$work/del.img"
    s=$(now); "$bin" subvolume delete "$work/del.img" /sv >/dev/null; e=$(now)
    t[del]+="$(el "$s" "$e") "
    rm -f "$work/del.img" "$work/put.img"
    "$bin" mkfs -f -b ${size}M "$work/put.img" >/dev/null
    s=$(now); "$bin" put "$work/put.img" "$src/sv" / >/dev/null; e=$(now)
    t[put]+="$(el "$s" "$e") "
    rm -f "$work/put.img"
  done
  m() { echo "${t[$1]}" | tr ' ' '\n' | grep . | median; }
  runs() { printf '%.3f ' ${t[$1]}; }
  printf '| %d | %.3f s (%s) | %.3f s (%s) | %.3f s (%s) | %.3f s (%s) | %.2f |\n' "$n" "$(m snap)" "$(runs snap)" "$(m create)" "$(runs create)" "$(m del)" "$(runs del)" \
    "$(m put)" "$(runs put)" "$(echo "$(m del) / $(m put)" | bc -l)"
  unset t
done
