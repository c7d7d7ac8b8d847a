#!/usr/bin/env bash
# btrs cat of a 1 GiB file vs cat through a kernel mount of the same images,
# warm page cache. Needs root (loop devices + mount). Prints a markdown row.
# Usage: benches/cat.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-1024}
btrs="$here/target/release/btrs"
[ -x "$btrs" ] || (cd "$here" && cargo build --release -q)
. "$here/benches/pair.sh"
make_pair "$size"
mount_pair
head -c $((size << 20)) /dev/urandom > "$mnt/big"
umount_pair

best() { # best of 3 wall-clock seconds of "$@"
  local b=999999
  for _ in 1 2 3; do
    local s e
    s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N)
    b=$(echo "$e - $s" | bc -l | awk -v b="$b" '{print ($1 < b) ? $1 : b}')
  done
  echo "$b"
}
cat "$work/a.img" "$work/b.img" > /dev/null   # warm the image files
btrs_t=$(best "$btrs" cat "$work/a.img" big)
mount_pair
cat "$mnt/big" > /dev/null                      # warm the kernel's page cache
kern_t=$(best cat "$mnt/big")
umount_pair
ratio=$(echo "$btrs_t / $kern_t" | bc -l)
printf '| btrs cat %d MiB (RAID1, crc32c, warm) | %.3f s | kernel cat %.3f s | %.2f |\n' "$size" "$btrs_t" "$kern_t" "$ratio"
