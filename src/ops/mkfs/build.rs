//! Reserve, then write: size every tree, hand out addresses, build and write
//! the blocks, then the superblocks.

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
use crate::format::Profile;
use crate::ops::rootdir::{self, DataSink, Scan};
use crate::tree::builder::{count_blocks, BlockParams, TreeItem};
use crate::volumes::alloc::ChunkPlan;
use crate::volumes::create::{ChunkWriter, NewImages};

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
struct MetaAlloc {
    /// (start, end) of each chunk of one kind.
    pub(super) chunks: Vec<(u64, u64)>,
    pub(super) current: usize,
    pub(super) next: u64,
    pub(super) nodesize: u64,
}

impl MetaAlloc {
    fn new(chunks: Vec<(u64, u64)>, nodesize: u64) -> Self {
        let next = chunks.first().map(|c| c.0).unwrap_or(0);
        MetaAlloc { chunks, current: 0, next, nodesize }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let c =
                self.chunks.get(self.current).ok_or_else(|| Error::Invalid("metadata chunks are full (internal sizing error)".into()))?;
            if self.next + self.nodesize <= c.1 {
                out.push(self.next);
                self.next += self.nodesize;
            } else {
                self.current += 1;
                if let Some(c) = self.chunks.get(self.current) {
                    self.next = c.0;
                }
            }
        }
        Ok(out)
    }
}

type BuildResult = (u64, Vec<u64>, Vec<String>);

pub(super) fn build_and_write(ctx: &Ctx<'_>, devs: &NewImages, scan: Option<&Scan>) -> Result<BuildResult> {
    let opts = ctx.opts;
    let nodesize = opts.nodesize;
    let features = opts.features;
    let writer = ChunkWriter { devs, map: ctx.chunks.iter().map(map_entry).collect() };
    let mut warnings = Vec::new();

    // ---- file data ----
    let (fs_trees, data_extent_items, csum_items, data_extents) = match scan {
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
            (r.fs_trees, r.extent_items, r.csum_items, r.extents)
        }
        None => {
            let items = vec![
                TreeItem::new(key(256, INODE_ITEM_KEY, 0), dir_inode(ctx.now, ctx.now)),
                TreeItem::new(key(256, INODE_REF_KEY, 256), inode_ref(256, 0, b"..")?),
            ];
            (vec![(FS_TREE_OBJECTID, items)], Vec::new(), Vec::new(), Vec::new())
        }
    };
    let fs_tree_ids: Vec<TreeId> = fs_trees.iter().map(|(id, _)| TreeId::Fs(*id)).collect();
    let fs_items_of = |id: u64| fs_trees.iter().find(|t| t.0 == id).map(|t| t.1.as_slice()).unwrap_or_default();

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
    let root_tree_items = |built: &std::collections::HashMap<TreeId, crate::tree::builder::BuiltTree>, extent: (u64, u8, u64)| {
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
    // Trees in block layout order; the chunk tree lives in the system chunk.
    let mut meta_trees = vec![TreeId::Root, TreeId::Extent, TreeId::Dev];
    meta_trees.extend(fs_tree_ids.iter().copied());
    meta_trees.extend([TreeId::Csum, TreeId::Uuid, TreeId::DataReloc]);
    if features.free_space_tree {
        meta_trees.push(TreeId::FreeSpace);
    }
    if features.block_group_tree {
        meta_trees.push(TreeId::BlockGroup);
    }
    let sizes_of = |items: &[TreeItem]| items.iter().map(|i| i.data.len()).collect::<Vec<_>>();
    let fixed_count = |t: TreeId| -> Result<usize> {
        match t {
            TreeId::Chunk => count_blocks(&sizes_of(&chunk_tree), nodesize),
            TreeId::Dev => count_blocks(&sizes_of(&dev_tree), nodesize),
            TreeId::Fs(id) => count_blocks(&sizes_of(fs_items_of(id)), nodesize),
            TreeId::Csum => count_blocks(&sizes_of(&csum_items), nodesize),
            TreeId::Uuid => count_blocks(&sizes_of(&uuid_tree), nodesize),
            TreeId::DataReloc => count_blocks(&sizes_of(&data_reloc_tree), nodesize),
            // Root tree: one root item per tree plus the "default" dir entries; sizes are fixed.
            TreeId::Root => count_blocks(&sizes_of(&root_tree_items(&std::collections::HashMap::new(), (0, 0, 0))?), nodesize),
            _ => Ok(1),
        }
    };

    let sys_chunks: Vec<(u64, u64)> =
        ctx.chunks.iter().filter(|c| c.flags & BLOCK_GROUP_SYSTEM != 0).map(|c| (c.logical, c.logical + c.length)).collect();
    let meta_chunks: Vec<(u64, u64)> =
        ctx.chunks.iter().filter(|c| c.flags & BLOCK_GROUP_METADATA != 0).map(|c| (c.logical, c.logical + c.length)).collect();

    // ---- fixed point: block counts of the extent, free space and block group trees ----
    let mut counts: std::collections::HashMap<TreeId, usize> = std::collections::HashMap::new();
    for &t in meta_trees.iter().chain([TreeId::Chunk].iter()) {
        counts.insert(t, fixed_count(t)?);
    }
    let mut iterations = 0;
    let (addrs, extent_tree, fst_tree, bg_items, chunk_used) = loop {
        iterations += 1;
        if iterations > 32 {
            return Err(Error::Invalid("tree sizes do not settle (internal error)".into()));
        }
        let mut addrs: Vec<(TreeId, Vec<u64>)> = Vec::new();
        let mut sys = MetaAlloc::new(sys_chunks.clone(), nodesize as u64);
        addrs.push((TreeId::Chunk, sys.take(counts[&TreeId::Chunk])?));
        let mut meta = MetaAlloc::new(meta_chunks.clone(), nodesize as u64);
        for &t in &meta_trees {
            addrs.push((t, meta.take(counts[&t])?));
        }
        // Used bytes per chunk.
        let mut used: Vec<u64> = vec![0; ctx.chunks.len()];
        let chunk_of = |a: u64| ctx.chunks.iter().position(|c| c.logical <= a && a < c.logical + c.length);
        for (_, list) in &addrs {
            for &a in list {
                if let Some(i) = chunk_of(a) {
                    used[i] += nodesize as u64;
                }
            }
        }
        for &(a, len) in &data_extents {
            if let Some(i) = chunk_of(a) {
                used[i] += len;
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
        let mut ext = Vec::new();
        if !features.block_group_tree {
            ext.extend(bg_items.iter().cloned());
        }
        for (t, list) in &addrs {
            for &a in list {
                // Skinny metadata: the key offset is the block's level, filled in below.
                ext.push(TreeItem::new(key(a, METADATA_ITEM_KEY, 0), metadata_extent_item(t.objectid())?));
            }
        }
        ext.extend(data_extent_items.iter().cloned());
        // Free space: everything allocated sits at the start of each chunk, except
        // data, which may leave unused tails where a compressed extent did not fit.
        let mut fst = Vec::new();
        if features.free_space_tree {
            for (ci, c) in ctx.chunks.iter().enumerate() {
                let mut taken: Vec<(u64, u64)> = Vec::new();
                for (_, list) in &addrs {
                    taken.extend(list.iter().filter(|&&a| chunk_of(a) == Some(ci)).map(|&a| (a, nodesize as u64)));
                }
                taken.extend(data_extents.iter().filter(|e| chunk_of(e.0) == Some(ci)).copied());
                taken.sort();
                let mut free = Vec::new();
                let mut pos = c.logical;
                for (a, l) in taken {
                    if a > pos {
                        free.push((pos, a - pos));
                    }
                    pos = pos.max(a + l);
                }
                if pos < c.logical + c.length {
                    free.push((pos, c.logical + c.length - pos));
                }
                let info = encode::free_space_info(free.len() as u32, 0);
                fst.push(TreeItem::new(key(c.logical, FREE_SPACE_INFO_KEY, c.length), info));
                for (s, l) in free {
                    fst.push(TreeItem::new(key(s, FREE_SPACE_EXTENT_KEY, l), Vec::new()));
                }
            }
        }
        let mut new_counts = counts.clone();
        new_counts.insert(TreeId::Extent, count_blocks(&sizes_of(&ext), nodesize)?);
        if features.free_space_tree {
            new_counts.insert(TreeId::FreeSpace, count_blocks(&sizes_of(&fst), nodesize)?);
        }
        if features.block_group_tree {
            new_counts.insert(TreeId::BlockGroup, count_blocks(&sizes_of(&bg_items), nodesize)?);
        }
        if new_counts == counts {
            break (addrs, ext, fst, bg_items, used);
        }
        counts = new_counts;
    };

    // ---- build every tree ----
    // Every block mkfs seals passes the kernel's tree-checker rules (the
    // incompat bits they look at: skinny metadata, never mixed groups).
    let format = crate::tree::encode::BlockFormat::new(nodesize, opts.csum, ctx.fsid, ctx.chunk_uuid)?
        .checked(opts.sectorsize, INCOMPAT_MIXED_BACKREF | INCOMPAT_EXTENDED_IREF | INCOMPAT_SKINNY_METADATA);
    let params = |owner: u64| BlockParams { format, generation: GENERATION, owner };
    let addr_of = |t: TreeId| addrs.iter().find(|a| a.0 == t).map(|a| a.1.clone()).unwrap_or_default();
    let mut built: std::collections::HashMap<TreeId, crate::tree::builder::BuiltTree> = std::collections::HashMap::new();
    // Each tree's blocks go to the images as they are made and only their
    // addresses and levels are kept: holding every block of every tree until
    // the end doubled the peak memory of a large --rootdir. Nothing is
    // reachable before the superblocks, written last after a flush.
    let write_out = |items: &[TreeItem], params: &BlockParams, addrs: &[u64]| -> Result<crate::tree::builder::BuiltTree> {
        let mut blocks = Vec::new();
        let (root, level) = crate::tree::builder::build_tree_into(items, params, addrs, &mut |a, l, bytes| {
            writer.write(a, &bytes)?;
            blocks.push((a, l, Vec::new()));
            Ok(())
        })?;
        Ok(crate::tree::builder::BuiltTree { root, level, blocks })
    };
    let mut simple: Vec<(TreeId, &[TreeItem])> = vec![(TreeId::Chunk, &chunk_tree), (TreeId::Dev, &dev_tree)];
    simple.extend(fs_trees.iter().map(|(id, items)| (TreeId::Fs(*id), items.as_slice())));
    simple.extend([
        (TreeId::Csum, csum_items.as_slice()),
        (TreeId::Uuid, &uuid_tree),
        (TreeId::DataReloc, &data_reloc_tree),
        (TreeId::FreeSpace, &fst_tree),
        (TreeId::BlockGroup, &bg_items),
    ]);
    for (t, items) in simple {
        if (t == TreeId::FreeSpace && !features.free_space_tree) || (t == TreeId::BlockGroup && !features.block_group_tree) {
            continue;
        }
        built.insert(t, write_out(items, &params(t.objectid()), &addr_of(t))?);
    }
    // Levels of every block, for the skinny METADATA_ITEM offsets. Root and extent
    // trees: their levels follow from their (already planned) shapes.
    let root_plan = {
        let probe = root_tree_items(&built, (0, 0, 0))?;
        crate::tree::builder::plan_tree(&sizes_of(&probe), nodesize)?
    };
    if root_plan.block_count() != counts[&TreeId::Root] {
        return Err(Error::Invalid("root tree size estimate was wrong (internal error)".into()));
    }
    let ext_plan = crate::tree::builder::plan_tree(&sizes_of(&extent_tree), nodesize)?;
    let mut levels: std::collections::HashMap<u64, u8> = std::collections::HashMap::new();
    for b in built.values() {
        for (a, l, _) in &b.blocks {
            levels.insert(*a, *l);
        }
    }
    let plan_levels = |plan: &crate::tree::builder::TreePlan, list: &[u64], levels: &mut std::collections::HashMap<u64, u8>| {
        let mut i = 0;
        for _ in &plan.leaves {
            if let Some(&a) = list.get(i) {
                levels.insert(a, 0);
            }
            i += 1;
        }
        for (lvl, nodes) in plan.nodes.iter().enumerate() {
            for _ in nodes {
                if let Some(&a) = list.get(i) {
                    levels.insert(a, lvl as u8 + 1);
                }
                i += 1;
            }
        }
    };
    plan_levels(&root_plan, &addr_of(TreeId::Root), &mut levels);
    plan_levels(&ext_plan, &addr_of(TreeId::Extent), &mut levels);
    let mut extent_tree = extent_tree;
    for it in extent_tree.iter_mut() {
        if it.key.item_type == METADATA_ITEM_KEY {
            it.key.offset = levels.get(&it.key.objectid).copied().unwrap_or(0) as u64;
        }
    }
    extent_tree.sort_by_key(|i| i.key);
    let ext_built = write_out(&extent_tree, &params(EXTENT_TREE_OBJECTID), &addr_of(TreeId::Extent))?;
    let ext_info = (ext_built.root, ext_built.level, ext_built.blocks.len() as u64 * nodesize as u64);
    built.insert(TreeId::Extent, ext_built);
    let root_items = root_tree_items(&built, ext_info)?;
    built.insert(TreeId::Root, write_out(&root_items, &params(ROOT_TREE_OBJECTID), &addr_of(TreeId::Root))?);

    // ---- every tree block is written: sync, then superblocks ----
    devs.sync()?;

    let bytes_used: u64 = chunk_used.iter().sum();
    let get = |t: TreeId| built.get(&t).map(|b| (b.root, b.level)).unwrap_or((0, 0));
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
