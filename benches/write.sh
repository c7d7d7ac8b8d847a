#!/usr/bin/env bash
# btrs write of a SIZE MiB file into a RAID1 pair vs the kernel path on the
# same pair (mount + cp + sync + umount), each including its final flush;
# btrs buffered and --direct; per checksum type. Peak memory of btrs.
# Needs root (loop devices, mount). Prints markdown rows.
# Usage: benches/write.sh [SIZE_MIB] [CSUM...]   (defaults 1024 crc32c sha256 blake2)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-1024}; shift || true
csums=("$@"); [ ${#csums[@]} -gt 0 ] || csums=(crc32c sha256 blake2)
btrs="$here/target/release/btrs"
(cd "$here" && cargo build --release -q)
. "$here/benches/pair.sh"
now() { date +%s.%N; }
src="$work/src.bin"
head -c "${size}M" /dev/urandom > "$src"
# The source stays in the page cache for every run: both sides read it warm.
cat "$src" > /dev/null
for csum in "${csums[@]}"; do
  # Kernel: mount + cp + sync + umount of a fresh pair.
  rm -f "$work/a.img" "$work/b.img"; make_pair $((size * 2)) --csum "$csum" 2>/dev/null
  s=$(now); mount_pair; cp "$src" "$mnt/f"; sync; umount_pair; e=$(now)
  k=$(echo "$e - $s" | bc -l)
  for mode in buffered direct; do
    rm -f "$work/a.img" "$work/b.img"; make_pair $((size * 2)) --csum "$csum" 2>/dev/null
    flag=(); [ "$mode" = direct ] && flag=(--direct)
    s=$(now)
    /usr/bin/time -f '%M' -o "$work/rss" "$btrs" write --quiet "${flag[@]}" "$work/a.img" /f --from "$src"
    e=$(now)
    b=$(echo "$e - $s" | bc -l)
    printf '| write %d MiB RAID1 %s, %s | btrs %.2f s (peak %d MiB) | kernel %.2f s | %.2f |\n' \
      "$size" "$csum" "$mode" "$b" "$(( $(cat "$work/rss") / 1024 ))" "$k" "$(echo "$b / $k" | bc -l)"
  done
done
