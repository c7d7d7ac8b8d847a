# Sourced by the benchmark scripts: a RAID1 pair of image files made by
# mkfs.btrfs in a temp dir, kernel mount/umount through loop devices, and a
# cleanup trap that undoes every loop device and mount on any exit.
# Usage: make_pair SIZE_MIB [mkfs.btrfs args...]; then mount_pair / umount_pair.
work=$(mktemp -d); mnt="$work/mnt"; mkdir -p "$mnt"; loops=()
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  btrfs device scan --forget >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
make_pair() {
  local size=$1; shift
  truncate -s $((size + 1024))M "$work/a.img" "$work/b.img"
  mkfs.btrfs -q "$@" -d raid1 -m raid1 "$work/a.img" "$work/b.img"
}
mount_pair() {
  loops=(); for i in a b; do loops+=("$(losetup -f --show "$work/$i.img")"); done
  mount -t btrfs -o "device=${loops[0]},device=${loops[1]},nodiscard" "${loops[0]}" "$mnt"
}
umount_pair() {
  umount "$mnt"; for l in "${loops[@]}"; do losetup -d "$l"; done; loops=()
  btrfs device scan --forget >/dev/null 2>&1 || true
}
