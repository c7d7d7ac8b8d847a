#!/usr/bin/env bash
# btrs put of a tree into an empty image against btrs mkfs -r of the same
# tree (issue 18, goal 2), ROUNDS interleaved rounds, medians, warm source:
# into an empty image, then into one already holding 100k files.
# Prints two markdown rows.
# Usage: benches/put.sh [SRC] [ROUNDS]   (defaults /usr/share 3)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-/usr/share}; rounds=${2:-3}
btrs="$here/target/release/btrs"
(cd "$here" && cargo build --release -q)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
bytes=$(du -sb "$src" | cut -f1); files=$(find "$src" -type f | wc -l)
size=$(( bytes * 2 / 1048576 + 512 ))M
now() { date +%s.%N; }
t() { local s e; s=$(now); "$@" >/dev/null 2>&1; e=$(now); echo "$e - $s" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
: > "$work/m"; : > "$work/p"
tar -cf - "$src" 2>/dev/null > /dev/null   # warm the source
for _ in $(seq 1 "$rounds"); do
  rm -f "$work/m.img"; echo "$(t "$btrs" mkfs -q -b "$size" -r "$src" "$work/m.img")" >> "$work/m"
  rm -f "$work/p.img"; "$btrs" mkfs -q -b "$size" "$work/p.img" >/dev/null
  echo "$(t "$btrs" put "$work/p.img" "$src" /tree)" >> "$work/p"
done
/usr/bin/time -f '%M' -o "$work/rss" "$btrs" put "$work/p.img" "$src" /again >/dev/null 2>&1 || true
m=$(median < "$work/m"); p=$(median < "$work/p")
printf '| put %s (%d files, %d MiB) into an empty image (median of %d) | btrs put %.2f s (peak %d MiB) | btrs mkfs -r %.2f s | %.2f |\n' \
  "$src" "$files" "$((bytes >> 20))" "$rounds" "$p" "$(( $(cat "$work/rss") / 1024 ))" "$m" "$(echo "$p / $m" | bc -l)"

# The same put into an image already holding 100k small files (benches/mkfs.sh's
# tree: 100 directories, files of 0..3000 bytes), against the same mkfs -r.
python3 "$here/benches/small-tree.py" "$work/full" 100000
full_size=$(( bytes * 2 / 1048576 + 1024 ))M
"$btrs" mkfs -q -b "$full_size" -r "$work/full" "$work/full.img" >/dev/null
: > "$work/m2"; : > "$work/f"
for _ in $(seq 1 "$rounds"); do
  rm -f "$work/m.img"; echo "$(t "$btrs" mkfs -q -b "$size" -r "$src" "$work/m.img")" >> "$work/m2"
  cp --sparse=always "$work/full.img" "$work/f.img"
  echo "$(t "$btrs" put "$work/f.img" "$src" /tree)" >> "$work/f"
done
/usr/bin/time -f '%M' -o "$work/rss2" "$btrs" put "$work/f.img" "$src" /again >/dev/null 2>&1 || true
m2=$(median < "$work/m2"); f=$(median < "$work/f")
printf '| put %s into an image holding 100k files (median of %d) | btrs put %.2f s (peak %d MiB) | btrs mkfs -r %.2f s | %.2f |\n' \
  "$src" "$rounds" "$f" "$(( $(cat "$work/rss2") / 1024 ))" "$m2" "$(echo "$f / $m2" | bc -l)"
