#!/usr/bin/env bash
# btrs scrub vs the kernel's `btrfs scrub start -B` on the same RAID1 pair with
# SIZE MiB of data, warm and cold page cache, for a checksum type.
# Needs root (loop devices, mount, drop_caches). Prints markdown rows.
# Usage: benches/scrub.sh [SIZE_MIB] [CSUM]   (defaults 1024 crc32c)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-1024}; csum=${2:-crc32c}
btrs="$here/target/release/btrs"
(cd "$here" && cargo build --release -q)
. "$here/benches/pair.sh"
make_pair "$size" --csum "$csum"
mount_pair
for i in $(seq 1 $((size / 64))); do head -c 64M /dev/urandom > "$mnt/f$i"; done
sync
now() { date +%s.%N; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# Kernel scrub (mounted; the mount is not timed).
cold; s=$(now); btrfs scrub start -B "$mnt" >/dev/null; e=$(now); k_cold=$(echo "$e - $s" | bc -l)
s=$(now); btrfs scrub start -B "$mnt" >/dev/null; e=$(now); k_warm=$(echo "$e - $s" | bc -l)
umount_pair
cold; s=$(now); "$btrs" scrub --no-progress "$work/a.img" >/dev/null; e=$(now); b_cold=$(echo "$e - $s" | bc -l)
s=$(now); "$btrs" scrub --no-progress "$work/a.img" >/dev/null; e=$(now); b_warm=$(echo "$e - $s" | bc -l)
/usr/bin/time -f '%M' -o "$work/rss" "$btrs" scrub --no-progress "$work/a.img" >/dev/null
s=$(now); cat "$work/a.img" "$work/b.img" >/dev/null; e=$(now); floor=$(echo "$e - $s" | bc -l)
printf '| scrub %d MiB RAID1 %s, cold | btrs %.2f s | kernel %.2f s | %.2f |\n' "$size" "$csum" "$b_cold" "$k_cold" "$(echo "$b_cold / $k_cold" | bc -l)"
printf '| scrub %d MiB RAID1 %s, warm | btrs %.2f s (peak %d MiB; cat of both whole sparse images %.2f s) | kernel %.2f s | %.2f |\n' "$size" "$csum" "$b_warm" "$(( $(cat "$work/rss") / 1024 ))" "$floor" "$k_warm" "$(echo "$b_warm / $k_warm" | bc -l)"
