#!/usr/bin/env bash
# btrs mkfs vs mkfs.btrfs, side by side in one run. Both must leave the images
# durable: mkfs.btrfs fsyncs its devices before exiting, btrs mkfs does too.
# 1) RAID1 pair of 1 GiB fresh sparse images, best of 5 wall-clock.
# 2) --rootdir of a tree of N small files on one image (default 100000), wall time and peak RSS.
# Usage: benches/mkfs.sh [NFILES]   Prints markdown rows.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
nfiles=${1:-100000}
btrs="$here/target/release/btrs"
(cd "$here" && cargo build --release -q)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
best_pair() { # $@ = command taking two image paths at the end
  local b=999
  for _ in 1 2 3 4 5; do
    rm -f "$work/a.img" "$work/b.img"; truncate -s 1G "$work/a.img" "$work/b.img"
    local s; s=$(now); "$@" "$work/a.img" "$work/b.img" >/dev/null; local e; e=$(now)
    b=$(echo "$e - $s" | bc -l | awk -v b="$b" '{print ($1 < b) ? $1 : b}')
  done
  echo "$b"
}
t_progs=$(best_pair mkfs.btrfs -q -f -d raid1 -m raid1)
t_btrs=$(best_pair "$btrs" mkfs -f -d raid1 -m raid1)
printf '| mkfs RAID1 pair, 2 x 1 GiB | btrs %.3f s | mkfs.btrfs %.3f s | %.2f |\n' "$t_btrs" "$t_progs" "$(echo "$t_btrs / $t_progs" | bc -l)"

# A tree of small files: 100 directories, files of 0..3000 bytes.
python3 "$here/benches/small-tree.py" "$work/tree" "$nfiles"
size=$(( nfiles / 100000 * 2 + 2 ))G
measure() { # prints "seconds peak_kib"
  rm -f "$work/r.img"; truncate -s "$size" "$work/r.img"
  /usr/bin/time -f '%e %M' -o "$work/time.txt" "$@" >/dev/null 2>&1
  cat "$work/time.txt"
}
read -r tp mp < <(measure mkfs.btrfs -q -f --rootdir "$work/tree" "$work/r.img")
read -r tb mb < <(measure "$btrs" mkfs -f --rootdir "$work/tree" "$work/r.img")
printf '| mkfs --rootdir %d small files, 1 image | btrs %.2f s, %d MiB peak | mkfs.btrfs %.2f s, %d MiB peak | %.2f |\n' \
  "$nfiles" "$tb" "$((mb / 1024))" "$tp" "$((mp / 1024))" "$(echo "$tb / $tp" | bc -l)"
