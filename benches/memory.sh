#!/usr/bin/env bash
# Peak RSS of every command on a small and a large filesystem (issue 18,
# goal 5): a command whose peak grows with the filesystem's size shows it
# here. Two images made by `btrs mkfs -r` of benches/mkfs.sh's tree (100
# directories of files of 0..3000 bytes, N and 10*N files; default N 10000)
# plus one 256 MiB file each; every command runs on a fresh copy of each.
# Usage: [BTRS=binary] benches/memory.sh [N]   Prints a markdown table (MiB).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-10000}
# BTRS=path measures that binary as it is (no build).
btrs=${BTRS:-$here/target/release/btrs}
[ -n "${BTRS:-}" ] || (cd "$here" && cargo build --release -q)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
tree() { # $1 dir, $2 files
  python3 "$here/benches/small-tree.py" "$1" "$2"
  head -c 256M /dev/urandom > "$1/big"
}
tree "$work/small" "$n"
tree "$work/large" $(( n * 10 ))
mkdir -p "$work/host"; head -c 64M /dev/urandom > "$work/host/put-me"
"$btrs" mkfs -q -b 2G -r "$work/small" "$work/small.img" >/dev/null
"$btrs" mkfs -q -b 4G -r "$work/large" "$work/large.img" >/dev/null
peak() { # $1 image to copy, rest: btrs arguments with IMG for the copy; prints MiB
  local img=$1; shift
  cp --sparse=always "$img" "$work/c.img"
  local args=() a
  for a in "$@"; do args+=("${a//IMG/$work/c.img}"); done
  rm -rf "$work/out"
  /usr/bin/time -f '%M' -o "$work/rss" "$btrs" "${args[@]}" >/dev/null 2>"$work/err" < /dev/null ||
    { echo "btrs ${args[*]} failed: $(cat "$work/err")" >&2; echo "-"; return; }
  echo $(( $(cat "$work/rss") / 1024 ))
}
row() { # $1 label, rest: arguments (IMG, and SRC for the size's host tree)
  local label=$1; shift
  local s=() l=() a
  for a in "$@"; do s+=("${a//SRC/$work/small}"); l+=("${a//SRC/$work/large}"); done
  printf '| %s | %s | %s |\n' "$label" "$(peak "$work/small.img" "${s[@]}")" "$(peak "$work/large.img" "${l[@]}")"
}
printf '| command | %d files (MiB) | %d files (MiB) |\n|---|---|---|\n' "$n" $(( n * 10 ))
mk() { # mkfs -r of the size's tree onto a fresh image
  local label=$1 src=$2 rss
  rm -f "$work/m.img"
  /usr/bin/time -f '%M' -o "$work/rss" "$btrs" mkfs -q -b 4G -r "$src" "$work/m.img" >/dev/null 2>&1
  rss=$(( $(cat "$work/rss") / 1024 ))
  echo "$rss"
}
printf '| mkfs -r | %s | %s |\n' "$(mk small "$work/small")" "$(mk large "$work/large")"
row "mkfs (empty, 2 GiB)" mkfs -f -q -b 2G IMG
row "ls -R /" ls -R IMG /
row "cat /big (256 MiB)" cat IMG /big
row "stat /d000" stat IMG /d000
row "extract / (whole tree)" extract IMG / "$work/out"
row "scrub" scrub --no-progress IMG
row "scrub --repair" scrub --no-progress --repair IMG
row "dump-tree -t fs" dump-tree -t fs IMG
row "dump-tree (all trees)" dump-tree IMG
row "filesystem usage" filesystem usage IMG
row "subvolume snapshot / /snap" subvolume snapshot IMG / /snap
row "put 64 MiB file" put IMG "$work/host/put-me" /put-me
row "put the small tree" put IMG "$work/small" /again
row "put the image's own tree again" put IMG SRC /again
row "write 256 MiB (stdin)" write IMG /w --from "$work/large/big"
row "rm -r /d001" rm -r IMG /d001
row "chmod 600 /big" chmod IMG 600 /big
row "balance --convert data=dup" balance --convert data=dup IMG
row "resize +1G" resize IMG +1G
