#!/usr/bin/env bash
# mkfs --rootdir at scale (issue 18, goal 1): btrs mkfs against mkfs.btrfs on
# trees of N small files (benches/small-tree.py: 100 directories, files of
# 0..3000 bytes), one fresh sparse image each, both flushing before they exit.
# Rounds are interleaved (btrs, mkfs.btrfs, btrs, ...); medians of wall time
# and of peak RSS. Prints a markdown row per size, then how each tool's time
# grows from the first size to the last. Beside them, in the same rounds, the
# host's own cost of the same tree, which no tool reading it can go below:
# `tar -cf - TREE | cat` (every file listed, stat'ed, opened and read) and
# `du -s TREE` (every file stat'ed), so that a tool's growth can be read
# against how the host's lookups grow with the number of files.
# The trees and images live in a work directory under TMPDIR (for a fair
# 1M-file run put it on tmpfs: TMPDIR=/dev/shm). btrs's own temporary files
# (its sorted runs of tree items past 24 MiB) go to SPILL (default /var/tmp,
# on disk), so they count neither as its memory nor as tmpfs.
# On a virtual machine whose host takes back the memory the guest frees
# ("free page reporting", virtio-balloon), memory a run writes for the first
# time since it was handed back costs several times more than memory reused
# (writing 1 GiB into tmpfs here: 2.7 s against 0.3 s): a 1M-file run, whose
# image alone is 3.5 GiB, pays it where a 100k-file run reusing pages just
# freed does not, and which tool pays depends on the order of the runs. So,
# unless REPORTING=keep, while the bench runs free pages are not reported
# (page_reporting_order raised past the largest order, put back on exit;
# root only) and the memory the largest run needs is written once first.
# Usage: [BTRS=binary] [SPILL=dir] [REPORTING=keep] benches/mkfs-scale.sh [ROUNDS] [N...]
#   default: 3 rounds of 100000, then 1 round of 1000000 (it takes minutes
#   for mkfs.btrfs). Needs root only for nothing; mkfs.btrfs must be installed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
shift || true
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100000 1000000)
btrs=${BTRS:-$here/target/release/btrs}
[ -n "${BTRS:-}" ] || (cd "$here" && cargo build --release -q)
spill=${SPILL:-/var/tmp}
work=$(mktemp -d)
reporting=/sys/module/page_reporting/parameters/page_reporting_order
reported=
cleanup() {
  rm -rf "$work"
  [ -z "$reported" ] || echo "$reported" > "$reporting"
}
trap cleanup EXIT
if [ "${REPORTING:-}" != keep ] && [ -w "$reporting" ]; then
  reported=$(cat "$reporting")
  echo 11 > "$reporting"
  # Touch once what the largest run needs: its tree, its image, mkfs.btrfs's
  # memory (about 16 KiB a file, as far as the memory there is allows).
  max=0; for n in "${sizes[@]}"; do [ "$n" -gt "$max" ] && max=$n; done
  avail=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
  mib=$(( max / 64 )); [ "$mib" -lt $(( avail - 2048 )) ] || mib=$(( avail - 2048 ))
  [ "$mib" -le 0 ] || dd if=/dev/zero of="$work/touch" bs=1M count="$mib" status=none
  rm -f "$work/touch"
  echo "(free page reporting held off while the bench runs, $mib MiB touched first)" >&2
fi
median() { sort -g | awk '{v[NR]=$1} END{print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
run() { # $1 out file, rest: command taking the image last; appends "seconds KiB"
  local out=$1; shift
  rm -f "$work/r.img"; truncate -s "$size" "$work/r.img"
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f '%e %M' -o "$work/t" "$@" "$work/r.img" >/dev/null 2>"$work/err" ||
    { echo "failed: $* ($(cat "$work/err"))" >&2; exit 1; }
  cat "$work/t" >> "$out"
}
floor() { # $1 out file, rest: command; appends "seconds"
  local out=$1; shift
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f '%e' -o "$work/t" "$@" >/dev/null 2>"$work/err" || { echo "failed: $* ($(cat "$work/err"))" >&2; exit 1; }
  cat "$work/t" >> "$out"
}
printf '| files | btrs | mkfs.btrfs | time ratio | tar \\| cat | du -s |\n|---|---|---|---|---|---|\n'
first=() last=()
for n in "${sizes[@]}"; do
  rm -rf "$work/tree"
  python3 "$here/benches/small-tree.py" "$work/tree" "$n"
  size=$(( n / 100000 * 2 + 2 ))G
  r=$rounds; [ "$n" -ge 1000000 ] && r=1
  : > "$work/b"; : > "$work/p"; : > "$work/tar"; : > "$work/du"
  for _ in $(seq "$r"); do
    run "$work/b" env TMPDIR="$spill" "$btrs" mkfs -f -q --rootdir "$work/tree"
    run "$work/p" mkfs.btrfs -q -f --rootdir "$work/tree"
    floor "$work/tar" sh -c 'tar -C "$1" -cf - . | cat > /dev/null' tar "$work/tree"
    floor "$work/du" du -s "$work/tree"
  done
  tb=$(cut -d' ' -f1 "$work/b" | median); mb=$(cut -d' ' -f2 "$work/b" | median)
  tp=$(cut -d' ' -f1 "$work/p" | median); mp=$(cut -d' ' -f2 "$work/p" | median)
  tt=$(median < "$work/tar"); td=$(median < "$work/du")
  printf '| %d (%d round%s) | %.2f s, %d MiB peak | %.2f s, %d MiB peak | %.2f | %.2f s | %.2f s |\n' "$n" "$r" "$([ "$r" = 1 ] || echo s)" \
    "$tb" "$(( ${mb%.*} / 1024 ))" "$tp" "$(( ${mp%.*} / 1024 ))" "$(echo "$tb / $tp" | bc -l)" "$tt" "$td"
  [ ${#first[@]} -gt 0 ] || first=("$n" "$tb" "$tp" "$tt" "$td")
  last=("$n" "$tb" "$tp" "$tt" "$td")
done
if [ "${first[0]}" != "${last[0]}" ]; then
  g() { [ "$(echo "${first[$1]} > 0" | bc)" = 1 ] && echo "${last[$1]} / ${first[$1]}" | bc -l || echo 0; }
  printf '\nFrom %d to %d files (%.0fx): btrs %.1fx the time, mkfs.btrfs %.1fx; the host floors: tar | cat %.1fx, du -s %.1fx\n' \
    "${first[0]}" "${last[0]}" "$(echo "${last[0]} / ${first[0]}" | bc -l)" "$(g 1)" "$(g 2)" "$(g 3)" "$(g 4)"
fi
