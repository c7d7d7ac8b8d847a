#!/usr/bin/env bash
# btrs extract against `cp -a` from a kernel mount of the same image (issue
# 18, goal 3), warm (the kernel's: a second cp -a in the same mount; btrs's:
# the image in the page cache, a second extract): one image made by `btrs mkfs -r SRC` (default
# /usr/share), ROUNDS interleaved rounds, medians. Needs root (loop device,
# mount). Prints a markdown row.
# Usage: benches/extract.sh [SRC] [ROUNDS]   (defaults /usr/share 5)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-/usr/share}; rounds=${2:-5}
btrs="$here/target/release/btrs"
(cd "$here" && cargo build --release -q)
work=$(mktemp -d); mnt="$work/mnt"; mkdir -p "$mnt"
cleanup() {
  mountpoint -q "$mnt" && "$here/../shared/tools/kernel-umount" "$mnt" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
"$btrs" mkfs -q --shrink -r "$src" "$work/a.img" >/dev/null
files=$(find "$src" -type f | wc -l); bytes=$(du -sb "$src" | cut -f1)
now() { date +%s.%N; }
t() { local s e; s=$(now); "$@" >/dev/null 2>&1; e=$(now); echo "$e - $s" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
: > "$work/k"; : > "$work/b"
for r in $(seq 0 "$rounds"); do
  "$here/../shared/tools/kernel-mount" "$mnt" "$work/a.img" >/dev/null
  rm -rf "$work/out"
  cp -a "$mnt/." "$work/out"; rm -rf "$work/out"   # warm the mount's caches
  tk=$(t cp -a "$mnt/." "$work/out"); rm -rf "$work/out"
  "$here/../shared/tools/kernel-umount" "$mnt" >/dev/null
  "$btrs" extract "$work/a.img" / "$work/warm" >/dev/null 2>&1; rm -rf "$work/warm"
  tb=$(t "$btrs" extract "$work/a.img" / "$work/out"); rm -rf "$work/out"
  # Round 0 only warms the caches.
  [ "$r" = 0 ] && continue
  echo "$tk" >> "$work/k"; echo "$tb" >> "$work/b"
done
/usr/bin/time -f '%M' -o "$work/rss" "$btrs" extract "$work/a.img" / "$work/out" >/dev/null 2>&1
k=$(median < "$work/k"); b=$(median < "$work/b")
printf '| extract %s (%d files, %d MiB), warm (median of %d) | btrs %.2f s (peak %d MiB) | cp -a from a kernel mount %.2f s | %.2f |\n' \
  "$src" "$files" "$((bytes >> 20))" "$rounds" "$b" "$(( $(cat "$work/rss") / 1024 ))" "$k" "$(echo "$b / $k" | bc -l)"
