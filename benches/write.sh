#!/usr/bin/env bash
# btrs write of a SIZE MiB file into a RAID1 pair vs the kernel path on the
# same pair (mount + cp + sync + umount), each including its final flush;
# btrs buffered and --direct; per checksum type. Peak memory of btrs.
# The storage under the images is noisy (the same work can take twice as
# long a minute later), so each row runs ROUNDS times, interleaved with the
# other rows of its checksum, and the medians are compared.
# Needs root (loop devices, mount). Prints markdown rows.
# Usage: benches/write.sh [SIZE_MIB] [CSUM...]   (defaults 1024 crc32c sha256 blake2)
#        ROUNDS=N (default 3)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-1024}; shift || true
csums=("$@"); [ ${#csums[@]} -gt 0 ] || csums=(crc32c sha256 blake2)
rounds=${ROUNDS:-3}
btrs="$here/target/release/btrs"
(cd "$here" && cargo build --release -q)
. "$here/benches/pair.sh"
now() { date +%s.%N; }
src="$work/src.bin"
head -c "${size}M" /dev/urandom > "$src"
# The source stays in the page cache for every run: both sides read it warm.
cat "$src" > /dev/null
fresh() { rm -f "$work/a.img" "$work/b.img"; make_pair $((size * 2)) --csum "$1" >/dev/null 2>&1; sync; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for csum in "${csums[@]}"; do
  k=(); b=(); d=(); rss_b=0; rss_d=0
  for _ in $(seq "$rounds"); do
    # Kernel: mount + cp + sync + umount of a fresh pair.
    fresh "$csum"
    s=$(now); mount_pair; cp "$src" "$mnt/f"; sync; umount_pair; e=$(now)
    k+=("$(echo "$e - $s" | bc -l)")
    for mode in buffered direct; do
      fresh "$csum"
      flag=(); [ "$mode" = direct ] && flag=(--direct)
      s=$(now)
      /usr/bin/time -f '%M' -o "$work/rss" "$btrs" write --quiet "${flag[@]}" "$work/a.img" /f --from "$src"
      e=$(now)
      t=$(echo "$e - $s" | bc -l); r=$(( $(cat "$work/rss") / 1024 ))
      if [ "$mode" = direct ]; then d+=("$t"); [ "$r" -gt "$rss_d" ] && rss_d=$r; else b+=("$t"); [ "$r" -gt "$rss_b" ] && rss_b=$r; fi
    done
  done
  km=$(printf '%s\n' "${k[@]}" | median)
  for mode in buffered direct; do
    if [ "$mode" = direct ]; then ts=("${d[@]}"); r=$rss_d; else ts=("${b[@]}"); r=$rss_b; fi
    bm=$(printf '%s\n' "${ts[@]}" | median)
    printf '| write %d MiB RAID1 %s, %s | btrs %.2f s (%s; peak %d MiB) | kernel %.2f s (%s) | %.2f |\n' \
      "$size" "$csum" "$mode" "$bm" "$(printf '%.2f ' "${ts[@]}" | sed 's/ $//')" "$r" \
      "$km" "$(printf '%.2f ' "${k[@]}" | sed 's/ $//')" "$(echo "$bm / $km" | bc -l)"
  done
done
