#!/usr/bin/env bash
# btrs scrub against the floor of reading both image files (issue 18, goal 4):
# a RAID1 pair made by btrs with SIZE MiB of random data, warm (page cache)
# against `cat a.img b.img > /dev/null`, cold (after drop_caches, needs root)
# against `dd bs=4M` of both images. ROUNDS interleaved rounds; medians.
# Usage: benches/scrub-floor.sh [SIZE_MIB] [CSUM] [ROUNDS]   (defaults 1024 crc32c 5)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-1024}; csum=${2:-crc32c}; rounds=${3:-5}
btrs="$here/target/release/btrs"
(cd "$here" && cargo build --release -q)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
img_mib=$(( size * 21 / 16 + 64 ))
"$btrs" mkfs -q -b "${img_mib}M" -d raid1 -m raid1 --csum "$csum" "$work/a.img" "$work/b.img" >/dev/null
head -c "${size}M" /dev/urandom > "$work/src"
"$btrs" write "$work/a.img" /data --from "$work/src" >/dev/null
rm -f "$work/src"
now() { date +%s.%N; }
t() { local s e; s=$(now); "$@" >/dev/null 2>&1; e=$(now); echo "$e - $s" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
: > "$work/w_cat"; : > "$work/w_btrs"; : > "$work/c_dd"; : > "$work/c_btrs"
cat "$work/a.img" "$work/b.img" > /dev/null
for _ in $(seq 1 "$rounds"); do
  t cat "$work/a.img" "$work/b.img" >> "$work/w_cat"
  t "$btrs" scrub --no-progress "$work/a.img" >> "$work/w_btrs"
done
if [ "$(id -u)" = 0 ]; then
  for _ in $(seq 1 "$rounds"); do
    cold; t sh -c "dd if=$work/a.img of=/dev/null bs=4M; dd if=$work/b.img of=/dev/null bs=4M" >> "$work/c_dd"
    cold; t "$btrs" scrub --no-progress "$work/a.img" >> "$work/c_btrs"
  done
fi
/usr/bin/time -f '%M' -o "$work/rss" "$btrs" scrub --no-progress "$work/a.img" >/dev/null
wc=$(median < "$work/w_cat"); wb=$(median < "$work/w_btrs")
printf '| scrub %d MiB RAID1 %s, warm (median of %d) | btrs %.3f s (peak %d MiB) | cat of both images %.3f s | %.2f |\n' \
  "$size" "$csum" "$rounds" "$wb" "$(( $(cat "$work/rss") / 1024 ))" "$wc" "$(echo "$wb / $wc" | bc -l)"
if [ -s "$work/c_dd" ]; then
  cd_=$(median < "$work/c_dd"); cb=$(median < "$work/c_btrs")
  printf '| scrub %d MiB RAID1 %s, cold (median of %d) | btrs %.3f s | dd of both images %.3f s | %.2f |\n' \
    "$size" "$csum" "$rounds" "$cb" "$cd_" "$(echo "$cb / $cd_" | bc -l)"
fi
