#!/usr/bin/env bash
# Rebuilding a lost RAID1 mirror: `btrs replace` beside `cp` of the
# surviving image (the floor: a replace is a copy plus verification) and the
# kernel's `btrfs replace start` on a `degraded` mount of the survivor (root;
# loop devices, undone on any exit). A RAID1 pair made by `btrs mkfs`,
# holding SIZE MiB of file data; rounds interleaved, medians.
# Usage: benches/replace.sh BTRS [SIZE_MIB] [ROUNDS]
set -euo pipefail
bin=$1; size=${2:-1024}; rounds=${3:-5}
work=$(mktemp -d)
loops=()
cleanup() {
  mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt"
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  btrfs device scan --forget >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
img=$((size * 3 / 2 + 256))
head -c $((size << 20)) /dev/urandom > "$work/input"
"$bin" mkfs -f -b ${img}M -d raid1 -m raid1 "$work/a.img" "$work/b.img" >/dev/null
"$bin" write "$work/a.img" /f --from "$work/input" >/dev/null
mkdir -p "$work/mnt" "$work/lost"
kernel=0
if [ "$(id -u)" = 0 ] && command -v btrfs >/dev/null; then kernel=1; fi
declare -A t
for r in $(seq 1 "$rounds"); do
  rm -f "$work/copy.img" "$work/new.img" "$work/k1.img" "$work/k2.img"
  # cp of the surviving image.
  s=$(now); cp --sparse=always "$work/a.img" "$work/copy.img"; sync -f "$work/copy.img"; e=$(now)
  t[cp]+="$(echo "$e - $s" | bc -l) "
  rm -f "$work/copy.img"
  # btrs replace: devid 2 moved away, rebuilt onto new.img.
  mv "$work/b.img" "$work/lost/b.img"
  s=$(now); "$bin" replace "$work/a.img" 2 "$work/new.img" --no-progress >/dev/null; e=$(now)
  t[btrs]+="$(echo "$e - $s" | bc -l) "
  rm -f "$work/new.img"; mv "$work/lost/b.img" "$work/b.img"
  if [ $kernel = 1 ]; then
    # The kernel: the survivor mounted degraded, devid 2 replaced by a blank loop device.
    cp --sparse=always "$work/a.img" "$work/k1.img"
    truncate -s ${img}M "$work/k2.img"
    btrfs device scan --forget >/dev/null 2>&1 || true
    l1=$(losetup -f --show "$work/k1.img"); loops+=("$l1")
    l2=$(losetup -f --show "$work/k2.img"); loops+=("$l2")
    mount -t btrfs -o degraded,nodiscard "$l1" "$work/mnt"
    s=$(now); btrfs replace start -B 2 "$l2" "$work/mnt" >/dev/null; sync -f "$work/mnt"; e=$(now)
    t[kernel]+="$(echo "$e - $s" | bc -l) "
    umount "$work/mnt"
    losetup -d "$l1"; losetup -d "$l2"; loops=()
    btrfs device scan --forget >/dev/null 2>&1 || true
    rm -f "$work/k1.img" "$work/k2.img"
  fi
done
cpm=$(echo "${t[cp]}" | tr ' ' '\n' | grep . | median)
printf '| work (%d MiB of data on a RAID1 pair, %d rounds) | median (runs) | / cp |\n| --- | --- | --- |\n' "$size" "$rounds"
for w in cp btrs kernel; do
  [ -n "${t[$w]:-}" ] || continue
  m=$(echo "${t[$w]}" | tr ' ' '\n' | grep . | median)
  printf '| %s | %.3f s (%s) | %.2f |\n' "$w" "$m" "$(printf '%.2f ' ${t[$w]})" "$(echo "$m / $cpm" | bc -l)"
done
