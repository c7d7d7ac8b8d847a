#!/usr/bin/env bash
# Fingerprint what a btrs binary makes, to show that a refactor changed nothing:
#
#   scripts/identical.sh OLD_BTRS /tmp/old
#   scripts/identical.sh target/release/btrs /tmp/new
#   diff /tmp/old/sums /tmp/new/sums
#
# Each line of OUT/sums is "case sha256": every fixture's files, reproducible
# mkfs images (SOURCE_DATE_EPOCH + --uuid) over a source tree and a tar of it
# in many shapes, dump-super/dump-tree/ls/scrub output, the images after a
# scrub --repair, and a sequence of writing commands (whose trees are compared
# through dump-tree with the clock's fields masked: writes stamp the time).
set -euo pipefail
btrs=$(realpath "$1")
out=$2
rm -rf "$out"
mkdir -p "$out/raw"
out=$(realpath "$out")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sums=$out/sums
: >"$sums"
sum() { # case file...
  local c=$1
  shift
  # What differs between runs of one binary is masked: the temporary
  # directory's name, scrub's durations and rates. OUT/raw keeps the text.
  local raw=$out/raw/${c//\//_}
  cat "$@" | sed -E -e "s#$work#W#g" -e 's/^(Duration|Rate): .*/\1/' \
    -e 's/"duration_ms": [0-9]+/"duration_ms"/' >"$raw"
  printf '%s %s\n' "$c" "$(sha256sum <"$raw" | cut -d' ' -f1)" >>"$sums"
}
run() { # case command...: hash of stdout, stderr and exit status
  local c=$1
  shift
  local rc=0
  "$@" >"$work/o" 2>"$work/e" || rc=$?
  printf 'exit %s\n' "$rc" >>"$work/e"
  sum "$c" "$work/o" "$work/e"
}
# dump-tree with the times a writer stamps masked
masked() { # case image...
  local c=$1
  shift
  local rc=0
  "$btrs" dump-tree "$@" >"$work/o" 2>&1 || rc=$?
  sed -E 's/(atime|ctime|mtime|otime|stime|rtime) [0-9]+\.[0-9]+ \([^)]*\)/\1 T/g' "$work/o" >"$work/m"
  echo "exit $rc" >>"$work/m"
  sum "$c" "$work/m"
}

# Fixtures
for f in $("$btrs" fixture list | awk '{print $1}'); do
  "$btrs" fixture "$f" "$work/fx-$f" >/dev/null
  (cd "$work/fx-$f" && find . -type f | LC_ALL=C sort | while read -r p; do
    printf '%s ' "$p"
    sha256sum <"$p" | cut -d' ' -f1
  done) >"$work/list"
  sum "fixture/$f" "$work/list"
done

# A source tree, the same on every run
src=$work/src
mkdir -p "$src/dir/sub" "$src/empty" "$src/deep/a/b/c/d/e"
printf 'small\n' >"$src/small"
head -c 3000 /dev/zero | tr '\0' 'x' >"$src/inline-max"
python3 - "$src" <<'EOF'
import os, random, sys
s = sys.argv[1]
r = random.Random(7)
def put(p, b):
    with open(os.path.join(s, p), 'wb') as f:
        f.write(b)
put('random-1m', bytes(r.getrandbits(8) for _ in range(1 << 20)))
put('text-3m', b''.join(b'line %d of some compressible text\n' % i for i in range(90000)))
put('dir/odd', bytes(r.getrandbits(8) for _ in range(12345)))
for i in range(300):
    put('dir/sub/f%03d' % i, b'file %d\n' % i * (i % 7 + 1))
put('deep/a/b/c/d/e/leaf', b'deep\n')
put('n' * 255, b'long name\n')
with open(os.path.join(s, 'sparse'), 'wb') as f:
    f.seek(5 << 20); f.write(b'tail'); f.seek(1 << 20); f.write(b'middle')
EOF
ln "$src/small" "$src/dir/hardlink"
ln -s ../small "$src/dir/symlink"
ln -s "$(printf 'x%.0s' {1..300})" "$src/long-symlink"
mkfifo "$src/fifo"
setfattr -n user.k -v value "$src/small"
setfattr -n user.big -v "$(head -c 2000 /dev/zero | tr '\0' y)" "$src/dir/odd"
chmod 4755 "$src/dir/odd"
chmod 700 "$src/empty"
find "$src" -exec touch -h -d '2020-01-02 03:04:05' {} +
tar --sort=name --format=pax --xattrs --xattrs-include='*' -C "$src" -cf "$work/src.tar" .

export SOURCE_DATE_EPOCH=1700000000
U=0f0e0d0c-0b0a-4908-8706-050403020100
n=0
mk() { # case nimages mkfs-args...
  local c=$1 k=$2
  shift 2
  n=$((n + 1))
  local d=$work/mk$n
  mkdir "$d"
  local imgs=()
  for i in $(seq 1 "$k"); do imgs+=("$d/dev$i.img"); done
  local rc=0
  "$btrs" mkfs -U "$U" "$@" "${imgs[@]}" >"$work/o" 2>&1 || rc=$?
  echo "exit $rc" >>"$work/o"
  for i in "${imgs[@]}"; do [ -e "$i" ] && { stat -c %s "$i"; sha256sum <"$i"; } >>"$work/o"; done
  sum "mkfs/$c" "$work/o"
  last=$d
}
mk plain 1 -b 256M
mk rootdir 1 -b 256M -r "$src"
mk tar 1 -b 256M --rootdir-tar "$work/src.tar"
mk shrink 1 --shrink -r "$src"
mk shrink-slack 1 --shrink --slack 10% -r "$src"
mk shrink-slack-size 1 --shrink --slack 40M -r "$src"
mk exact 1 -b 300M -r "$src"
mk offset 1 -b 256M --offset 1M -r "$src"
mk dup 1 -b 256M -d dup -m dup -r "$src"
mk single-meta 1 -b 256M -m single -r "$src"
mk raid1 2 -b 256M -d raid1 -r "$src"
mk raid0 2 -b 256M -d raid0 -m raid0 -r "$src"
mk raid1c3 3 -b 256M -d raid1c3 -m raid1c3 -r "$src"
mk raid1c4 4 -b 256M -d raid1c4 -m raid1c4 -r "$src"
mk raid10 4 -b 512M -d raid10 -m raid10 -r "$src"
mk raid10-shrink 4 --shrink -d raid10 -m raid1 -r "$src"
for c in xxhash sha256 blake2; do mk "csum-$c" 1 -b 256M --csum "$c" -r "$src"; done
mk node4k 1 -b 256M -n 4K -r "$src"
mk node64k 1 -b 256M -n 64K -r "$src"
for z in zstd zlib lzo zstd:9:dir zlib:1 zlib:3:text-3m; do mk "compress-$z" 1 -b 256M --compress "$z" -r "$src"; done
mk label 1 -b 256M -L "a label" -r "$src"
mk no-fst 1 -b 256M -O ^free-space-tree,^block-group-tree -r "$src"
mk no-bgt 1 -b 256M -O ^block-group-tree -r "$src"
mk no-holes-off 1 -b 256M -O ^no-holes -r "$src"
mk all-root 1 -b 256M --all-root -r "$src"
mk owner-map 1 -b 256M --owner-map "0:1000:100000" -r "$src"
mk subvol 1 -b 256M --subvol dir -r "$src"
mk subvol-ro-default 1 -b 256M --subvol dir:ro:default -r "$src"
mk inode-flags 1 -b 256M --inode-flags nodatacow:dir -r "$src"
mk json 1 -b 256M --json -r "$src"
mk too-small 1 -b 40M -r "$src"
mk bad-node 1 -b 256M -n 3K
run print-size "$btrs" mkfs --print-size -r "$src" "$work/never.img"
run print-size-raid1 "$btrs" mkfs --print-size -d raid1 -r "$src" "$work/never1.img" "$work/never2.img"

# Reading commands on one reproducible image
mk read-base 2 -b 256M -d raid1 -r "$src"
img=$last/dev1.img
run dump-super "$btrs" dump-super "$img"
run dump-super-2 "$btrs" dump-super "$last/dev2.img"
run dump-tree "$btrs" dump-tree "$img"
for t in root extent chunk dev fs csum uuid free-space block-group 5 256; do
  run "dump-tree-$t" "$btrs" dump-tree -t "$t" "$img"
done
run ls-root "$btrs" ls "$img" /
run ls-l "$btrs" ls -l "$img" /dir
run ls-r "$btrs" ls -R "$img" /
run cat-random "$btrs" cat "$img" /random-1m
run cat-sparse "$btrs" cat "$img" /sparse
run cat-missing "$btrs" cat "$img" /nope
run scrub-clean "$btrs" scrub --no-progress "$img"
run scrub-json "$btrs" scrub --no-progress --json "$img"
"$btrs" extract "$img" / "$work/x1" >/dev/null
(cd "$work/x1" && find . -printf '%p %y %m %s %l\n' | LC_ALL=C sort && find . -type f -exec sha256sum {} + | LC_ALL=C sort) >"$work/xl"
sum extract "$work/xl"
# Every fixture: scrub reports, then scrub --repair and the images after it
for f in $("$btrs" fixture list | awk '$1 !~ /every-csum/ {print $1}'); do
  d=$work/fx-$f
  extra=()
  [ "$f" = raid1-degraded ] && extra=(--degraded)
  run "scrub/$f" "$btrs" scrub --no-progress --json "${extra[@]}" "$d/dev1.img"
  run "scrub-text/$f" "$btrs" scrub --no-progress "${extra[@]}" "$d/dev1.img"
  run "repair/$f" "$btrs" scrub --no-progress --repair "${extra[@]}" "$d/dev1.img"
  (cd "$d" && for p in $(find . -name '*.img' | LC_ALL=C sort); do echo "$p $(sha256sum <"$p")"; done) >"$work/rl"
  sum "repaired/$f" "$work/rl"
  run "dump-fs/$f" "$btrs" dump-tree -t fs "${extra[@]}" "$d/dev1.img"
done

# Writing commands: their trees, masked of the clock
mk write-base 2 -b 256M -d raid1 -m raid1
w=$last/dev1.img
step=0
wr() {
  step=$((step + 1))
  run "write-cmd/$step" "$btrs" "$@"
  masked "write-tree/$step" "$w"
}
wr write "$w" /a --from "$src/random-1m"
wr write "$w" /a --offset 4095 --from "$src/small"
wr write "$w" /b --from "$src/text-3m" --compress=zstd
wr write "$w" /c --from "$src/dir/odd" --nodatasum
wr write "$w" /d --from "$src/random-1m" --nodatacow
wr write "$w" /d --from "$src/dir/odd" --offset 100000
wr write "$w" /e --from "$src/random-1m" --direct --max-bio 64K
wr write "$w" /f --from "$src/text-3m" --commit-every 1M
wr write "$w" /a --truncate --from "$src/small"
wr mkdir "$w" /m/n/o -p
wr ln "$w" /b /m/b-link
wr ln -s "$w" ../b /m/b-sym
wr mv "$w" /c /m/n/c
wr setfattr "$w" -n user.x -v yes /m/n/c
wr put "$w" "$src/dir" /m
wr rm "$w" -r /m/n
wr rm "$w" /nope
wr write "$w" /g --from "$src/text-3m" --compress-force=lzo
run write-cat-a "$btrs" cat "$w" /a
run write-cat-b "$btrs" cat "$w" /b
run write-cat-d "$btrs" cat "$w" /d
run write-scrub "$btrs" scrub --no-progress "$w"
echo "$(wc -l <"$sums") cases in $sums"
