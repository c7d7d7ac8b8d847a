//! Write the data, then the trees, then the superblocks. The subvolume and
//! csum trees are written leaf by leaf as their sorted items stream in,
//! taking metadata addresses in order; the small trees are sized first and
//! given addresses (the extent, free space and block group trees by a fixed
//! point, as they describe the blocks themselves), then built.

use std::fs::File;

use zerocopy::{FromZeros, IntoBytes};

use super::items::{
    chunk_info, dir_inode, inode_ref, key, map_entry, metadata_extent_item, root_item, root_ref, subvol_root_item, uuid_item, TreeId,
    GENERATION,
};
use super::options::MkfsOptions;
use crate::error::{Error, Result};
use crate::format::compress::Compression;
use crate::format::encode;
use crate::format::items::{name_hash, BlockGroupInfo, DevExtentInfo, DirEntry};
use crate::format::ondisk::*;
use crate::format::superblock::{seal_super, BackupTrees, TreeRootRef};
use crate::format::Key;
use crate::format::Profile;
use crate::ops::rootdir::{self, DataSink, Scan};
use crate::ops::rootdir::{data_extent_item, DataExtent, DataResult};
use crate::tree::builder::{
    block_levels, build_tree_into, count_blocks, BlockOut, BlockParams, GivenAddrs, LeafStream, PlacedTree, TreeItem,
};
use crate::volumes::alloc::ChunkPlan;
use crate::volumes::create::{ChunkWriter, NewImages};
use std::collections::HashMap;

pub(super) struct Ctx<'a> {
    pub(super) opts: &'a MkfsOptions,
    pub(super) fsid: [u8; 16],
    pub(super) chunk_uuid: [u8; 16],
    pub(super) fs_uuid: [u8; 16],
    pub(super) dev_uuids: Vec<[u8; 16]>,
    pub(super) dev_sizes: Vec<u64>,
    pub(super) chunks: Vec<ChunkPlan>,
    pub(super) now: (u64, u32),
    /// The `--subvol` subvolumes and their UUIDs.
    pub(super) subvols: Vec<(rootdir::ScanSubvol, [u8; 16])>,
}

struct DataAlloc<'a> {
    pub(super) writer: &'a ChunkWriter<'a>,
    /// (logical start, end, next free) of each data chunk.
    pub(super) chunks: Vec<(u64, u64, u64)>,
    pub(super) current: usize,
}

impl DataSink for DataAlloc<'_> {
    fn reserve(&mut self, len: u64, whole: bool) -> Result<(u64, u64)> {
        while let Some(c) = self.chunks.get_mut(self.current) {
            let free = c.1 - c.2;
            if free >= len || (!whole && free > 0) {
                let n = len.min(free);
                let at = c.2;
                c.2 += n;
                return Ok((at, n));
            }
            self.current += 1;
        }
        Err(Error::Invalid("data chunks are full (internal sizing error)".into()))
    }

    fn write(&mut self, logical: u64, data: &[u8]) -> Result<()> {
        self.writer.write_from(logical, data, Some(None))
    }

    fn write_copy(&mut self, logical: u64, data: &[u8], from: (&File, u64, u64)) -> Result<()> {
        self.writer.write_from(logical, data, Some(Some(from)))
    }
}

/// Hands out tree block addresses in order, filling one chunk after another.
#[derive(Clone)]
struct MetaAlloc {
    /// (start, end) of each chunk of one kind.
    chunks: Vec<(u64, u64)>,
    current: usize,
    next: u64,
    nodesize: u64,
}

impl MetaAlloc {
    fn new(chunks: Vec<(u64, u64)>, nodesize: u64) -> Self {
        let next = chunks.first().map(|c| c.0).unwrap_or(0);
        MetaAlloc { chunks, current: 0, next, nodesize }
    }

    fn take1(&mut self) -> Result<u64> {
        loop {
            let c =
                self.chunks.get(self.current).ok_or_else(|| Error::Invalid("metadata chunks are full (internal sizing error)".into()))?;
            if self.next + self.nodesize <= c.1 {
                self.next += self.nodesize;
                return Ok(self.next - self.nodesize);
            }
            self.current += 1;
            if let Some(c) = self.chunks.get(self.current) {
                self.next = c.0;
            }
        }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u64>> {
        (0..n).map(|_| self.take1()).collect()
    }
}

/// Tree blocks to the images, at addresses handed out as they are sealed.
struct MetaOut<'a> {
    alloc: &'a mut MetaAlloc,
    writer: &'a ChunkWriter<'a>,
}

impl BlockOut for MetaOut<'_> {
    fn alloc(&mut self) -> Result<u64> {
        self.alloc.take1()
    }
    fn write(&mut self, addr: u64, _level: u8, bytes: Vec<u8>) -> Result<()> {
        self.writer.write(addr, &bytes)
    }
}

/// The subvolume trees (tree id and where its blocks went) from their
/// sorted items, one after another, and then the csum tree: each leaf
/// written as it fills. With [`crate::tree::builder::CountBlocks`] this only
/// counts (mkfs --shrink sizing the metadata).
pub(super) fn stream_trees(
    scan: &Scan,
    data: &DataResult,
    params: &dyn Fn(u64) -> BlockParams,
    out: &mut dyn BlockOut,
) -> Result<(Vec<(u64, PlacedTree)>, PlacedTree)> {
    let mut items = scan.fs_items(data)?;
    let mut done = Vec::new();
    let mut cur: Option<(u64, LeafStream)> = None;
    while let Some((tree, k, v)) = items.next_item()? {
        if cur.as_ref().is_none_or(|c| c.0 != tree) {
            if let Some((id, t)) = cur.take() {
                done.push((id, t.finish(out)?));
            }
            cur = Some((tree, LeafStream::new(params(tree))));
        }
        if let Some((_, t)) = cur.as_mut() {
            t.push(k, v, out)?;
        }
    }
    if let Some((id, t)) = cur.take() {
        done.push((id, t.finish(out)?));
    }
    let mut csum = LeafStream::new(params(CSUM_TREE_OBJECTID));
    let mut csums = data.csum_items();
    while let Some((k, v)) = csums.next_item()? {
        csum.push(k, v, out)?;
    }
    Ok((done, csum.finish(out)?))
}

/// One item of the extent tree: a block group (its chunk's index), a tree
/// block (skinny METADATA_ITEM: address, owner) or a data extent.
#[derive(Clone, Copy)]
enum ExtentEntry {
    BlockGroup(usize),
    Block(u64, u64),
    Data(DataExtent),
}

/// The free ranges of a chunk starting at `start`, from its used ranges
/// given in address order (data extents, or tree blocks).
struct Gaps {
    pos: u64,
    free: Vec<(u64, u64)>,
}

impl Gaps {
    fn new(start: u64) -> Self {
        Gaps { pos: start, free: Vec::new() }
    }

    fn used(&mut self, at: u64, len: u64) {
        if at > self.pos {
            self.free.push((self.pos, at - self.pos));
        }
        self.pos = self.pos.max(at + len);
    }

    /// The free ranges, the chunk ending at `end`.
    fn finish(mut self, end: u64) -> Vec<(u64, u64)> {
        if self.pos < end {
            self.free.push((self.pos, end - self.pos));
        }
        self.free
    }
}

/// Every item of the extent tree in key order, merged from three sorted
/// sources: the block groups (when the extent tree holds them), the tree
/// blocks (address, owner; sorted) and the data extents (in address order
/// from the data pass). A block's key offset (its level) is 0 here:
/// addresses are unique, so the order does not depend on it.
fn for_each_extent_item(
    chunks: &[ChunkPlan],
    block_groups: bool,
    blocks: &[(u64, u64)],
    data: Option<&DataResult>,
    f: &mut dyn FnMut(Key, ExtentEntry) -> Result<()>,
) -> Result<()> {
    let (mut ci, mut bi) = (0usize, 0usize);
    let mut extents = data.map(DataResult::data_extents);
    let mut next_data = match extents.as_mut() {
        Some(e) => e.next_extent()?,
        None => None,
    };
    loop {
        let bg = chunks.get(ci).filter(|_| block_groups).map(|c| key(c.logical, BLOCK_GROUP_ITEM_KEY, c.length));
        let block = blocks.get(bi).map(|b| key(b.0, METADATA_ITEM_KEY, 0));
        let extent = next_data.map(|e| key(e.logical, EXTENT_ITEM_KEY, e.disk_len));
        let Some(least) = [bg, block, extent].into_iter().flatten().min() else { return Ok(()) };
        if Some(least) == bg {
            f(least, ExtentEntry::BlockGroup(ci))?;
            ci += 1;
        } else if let (Some(b), true) = (blocks.get(bi), Some(least) == block) {
            f(least, ExtentEntry::Block(b.0, b.1))?;
            bi += 1;
        } else if let Some(e) = next_data.take() {
            f(least, ExtentEntry::Data(e))?;
            next_data = match extents.as_mut() {
                Some(x) => x.next_extent()?,
                None => None,
            };
        }
    }
}

type BuildResult = (u64, Vec<u64>, Vec<String>);

pub(super) fn build_and_write(ctx: &Ctx<'_>, devs: &NewImages, scan: Option<&Scan>) -> Result<BuildResult> {
    let opts = ctx.opts;
    let nodesize = opts.nodesize;
    let features = opts.features;
    let writer = ChunkWriter { devs, map: ctx.chunks.iter().map(map_entry).collect() };
    let mut warnings = Vec::new();
    // Every block mkfs seals passes the kernel's tree-checker rules (the
    // incompat bits they look at: skinny metadata, never mixed groups).
    let format = crate::tree::encode::BlockFormat::new(nodesize, opts.csum, ctx.fsid, ctx.chunk_uuid)?
        .checked(opts.sectorsize, INCOMPAT_MIXED_BACKREF | INCOMPAT_EXTENDED_IREF | INCOMPAT_SKINNY_METADATA);
    let params = |owner: u64| BlockParams { format, generation: GENERATION, owner };
    let sys_chunks: Vec<(u64, u64)> =
        ctx.chunks.iter().filter(|c| c.flags & BLOCK_GROUP_SYSTEM != 0).map(|c| (c.logical, c.logical + c.length)).collect();
    let meta_chunks: Vec<(u64, u64)> =
        ctx.chunks.iter().filter(|c| c.flags & BLOCK_GROUP_METADATA != 0).map(|c| (c.logical, c.logical + c.length)).collect();
    let mut meta = MetaAlloc::new(meta_chunks, nodesize as u64);

    // ---- fixed trees ----
    let chunk_items = |dev_used: &[u64]| -> Result<Vec<TreeItem>> {
        let mut v = Vec::new();
        for (i, size) in ctx.dev_sizes.iter().enumerate() {
            let devid = i as u64 + 1;
            v.push(TreeItem::new(
                key(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, devid),
                encode::dev_item(&dev_item(ctx, devid, *size, dev_used[i])),
            ));
        }
        for c in &ctx.chunks {
            let item = encode::chunk_item(&chunk_info(c, &ctx.dev_uuids, opts.sectorsize))?;
            v.push(TreeItem::new(key(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, c.logical), item));
        }
        Ok(v)
    };
    let mut dev_used = vec![0u64; ctx.dev_sizes.len()];
    let mut dev_tree = Vec::new();
    for i in 0..ctx.dev_sizes.len() {
        // Zeroed error counters, as the kernel creates them on first mount.
        dev_tree
            .push(TreeItem::new(key(DEV_STATS_OBJECTID, PERSISTENT_ITEM_KEY, i as u64 + 1), encode::u64_array(&[0; DEV_STAT_VALUES_MAX])));
    }
    let mut dev_extents = Vec::new();
    for c in &ctx.chunks {
        for &(devid, phys) in &c.stripes {
            dev_used[(devid - 1) as usize] += c.stripe_size;
            let de = DevExtentInfo::of_chunk(c.logical, c.stripe_size, ctx.chunk_uuid);
            dev_extents.push(TreeItem::new(key(devid, DEV_EXTENT_KEY, phys), encode::dev_extent(&de)));
        }
    }
    dev_extents.sort_by_key(|i| i.key);
    dev_tree.extend(dev_extents);
    let chunk_tree = chunk_items(&dev_used)?;

    let mut uuid_tree = vec![uuid_item(&ctx.fs_uuid, FS_TREE_OBJECTID)];
    uuid_tree.extend(ctx.subvols.iter().map(|(sv, uuid)| uuid_item(uuid, sv.id)));
    uuid_tree.sort_by_key(|i| i.key);
    let default_subvol = ctx.subvols.iter().find(|(sv, _)| sv.default).map(|(sv, _)| sv.id);
    let data_reloc_tree = vec![
        TreeItem::new(key(256, INODE_ITEM_KEY, 0), dir_inode(ctx.now, (0, 0))),
        TreeItem::new(key(256, INODE_REF_KEY, 256), inode_ref(256, 0, b"..")?),
    ];

    // The root tree needs the other roots; the extent tree needs every block's level,
    // so both come after the rest. Neither's shape depends on those values.
    let root_tree_items = |built: &HashMap<TreeId, PlacedTree>, extent: (u64, u8, u64)| {
        let bytes_of = |t: TreeId| built.get(&t).map(|b| b.blocks.len() as u64 * nodesize as u64).unwrap_or(0);
        let place = |t: TreeId| {
            let b = built.get(&t);
            (b.map(|b| b.root).unwrap_or(0), b.map(|b| b.level).unwrap_or(0), bytes_of(t))
        };
        let ri = |t: TreeId, dirid: u64, uuid: [u8; 16]| {
            let (bytenr, level, used) = place(t);
            root_item(bytenr, level, used, dirid, uuid, ctx.now, nodesize)
        };
        // "default" in the root tree directory names the subvolume mounted
        // without subvol=/subvolid=: the top level (offset -1, as mkfs.btrfs
        // writes it) unless a --subvol is the default.
        let default_location = match default_subvol {
            Some(id) => key(id, ROOT_ITEM_KEY, 0),
            None => key(FS_TREE_OBJECTID, ROOT_ITEM_KEY, u64::MAX),
        };
        let default_entry =
            DirEntry { location: default_location, transid: GENERATION, dir_type: FT_DIR, name: b"default".to_vec(), data: Vec::new() };
        let mut v = vec![
            TreeItem::new(key(EXTENT_TREE_OBJECTID, ROOT_ITEM_KEY, 0), {
                root_item(extent.0, extent.1, extent.2, 0, [0; 16], ctx.now, nodesize)
            }),
            TreeItem::new(key(DEV_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::Dev, 0, [0; 16])),
            TreeItem::new(key(FS_TREE_OBJECTID, INODE_REF_KEY, ROOT_TREE_DIR_OBJECTID), inode_ref(ROOT_TREE_DIR_OBJECTID, 0, b"default")?),
            TreeItem::new(key(FS_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::Fs(FS_TREE_OBJECTID), 256, ctx.fs_uuid)),
            TreeItem::new(key(ROOT_TREE_DIR_OBJECTID, INODE_ITEM_KEY, 0), dir_inode(ctx.now, ctx.now)),
            TreeItem::new(key(ROOT_TREE_DIR_OBJECTID, INODE_REF_KEY, ROOT_TREE_DIR_OBJECTID), inode_ref(ROOT_TREE_DIR_OBJECTID, 0, b"..")?),
            TreeItem::new(key(ROOT_TREE_DIR_OBJECTID, DIR_ITEM_KEY, name_hash(b"default")), encode::dir_item(&default_entry)?),
            TreeItem::new(key(CSUM_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::Csum, 0, [0; 16])),
            TreeItem::new(key(UUID_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::Uuid, 0, [0; 16])),
        ];
        if features.free_space_tree {
            v.push(TreeItem::new(key(FREE_SPACE_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::FreeSpace, 0, [0; 16])));
        }
        if features.block_group_tree {
            v.push(TreeItem::new(key(BLOCK_GROUP_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::BlockGroup, 0, [0; 16])));
        }
        v.push(TreeItem::new(key(DATA_RELOC_TREE_OBJECTID, ROOT_ITEM_KEY, 0), ri(TreeId::DataReloc, 256, [0; 16])));
        // Each subvolume: its root item, and the pair of refs that say where it
        // is linked (ROOT_REF under the parent, ROOT_BACKREF under the child).
        for (sv, uuid) in &ctx.subvols {
            let item = subvol_root_item(place(TreeId::Fs(sv.id)), *uuid, sv.readonly, ctx.now, nodesize);
            let r = root_ref(sv.dirid, sv.index, &sv.name)?;
            v.push(TreeItem::new(key(sv.id, ROOT_ITEM_KEY, 0), item));
            v.push(TreeItem::new(key(sv.id, ROOT_BACKREF_KEY, sv.parent), r.clone()));
            v.push(TreeItem::new(key(sv.parent, ROOT_REF_KEY, sv.id), r));
        }
        v.sort_by_key(|i| i.key);
        Ok(v)
    };
    // Blocks in mkfs.btrfs's order: the root, extent and dev trees first
    // (the root and dev trees' sizes are known now; the extent tree's first
    // block is kept here and any more it needs come last), then the
    // subvolume trees, the csum tree and the rest.
    let sizes_of = |items: &[TreeItem]| items.iter().map(|i| i.data.len()).collect::<Vec<_>>();
    let root_sizes = sizes_of(&root_tree_items(&HashMap::new(), (0, 0, 0))?);
    let root_addrs = meta.take(count_blocks(&root_sizes, nodesize)?)?;
    let ext_first = meta.take1()?;
    let dev_addrs = meta.take(count_blocks(&sizes_of(&dev_tree), nodesize)?)?;

    // ---- file data; then the subvolume trees from the sorted items and the
    // csum tree. Their blocks are written as they fill; nothing is reachable
    // before the superblocks, written last after a flush. ----
    let mut placed: HashMap<TreeId, PlacedTree> = HashMap::new();
    let mut fs_tree_ids: Vec<TreeId> = Vec::new();
    let data = match scan {
        Some(s) => {
            warnings.extend(s.warnings.iter().cloned());
            let mut alloc = DataAlloc {
                writer: &writer,
                chunks: ctx
                    .chunks
                    .iter()
                    .filter(|c| c.flags & BLOCK_GROUP_DATA != 0)
                    .map(|c| (c.logical, c.logical + c.length, c.logical))
                    .collect(),
                current: 0,
            };
            let r = rootdir::write_data(s, &mut alloc, &mut |done, total| {
                if let Some(p) = &opts.progress.0 {
                    p(done, total)
                }
            })?;
            let (fs_trees, csum) = stream_trees(s, &r, &params, &mut MetaOut { alloc: &mut meta, writer: &writer })?;
            for (id, t) in fs_trees {
                placed.insert(TreeId::Fs(id), t);
                fs_tree_ids.push(TreeId::Fs(id));
            }
            placed.insert(TreeId::Csum, csum);
            Some(r)
        }
        None => {
            let mut out = MetaOut { alloc: &mut meta, writer: &writer };
            let mut fs = LeafStream::new(params(FS_TREE_OBJECTID));
            fs.push(key(256, INODE_ITEM_KEY, 0), dir_inode(ctx.now, ctx.now), &mut out)?;
            fs.push(key(256, INODE_REF_KEY, 256), inode_ref(256, 0, b"..")?, &mut out)?;
            placed.insert(TreeId::Fs(FS_TREE_OBJECTID), fs.finish(&mut out)?);
            fs_tree_ids.push(TreeId::Fs(FS_TREE_OBJECTID));
            placed.insert(TreeId::Csum, LeafStream::new(params(CSUM_TREE_OBJECTID)).finish(&mut out)?);
            None
        }
    };
    // Every subvolume has its top directory, so every tree has items.
    let want: Vec<TreeId> = std::iter::once(FS_TREE_OBJECTID).chain(ctx.subvols.iter().map(|s| s.0.id)).map(TreeId::Fs).collect();
    if fs_tree_ids != want {
        return Err(Error::Invalid(format!("subvolume trees {fs_tree_ids:?} made, {want:?} expected (internal)")));
    }

    // The trees laid out after the streamed ones, in block layout order, and
    // then the rest of the extent tree; the chunk tree lives in the system chunk.
    let mut rest = vec![TreeId::Uuid, TreeId::DataReloc];
    if features.free_space_tree {
        rest.push(TreeId::FreeSpace);
    }
    if features.block_group_tree {
        rest.push(TreeId::BlockGroup);
    }
    // Where the fixed point starts: the trees whose items are known now, and
    // one block for the extent, free space and block group trees. (The root
    // and dev trees' addresses were taken above.)
    let fixed_count = |t: TreeId| -> Result<usize> {
        match t {
            TreeId::Chunk => count_blocks(&sizes_of(&chunk_tree), nodesize),
            TreeId::Uuid => count_blocks(&sizes_of(&uuid_tree), nodesize),
            TreeId::DataReloc => count_blocks(&sizes_of(&data_reloc_tree), nodesize),
            _ => Ok(1),
        }
    };
    let data_item_size = data_extent_item(GENERATION, 0, 0, 0)?.len();
    let meta_item_size = metadata_extent_item(0)?.len();
    let bg_item_size = encode::block_group_item(&BlockGroupInfo { used: 0, chunk_objectid: 0, flags: 0 }).len();
    // Every block of the streamed trees, with its level and owner.
    let streamed: Vec<(u64, u8, u64)> = {
        let mut v: Vec<(u64, u8, u64)> =
            placed.iter().flat_map(|(t, p)| p.blocks.iter().map(move |&(a, l)| (a, l, t.objectid()))).collect();
        v.sort_unstable();
        v
    };
    // Data chunks hold only data extents, so their usage and free space are
    // known now, from one pass over the extents in address order.
    let mut data_used = vec![0u64; ctx.chunks.len()];
    let data_free: Vec<Vec<(u64, u64)>> = {
        let mut gaps: Vec<Gaps> = ctx.chunks.iter().map(|c| Gaps::new(c.logical)).collect();
        if let Some(d) = &data {
            let mut extents = d.data_extents();
            while let Some(e) = extents.next_extent()? {
                let i = ctx.chunks.partition_point(|c| c.logical + c.length <= e.logical);
                if !ctx.chunks.get(i).is_some_and(|c| c.logical <= e.logical && c.flags & BLOCK_GROUP_DATA != 0) {
                    return Err(Error::Invalid(format!("data extent at {} outside the data chunks (internal)", e.logical)));
                }
                gaps[i].used(e.logical, e.disk_len);
                data_used[i] += e.disk_len;
            }
        }
        gaps.into_iter()
            .zip(&ctx.chunks)
            .map(|(g, c)| if c.flags & BLOCK_GROUP_DATA != 0 { g.finish(c.logical + c.length) } else { Vec::new() })
            .collect()
    };

    // ---- fixed point: block counts of the extent, free space and block group trees ----
    let mut counts: HashMap<TreeId, usize> = HashMap::new();
    for &t in rest.iter().chain([TreeId::Chunk, TreeId::Extent].iter()) {
        counts.insert(t, fixed_count(t)?);
    }
    let mut iterations = 0;
    let ext_size = |e: &ExtentEntry| match e {
        ExtentEntry::BlockGroup(_) => bg_item_size,
        ExtentEntry::Block(..) => meta_item_size,
        ExtentEntry::Data(_) => data_item_size,
    };
    let (addrs, blocks, fst_tree, bg_items, chunk_used, ext_levels) = loop {
        iterations += 1;
        if iterations > 32 {
            return Err(Error::Invalid("tree sizes do not settle (internal error)".into()));
        }
        let mut addrs: Vec<(TreeId, Vec<u64>)> = Vec::new();
        let mut sys = MetaAlloc::new(sys_chunks.clone(), nodesize as u64);
        addrs.push((TreeId::Chunk, sys.take(counts[&TreeId::Chunk])?));
        addrs.push((TreeId::Root, root_addrs.clone()));
        addrs.push((TreeId::Dev, dev_addrs.clone()));
        let mut m = meta.clone();
        for &t in &rest {
            addrs.push((t, m.take(counts[&t])?));
        }
        let mut ext = vec![ext_first];
        ext.extend(m.take(counts[&TreeId::Extent].saturating_sub(1))?);
        addrs.push((TreeId::Extent, ext));
        // Every tree block (address, owner), in address order.
        let mut blocks: Vec<(u64, u64)> = streamed.iter().map(|b| (b.0, b.2)).collect();
        blocks.extend(addrs.iter().flat_map(|(t, l)| l.iter().map(|&a| (a, t.objectid()))));
        blocks.sort_unstable();
        // Used bytes and free space per chunk: tree blocks fill metadata and
        // system chunks, data extents data chunks.
        let mut used: Vec<u64> = data_used.clone();
        let mut fst = Vec::new();
        for (i, c) in ctx.chunks.iter().enumerate() {
            let end = c.logical + c.length;
            let here = &blocks[blocks.partition_point(|b| b.0 < c.logical)..blocks.partition_point(|b| b.0 < end)];
            used[i] += here.len() as u64 * nodesize as u64;
            if !features.free_space_tree {
                continue;
            }
            let free = if c.flags & BLOCK_GROUP_DATA != 0 {
                data_free[i].clone()
            } else {
                let mut gaps = Gaps::new(c.logical);
                for &(a, _) in here {
                    gaps.used(a, nodesize as u64);
                }
                gaps.finish(end)
            };
            fst.push(TreeItem::new(key(c.logical, FREE_SPACE_INFO_KEY, c.length), encode::free_space_info(free.len() as u32, 0)));
            for (s, l) in free {
                fst.push(TreeItem::new(key(s, FREE_SPACE_EXTENT_KEY, l), Vec::new()));
            }
        }
        let bg_items: Vec<TreeItem> = ctx
            .chunks
            .iter()
            .zip(&used)
            .map(|(c, &u)| {
                let bg = BlockGroupInfo { used: u, chunk_objectid: FIRST_CHUNK_TREE_OBJECTID, flags: c.flags };
                TreeItem::new(key(c.logical, BLOCK_GROUP_ITEM_KEY, c.length), encode::block_group_item(&bg))
            })
            .collect();
        // The extent tree's shape, from its item sizes in key order.
        let mut shape = LeafStream::new(params(EXTENT_TREE_OBJECTID));
        let mut count = crate::tree::builder::CountBlocks::default();
        for_each_extent_item(&ctx.chunks, !features.block_group_tree, &blocks, data.as_ref(), &mut |k, e| {
            shape.push(k, vec![0; ext_size(&e)], &mut count)
        })?;
        let ext_levels: Vec<u8> = shape.finish(&mut count)?.blocks.into_iter().map(|b| b.1).collect();
        let mut new_counts = counts.clone();
        new_counts.insert(TreeId::Extent, count.blocks);
        if features.free_space_tree {
            new_counts.insert(TreeId::FreeSpace, count_blocks(&sizes_of(&fst), nodesize)?);
        }
        if features.block_group_tree {
            new_counts.insert(TreeId::BlockGroup, count_blocks(&sizes_of(&bg_items), nodesize)?);
        }
        if new_counts == counts {
            break (addrs, blocks, fst, bg_items, used, ext_levels);
        }
        counts = new_counts;
    };

    // ---- build the rest ----
    let addr_of = |t: TreeId| addrs.iter().find(|a| a.0 == t).map(|a| a.1.clone()).unwrap_or_default();
    let plain = |items: &[TreeItem]| items.iter().map(|i| Ok((i.key, i.data.clone()))).collect::<Vec<_>>();
    let mut write_block = |a: u64, _level: u8, bytes: Vec<u8>| writer.write(a, &bytes);
    let simple: Vec<(TreeId, &[TreeItem])> = vec![
        (TreeId::Chunk, &chunk_tree),
        (TreeId::Dev, &dev_tree),
        (TreeId::Uuid, &uuid_tree),
        (TreeId::DataReloc, &data_reloc_tree),
        (TreeId::FreeSpace, &fst_tree),
        (TreeId::BlockGroup, &bg_items),
    ];
    for (t, items) in simple {
        if (t == TreeId::FreeSpace && !features.free_space_tree) || (t == TreeId::BlockGroup && !features.block_group_tree) {
            continue;
        }
        placed.insert(t, build_tree_into(plain(items), params(t.objectid()), &addr_of(t), &mut write_block)?);
    }
    // Levels of every block, for the skinny METADATA_ITEM offsets: the
    // streamed trees' were kept, the root and extent trees' follow from
    // their (already planned) shapes.
    let mut levels: HashMap<u64, u8> = HashMap::new();
    for t in [TreeId::Chunk, TreeId::Dev, TreeId::Uuid, TreeId::DataReloc, TreeId::FreeSpace, TreeId::BlockGroup] {
        if let Some(p) = placed.get(&t) {
            levels.extend(p.blocks.iter().copied());
        }
    }
    for (t, lv) in [(TreeId::Root, block_levels(root_sizes.iter().copied(), nodesize)?), (TreeId::Extent, ext_levels)] {
        let list = addr_of(t);
        if list.len() != lv.len() {
            return Err(Error::Invalid(format!("tree {}: {} blocks planned, {} needed (internal)", t.objectid(), list.len(), lv.len())));
        }
        levels.extend(list.into_iter().zip(lv));
    }
    let level_of = |a: u64| -> Result<u8> {
        match streamed.binary_search_by_key(&a, |b| b.0) {
            Ok(i) => Ok(streamed[i].1),
            Err(_) => levels.get(&a).copied().ok_or_else(|| Error::Invalid(format!("tree block {a}: level unknown (internal)"))),
        }
    };
    let ext_addrs = addr_of(TreeId::Extent);
    let mut out = GivenAddrs::new(&ext_addrs, &mut write_block);
    let mut ext_tree = LeafStream::new(params(EXTENT_TREE_OBJECTID));
    for_each_extent_item(&ctx.chunks, !features.block_group_tree, &blocks, data.as_ref(), &mut |k, e| {
        let (k, v) = match e {
            ExtentEntry::BlockGroup(i) => (k, bg_items[i].data.clone()),
            ExtentEntry::Block(a, owner) => (key(a, METADATA_ITEM_KEY, level_of(a)? as u64), metadata_extent_item(owner)?),
            ExtentEntry::Data(d) => d.item(GENERATION)?,
        };
        ext_tree.push(k, v, &mut out)
    })?;
    let ext_built = ext_tree.finish(&mut out)?;
    out.check_all_used(EXTENT_TREE_OBJECTID, &ext_built)?;
    let ext_info = (ext_built.root, ext_built.level, ext_built.blocks.len() as u64 * nodesize as u64);
    placed.insert(TreeId::Extent, ext_built);
    let root_items = root_tree_items(&placed, ext_info)?;
    placed.insert(TreeId::Root, build_tree_into(plain(&root_items), params(ROOT_TREE_OBJECTID), &addr_of(TreeId::Root), &mut write_block)?);
    // ---- every tree block is written: sync, then superblocks ----
    devs.sync()?;

    let bytes_used: u64 = chunk_used.iter().sum();
    let get = |t: TreeId| placed.get(&t).map(|b| (b.root, b.level)).unwrap_or((0, 0));
    let (root, root_level) = get(TreeId::Root);
    let (chunk_root, chunk_level) = get(TreeId::Chunk);
    let sys_chunks: Vec<_> = ctx
        .chunks
        .iter()
        .filter(|c| c.flags & BLOCK_GROUP_SYSTEM != 0)
        .map(|c| (key(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, c.logical), chunk_info(c, &ctx.dev_uuids, opts.sectorsize)))
        .collect();
    // Refuses an array past the superblock's 2048 bytes ("system chunk array overflow").
    let sys_array = encode::sys_chunk_array(&sys_chunks)?;
    let mut incompat = INCOMPAT_MIXED_BACKREF | INCOMPAT_EXTENDED_IREF | INCOMPAT_SKINNY_METADATA;
    if features.no_holes {
        incompat |= INCOMPAT_NO_HOLES;
    }
    if nodesize > 4096 {
        incompat |= INCOMPAT_BIG_METADATA;
    }
    if ctx.chunks.iter().map(|c| c.profile).any(|p| matches!(p, Profile::Raid1C3 | Profile::Raid1C4)) {
        incompat |= INCOMPAT_RAID1C34;
    }
    if scan.is_some_and(|s| s.uses_compression(Compression::Lzo)) {
        incompat |= INCOMPAT_COMPRESS_LZO;
    }
    if scan.is_some_and(|s| s.uses_compression(Compression::Zstd)) {
        incompat |= INCOMPAT_COMPRESS_ZSTD;
    }
    // As mkfs.btrfs and `btrfs subvolume set-default` do: older kernels must
    // not mount the top level when another subvolume is the default.
    if default_subvol.is_some() {
        incompat |= INCOMPAT_DEFAULT_SUBVOL;
    }
    let mut compat_ro = 0;
    if features.free_space_tree {
        compat_ro |= COMPAT_RO_FREE_SPACE_TREE | COMPAT_RO_FREE_SPACE_TREE_VALID;
    }
    if features.block_group_tree {
        compat_ro |= COMPAT_RO_BLOCK_GROUP_TREE;
    }
    let total: u64 = ctx.dev_sizes.iter().sum();
    for (i, size) in ctx.dev_sizes.iter().enumerate() {
        let devid = i as u64 + 1;
        let mut sb = SuperBlock::new_zeroed();
        sb.fsid = ctx.fsid;
        sb.flags = SUPER_FLAG_WRITTEN.into();
        sb.magic = BTRFS_MAGIC;
        sb.generation = GENERATION.into();
        sb.root = root.into();
        sb.chunk_root = chunk_root.into();
        sb.total_bytes = total.into();
        sb.bytes_used = bytes_used.into();
        sb.root_dir_objectid = ROOT_TREE_DIR_OBJECTID.into();
        sb.num_devices = (ctx.dev_sizes.len() as u64).into();
        sb.sectorsize = opts.sectorsize.into();
        sb.nodesize = nodesize.into();
        sb.unused_leafsize = nodesize.into();
        sb.stripesize = opts.sectorsize.into();
        sb.sys_chunk_array_size = (sys_array.len() as u32).into();
        sb.chunk_root_generation = GENERATION.into();
        sb.compat_ro_flags = compat_ro.into();
        sb.incompat_flags = incompat.into();
        sb.csum_type = opts.csum.raw().into();
        sb.root_level = root_level;
        sb.chunk_root_level = chunk_level;
        sb.dev_item = dev_item(ctx, devid, *size, dev_used[i]);
        sb.label[..opts.label.len()].copy_from_slice(opts.label.as_bytes());
        // The uuid tree is complete: no rescan needed on first mount.
        sb.uuid_tree_generation = GENERATION.into();
        // metadata_uuid stays zero: it only means something with INCOMPAT_METADATA_UUID.
        sb.sys_chunk_array[..sys_array.len()].copy_from_slice(&sys_array);
        // Backup slot 0 (the first commit's), with the chunk root and sizes set above.
        let at = |t: TreeId| {
            let (bytenr, level) = get(t);
            TreeRootRef { bytenr, generation: GENERATION, level }
        };
        sb.record_backup_roots(&BackupTrees {
            tree: TreeRootRef { bytenr: root, generation: GENERATION, level: root_level },
            extent: at(TreeId::Extent),
            fs: at(TreeId::Fs(FS_TREE_OBJECTID)),
            dev: at(TreeId::Dev),
            csum: at(TreeId::Csum),
        });
        for &off in &SUPER_MIRROR_OFFSETS {
            if off + SUPER_INFO_SIZE as u64 > *size {
                continue;
            }
            sb.bytenr = off.into();
            seal_super(&mut sb, opts.csum);
            devs.write_phys(devid, off, sb.as_bytes())?;
        }
    }
    devs.sync()?;
    Ok((bytes_used, chunk_used, warnings))
}

fn dev_item(ctx: &Ctx<'_>, devid: u64, size: u64, used: u64) -> DevItem {
    DevItem {
        devid: devid.into(),
        total_bytes: size.into(),
        bytes_used: used.into(),
        io_align: ctx.opts.sectorsize.into(),
        io_width: ctx.opts.sectorsize.into(),
        sector_size: ctx.opts.sectorsize.into(),
        dev_type: 0.into(),
        generation: 0.into(),
        start_offset: 0.into(),
        dev_group: 0.into(),
        seek_speed: 0,
        bandwidth: 0,
        uuid: ctx.dev_uuids.get((devid - 1) as usize).copied().unwrap_or([0; 16]),
        fsid: ctx.fsid,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{mkfs, MkfsOptions};
    use std::path::Path;

    /// Sorting in temporary files changes nothing: with a budget small
    /// enough that every sorter and list spills many runs, the image is
    /// byte for byte the one made in memory (hard links, a subvolume, a
    /// sparse file, compressed and inline data, xattrs).
    #[test]
    fn spilled_runs_make_the_same_image() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        for i in 0..1500u32 {
            let dir = src.join(format!("d{}", i % 15));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("f{i}")), format!("{i} ").repeat((i % 700) as usize)).unwrap();
        }
        std::fs::create_dir_all(src.join("sv/in")).unwrap();
        for i in 0..40 {
            std::fs::hard_link(src.join("d3/f3"), src.join(format!("d4/link{i}"))).unwrap();
        }
        std::fs::hard_link(src.join("d5/f5"), src.join("sv/in/across")).unwrap();
        std::fs::write(src.join("sv/big"), vec![b'z'; 3 << 20]).unwrap();
        let sparse = std::fs::File::create(src.join("sv/sparse")).unwrap();
        sparse.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (8 << 20) - 3).unwrap();
        xattr::set(src.join("d1"), "user.tag", b"dir").unwrap();
        let make = |img: &Path, spill: usize| {
            let mut o = MkfsOptions::new(vec![img.to_path_buf()]);
            o.size = Some(256 << 20);
            o.rootdir = Some(src.clone());
            o.fsid = Some([7; 16]);
            o.timestamp = Some(1_700_000_000);
            o.fixed_ctime = true;
            o.subvols = vec![crate::ops::rootdir::SubvolSpec::parse("sv").unwrap()];
            o.compress_paths = vec![("sv".into(), Some((crate::format::compress::Compression::Zstd, None)))];
            o.spill_bytes = spill;
            mkfs(&o).unwrap();
            std::fs::read(img).unwrap()
        };
        // The first run may update the source's atimes (which images record).
        make(&d.path().join("warm.img"), 1 << 30);
        let whole = make(&d.path().join("a.img"), 1 << 30);
        let spilled = make(&d.path().join("b.img"), 16 << 10);
        assert!(whole == spilled, "spilling changed the image");
    }
}
