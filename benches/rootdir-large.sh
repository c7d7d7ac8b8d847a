#!/usr/bin/env bash
# mkfs --rootdir of a tree of large files (COUNT x SIZE_MIB of random data):
# btrs vs mkfs.btrfs on the same tree, wall time and peak memory, both
# flushing their image before they exit. Prints a markdown row.
# Usage: benches/rootdir-large.sh [COUNT] [SIZE_MIB]   (defaults 8 256 = 2 GiB)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
count=${1:-8}; size=${2:-256}
btrs="$here/target/release/btrs"
(cd "$here" && cargo build --release -q)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tree/sub"
for i in $(seq 1 "$count"); do head -c "${size}M" /dev/urandom > "$work/tree/sub/f$i"; done
cat "$work"/tree/sub/* > /dev/null   # both tools read the tree from the page cache
img_size=$(( count * size * 2 + 1024 ))M
measure() { # prints "seconds peak_kib"
  rm -f "$work/r.img"; truncate -s "$img_size" "$work/r.img"
  /usr/bin/time -f '%e %M' -o "$work/time.txt" "$@" >/dev/null 2>&1
  cat "$work/time.txt"
}
read -r tp mp < <(measure mkfs.btrfs -q -f --rootdir "$work/tree" "$work/r.img")
read -r tb mb < <(measure "$btrs" mkfs -f --rootdir "$work/tree" "$work/r.img")
printf '| mkfs --rootdir %d x %d MiB files, 1 image | btrs %.2f s, %d MiB peak | mkfs.btrfs %.2f s, %d MiB peak | %.2f |\n' \
  "$count" "$size" "$tb" "$((mb / 1024))" "$tp" "$((mp / 1024))" "$(echo "$tb / $tp" | bc -l)"
