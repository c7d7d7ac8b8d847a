#!/bin/sh
# Seed corpora for the fuzz targets, cut from the foreign fixtures (fixtures/foreign/*).
# Writes fuzz/corpus/<target>/ (git-ignored; never commit corpora). Needs zstd and python3.
#   superblock:  the primary superblock of every fixture device
#   tree_block:  every metadata block (nodesize-aligned, carrying the fsid), prefixed with the
#                selector byte the target reads first (node size and checksum type)
#   dir_names:   leaf item bodies of DIR_ITEM/DIR_INDEX/XATTR/INODE_REF/INODE_EXTREF/ROOT_REF
#                (8-byte parent prefix); chunk_map, decompress, image_walk start from scratch
#                (their inputs are structured) plus a few chunk items for chunk_map.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fixtures="$here/../fixtures/foreign"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$here/corpus/superblock" "$here/corpus/tree_block" "$here/corpus/dir_names" "$here/corpus/chunk_map"
for d in "$fixtures"/*/; do
    name=$(basename "$d")
    for z in "$d"dev*.img.zst; do
        dev=$(basename "$z" .img.zst)
        zstd -dqf "$z" -o "$tmp/img"
        python3 - "$tmp/img" "$here/corpus" "$name-$dev" <<'PY'
import struct, sys, os
img, corpus, tag = sys.argv[1], sys.argv[2], sys.argv[3]
f = open(img, 'rb')
f.seek(65536); sb = f.read(4096)
open(os.path.join(corpus, 'superblock', tag), 'wb').write(sb)
fsid = sb[32:48]  # metadata_uuid is not used by the fixtures
nodesize = struct.unpack_from('<I', sb, 0x94)[0]
csum_type = struct.unpack_from('<H', sb, 0xc4)[0]
sel = {4096: 0, 16384: 1, 65536: 2}.get(nodesize, 1) + 3 * csum_type
size = os.path.getsize(img)
n = 0
leaf_types = {24, 84, 96, 12, 13, 156, 144}
for off in range(0, size, nodesize):
    f.seek(off + 32); head = f.read(16)
    if head != fsid:
        continue
    f.seek(off); b = f.read(nodesize)
    open(os.path.join(corpus, 'tree_block', f'{tag}-{off}'), 'wb').write(bytes([sel]) + b)
    n += 1
    if b[100] == 0:
        nr = struct.unpack_from('<I', b, 96)[0]
        for i in range(min(nr, (nodesize - 101) // 25)):
            it = 101 + 25 * i
            objid, typ, koff, doff, dsize = struct.unpack_from('<QBQII', b, it)
            body = b[101 + doff:101 + doff + dsize]
            if typ in leaf_types:
                open(os.path.join(corpus, 'dir_names', f'{tag}-{off}-{i}'), 'wb').write(struct.pack('<Q', koff) + body)
            if typ == 228:
                open(os.path.join(corpus, 'chunk_map', f'{tag}-{off}-{i}'), 'wb').write(body)
print(f'{tag}: {n} tree blocks')
PY
    done
done
