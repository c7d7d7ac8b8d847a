//! Where tree blocks and data extents go: the block groups, what is
//! allocated, pinned and held, the superblock stripes never used, new
//! chunks when the groups are full, and the queue of extent-tree changes
//! ("delayed refs") that allocating and freeing tree blocks make.
//!
//! Free space source of truth: at open, the extent tree (block group ranges
//! minus EXTENT_ITEM / METADATA_ITEM ranges). The free space tree is then
//! *recomputed* for each changed block group from that in-memory map rather
//! than edited incrementally: simpler, and correct by construction. Blocks the
//! last committed superblock can reach are never reused before the commit:
//! they are freed from the extent tree (so the new free space tree shows them
//! free, as the kernel's does) but kept `pinned` in memory.
//!
//! New chunks: when no block group of the needed kind has room, a chunk is
//! planned by [`crate::fs::alloc`] in the profile of the newest block group
//! of that kind, entered into the live chunk map at once (so its blocks can
//! be written), and recorded in the trees during `settle` — chunk item and
//! dev item (chunk tree, which lives in SYSTEM block groups), dev extents
//! (dev tree), block group item and free space — like the kernel's pending
//! block groups. SYSTEM chunks are never added (they would have to enter the
//! superblock's sys_chunk_array); running out of system space is an error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::error::{CorruptKind, Error, Result};
use crate::format::items;
use crate::format::*;
use crate::fs::Filesystem;
use crate::tree::block::{Expect, TreeBlock};
use crate::tree::cow::BlockStore;
use crate::tree::encode::BlockFormat;
use crate::volumes::alloc::{plan_chunk, uuid_in, ChunkPlan, DevSpace};

use super::readers::Held;

/// One block group as the allocator sees it.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) flags: u64,
    pub(crate) chunk_objectid: u64,
}

/// A queued extent-tree change for a tree block.
#[derive(Clone, Copy, Debug)]
pub(super) enum RefOp {
    Alloc { addr: u64, owner: u64, level: u8 },
    Free { addr: u64, owner: u64, level: u8 },
}

/// Allocation state and the delayed-ref queue; the `BlockStore` of every tree.
pub(crate) struct Store {
    pub(crate) fs: Filesystem,
    pub(super) fmt: BlockFormat,
    pub(super) transid: u64,
    pub(crate) groups: BTreeMap<u64, Group>,
    /// Extents the extent tree will list after the commit: start -> length.
    pub(super) allocated: BTreeMap<u64, u64>,
    /// Freed this transaction but still reachable from the committed roots.
    pub(super) pinned: BTreeMap<u64, u64>,
    /// Freed by earlier transactions of this process, kept unused while a
    /// registered reader still reads a generation that reaches them.
    pub(super) held: Held,
    /// Logical ranges holding a superblock copy on some device: never
    /// allocated, though the free space tree lists them free (as mkfs and the
    /// kernel do; readers exclude them when loading it).
    excluded: BTreeMap<u64, u64>,
    /// Block groups whose allocation changed (start addresses).
    pub(super) dirty_groups: BTreeSet<u64>,
    pub(super) log: Vec<RefOp>,
    /// Whether the block group items live in the block group tree.
    pub(super) bg_tree: bool,
    /// The devices' free space, for new chunks.
    pub(super) devs: Vec<DevSpace>,
    /// Dev items as the chunk tree holds them (bytes_used changes with new chunks).
    pub(super) dev_items: BTreeMap<u64, DevItem>,
    /// Chunks planned this transaction whose tree items are not written yet.
    pub(super) pending_chunks: Vec<ChunkPlan>,
    /// Chunks added this transaction (for the report and the proactive rule).
    pub(crate) new_chunks: Vec<(u64, u64, u64)>,
    /// Where the last allocation of each kind ended.
    hints: BTreeMap<u64, u64>,
    /// Per tree: bytes of tree blocks allocated minus freed, not yet in its
    /// root item's bytes_used.
    pub(super) used_delta: HashMap<u64, i64>,
}

fn no_space(what: &str, len: u64) -> Error {
    Error::NoSpace(format!(
        "cannot allocate {len} bytes of {what}: its block groups are full and the devices have no room for another chunk; nothing of this transaction was committed"
    ))
}

impl Store {
    fn group_of(&self, addr: u64) -> Result<&Group> {
        match self.groups.range(..=addr).next_back() {
            Some((_, g)) if addr < g.start + g.len => Ok(g),
            _ => Err(Error::corrupt(CorruptKind::MissingItem, format!("logical {addr}"), "not inside any block group")),
        }
    }

    /// Whether [start, start+len) overlaps an allocated or pinned extent.
    fn busy(&self, start: u64, len: u64) -> Option<u64> {
        let end = start + len;
        for map in [&self.allocated, &self.pinned, &self.excluded, &self.held.ranges] {
            if let Some((&s, &l)) = map.range(..end).next_back() {
                if s + l > start {
                    return Some(s + l);
                }
            }
        }
        None
    }

    /// First fit of `len` bytes, `align`-aligned, in groups with `kind` flag,
    /// searching from where the last allocation of that kind ended, then
    /// from the start (like the kernel's allocation hint): without the hint,
    /// n small files would walk n extents each.
    /// Metadata (`no_stripe_cross`) never crosses a 64 KiB stripe boundary,
    /// which the kernel's tree-checker and scrub rely on.
    /// Tests: allocate from the start of every block group again, so that
    /// space freed earlier in the transaction is taken first.
    #[cfg(test)]
    pub(crate) fn restart_allocation(&mut self) {
        self.hints.clear();
    }

    fn find(&self, kind: u64, len: u64, align: u64, no_stripe_cross: bool) -> Option<u64> {
        let hint = self.hints.get(&kind).copied().unwrap_or(0);
        self.find_from(kind, len, align, no_stripe_cross, hint).or_else(|| {
            if hint > 0 {
                self.find_from(kind, len, align, no_stripe_cross, 0)
            } else {
                None
            }
        })
    }

    fn find_from(&self, kind: u64, len: u64, align: u64, no_stripe_cross: bool, from: u64) -> Option<u64> {
        for g in self.groups.values().filter(|g| g.flags & kind != 0 && g.start + g.len > from) {
            let mut pos = g.start.max(from).div_ceil(align) * align;
            while pos + len <= g.start + g.len {
                if no_stripe_cross && pos / STRIPE_LEN != (pos + len - 1) / STRIPE_LEN {
                    pos = (pos / STRIPE_LEN + 1) * STRIPE_LEN;
                    continue;
                }
                match self.busy(pos, len) {
                    None => return Some(pos),
                    Some(next) => pos = next.div_ceil(align) * align,
                }
            }
        }
        None
    }

    /// Type and profile of a new chunk for `kind`: those of the newest block
    /// group serving it (after a converting balance, the target profile).
    fn new_chunk_flags(&self, kind: u64) -> Result<u64> {
        self.groups
            .values()
            .rfind(|g| g.flags & kind != 0)
            .map(|g| g.flags & (BLOCK_GROUP_TYPE_MASK | BLOCK_GROUP_PROFILE_MASK))
            .ok_or_else(|| Error::Unsupported(format!("no block group of type {kind:#x} to take a profile from")))
    }

    /// Add a chunk for block groups of `kind` (DATA / METADATA), in the
    /// profile of the newest block group serving that kind. Ok(false) when
    /// the devices have no room.
    fn alloc_chunk(&mut self, kind: u64) -> Result<bool> {
        let flags = self.new_chunk_flags(kind)?;
        let vol = self.fs.volume();
        let logical = vol.chunks.entries().iter().map(|e| e.end()).max().unwrap_or(0);
        let Some(plan) = plan_chunk(&self.devs, logical, flags)? else { return Ok(false) };
        let info = plan.info(uuid_in(&self.devs), self.fs.sectorsize);
        vol.chunks.insert(plan.logical, info)?;
        let entry = vol.chunks.lookup(plan.logical)?;
        self.excluded.extend(super_stripes_of(vol, &entry)?);
        for &(devid, phys) in &plan.stripes {
            if let Some(d) = self.devs.iter_mut().find(|d| d.devid == devid) {
                d.extents.insert(phys, plan.stripe_size);
            }
        }
        self.groups.insert(plan.logical, Group { start: plan.logical, len: plan.length, flags, chunk_objectid: FIRST_CHUNK_TREE_OBJECTID });
        self.dirty_groups.insert(plan.logical);
        self.new_chunks.push((plan.logical, plan.length, flags));
        self.pending_chunks.push(plan);
        Ok(true)
    }

    /// Fail with ENOSPC, before anything is written, when `len` bytes of data
    /// cannot fit: free bytes of the data block groups plus the chunks the
    /// devices still have room for. (Fragmentation and metadata can still
    /// fail a write later; the commit then never happens.)
    pub(crate) fn ensure_data_space(&self, len: u64) -> Result<()> {
        self.ensure_space(len, 0)
    }

    /// [`Self::ensure_data_space`] for `data` bytes of data and `metadata`
    /// bytes of tree blocks together: each kind's block groups first, then
    /// the chunks the devices have room for, planned for data and then for
    /// metadata on the same unallocated space. (A mixed filesystem serves both
    /// from one kind of block group.)
    pub(crate) fn ensure_space(&self, data: u64, metadata: u64) -> Result<()> {
        let mixed = self.groups.values().any(|g| g.flags & BLOCK_GROUP_DATA != 0 && g.flags & BLOCK_GROUP_METADATA != 0);
        let wants: Vec<(u64, u64, &str)> = if mixed {
            vec![(BLOCK_GROUP_DATA, data.saturating_add(metadata), "data and metadata")]
        } else {
            vec![(BLOCK_GROUP_DATA, data, "data"), (BLOCK_GROUP_METADATA, metadata, "metadata")]
        };
        let mut devs = self.devs.clone();
        for (kind, len, what) in wants {
            if len == 0 {
                continue;
            }
            let mut free = 0u64;
            for g in self.groups.values().filter(|g| g.flags & kind != 0) {
                let end = g.start + g.len;
                let busy: u64 = [&self.allocated, &self.pinned, &self.excluded, &self.held.ranges]
                    .iter()
                    .map(|m| m.range(g.start..end).map(|(&s, &l)| l.min(end - s)).sum::<u64>())
                    .sum();
                free += g.len.saturating_sub(busy);
            }
            if free >= len {
                continue;
            }
            let flags = self.new_chunk_flags(kind)?;
            while free < len {
                let Some(plan) = plan_chunk(&devs, 0, flags)? else {
                    return Err(Error::NoSpace(format!(
                        "{len} bytes of {what} do not fit: {free} bytes free in the {what} block groups and on the devices; nothing of this transaction was committed"
                    )));
                };
                for &(devid, phys) in &plan.stripes {
                    if let Some(d) = devs.iter_mut().find(|d| d.devid == devid) {
                        d.extents.insert(phys, plan.stripe_size);
                    }
                }
                free += plan.length;
            }
        }
        Ok(())
    }

    /// The kernel adds a metadata chunk before the old ones are full (its
    /// reserve for the next transactions, deletes included): do the same when
    /// metadata block groups are more than 80 % used.
    pub(super) fn metadata_headroom(&mut self) -> Result<()> {
        let meta: Vec<&Group> =
            self.groups.values().filter(|g| g.flags & BLOCK_GROUP_METADATA != 0 && g.flags & BLOCK_GROUP_DATA == 0).collect();
        let total: u64 = meta.iter().map(|g| g.len).sum();
        let used: u64 = meta.iter().map(|g| self.allocated.range(g.start..g.start + g.len).map(|(_, l)| l).sum::<u64>()).sum();
        if total > 0 && used * 5 > total * 4 {
            self.alloc_chunk(BLOCK_GROUP_METADATA)?;
        }
        Ok(())
    }

    fn take(&mut self, kind: u64, start: u64, len: u64) -> Result<()> {
        self.hints.insert(kind, start + len);
        let g = self.group_of(start)?.start;
        self.allocated.insert(start, len);
        self.dirty_groups.insert(g);
        Ok(())
    }

    /// Data space: up to `len` bytes (sector multiple), the largest free run
    /// at the first fit, so large writes may get several extents.
    pub(crate) fn alloc_data(&mut self, len: u64) -> Result<(u64, u64)> {
        let ss = self.fs.sectorsize as u64;
        self.alloc_data_min(len, ss)
    }

    /// Data space of exactly `len` bytes in one run (a compressed extent);
    /// `NoSpace` when there is no such run.
    pub(crate) fn alloc_data_exact(&mut self, len: u64) -> Result<u64> {
        self.alloc_data_min(len, len).map(|(pos, _)| pos)
    }

    /// [`Self::alloc_data`], halving no further than `min` bytes.
    fn alloc_data_min(&mut self, len: u64, min: u64) -> Result<(u64, u64)> {
        let ss = self.fs.sectorsize as u64;
        // Try the whole length, then a new chunk, then halves down to one
        // sector (the kernel's find_free_extent loop and its caller).
        let mut want = len;
        let mut chunk_tried = false;
        loop {
            if let Some(pos) = self.find(BLOCK_GROUP_DATA, want, ss, false) {
                self.take(BLOCK_GROUP_DATA, pos, want)?;
                return Ok((pos, want));
            }
            if !chunk_tried {
                chunk_tried = true;
                if self.alloc_chunk(BLOCK_GROUP_DATA)? {
                    continue;
                }
            }
            if want <= min.max(ss) {
                // Space held for readers that may have gone since.
                if self.release_held()? {
                    want = len;
                    chunk_tried = true;
                    continue;
                }
                return Err(no_space("data", len));
            }
            want = ((want / 2).div_ceil(ss) * ss).max(min);
        }
    }

    /// Ask again which readers remain and stop holding what none of them can
    /// reach. Whether anything was let go.
    fn release_held(&mut self) -> Result<bool> {
        if self.held.ranges.is_empty() {
            return Ok(false);
        }
        let before = self.held.ranges.len();
        let oldest = self.fs.volume().oldest_reader(self.transid.saturating_sub(1))?;
        self.held.release(oldest);
        Ok(self.held.ranges.len() < before)
    }

    /// Forget a committed tree block whose extent item is gone (a dropped
    /// tree's): pinned until the commit, since the committed trees reach it.
    pub(crate) fn release_tree_block(&mut self, addr: u64) -> Result<()> {
        self.release_data(addr)
    }

    /// Forget a data extent the extent tree no longer lists; pinned until the
    /// commit because the committed file tree may still reference it.
    pub(crate) fn release_data(&mut self, start: u64) -> Result<()> {
        if let Some(len) = self.allocated.remove(&start) {
            self.pinned.insert(start, len);
            let g = self.group_of(start)?.start;
            self.dirty_groups.insert(g);
        }
        Ok(())
    }
}

impl Store {
    /// Whether the superblock copies that the chunk mapping `entry` puts on
    /// its devices lie under logical addresses nothing uses (allocated,
    /// pinned or held): then they can be excluded, as for any chunk.
    pub(crate) fn supers_clear(&self, entry: &crate::volumes::MapEntry) -> Result<bool> {
        let units = super_stripes_of(self.fs.volume(), entry)?;
        Ok(units.iter().all(|(&s, &l)| !self.used_in(s, l)))
    }

    /// Whether anything the committed roots or this transaction reach lies
    /// in [start, start+len): allocated, pinned or held.
    pub(crate) fn used_in(&self, start: u64, len: u64) -> bool {
        let end = start.saturating_add(len);
        [&self.allocated, &self.pinned, &self.held.ranges]
            .iter()
            .any(|m| m.range(..end).next_back().is_some_and(|(&s, &l)| s.saturating_add(l) > start))
    }

    /// Whether an extent (allocated or pinned) spans `at`: a block group
    /// cannot be cut there.
    pub(crate) fn spans(&self, at: u64) -> bool {
        [&self.allocated, &self.pinned, &self.held.ranges]
            .iter()
            .any(|m| m.range(..at).next_back().is_some_and(|(&s, &l)| s.saturating_add(l) > at))
    }

    /// Keep allocations off the superblock copies of `entry` (a chunk's new
    /// mapping).
    pub(crate) fn exclude_supers_of(&mut self, entry: &crate::volumes::MapEntry) -> Result<()> {
        let units = super_stripes_of(self.fs.volume(), entry)?;
        self.excluded.extend(units);
        Ok(())
    }

    /// The allocator at the start of a transaction on `fs`: its block
    /// groups, the extents the extent tree lists, the superblock stripes,
    /// the devices (dev items and dev extents); `held` kept unused.
    pub(super) fn load(fs: Filesystem, held: Held) -> Result<Store> {
        let sb = fs.sb;
        let chunk_uuid = fs.reader.root_block(&fs.tree_root(CHUNK_TREE_OBJECTID)?)?.header.chunk_tree_uuid;
        // Every block the engine seals passes the kernel's tree-checker rules.
        let fmt =
            BlockFormat::new(sb.nodesize.get(), fs.csum, sb.metadata_fsid(), chunk_uuid)?.checked(fs.sectorsize, sb.incompat_flags.get());
        let transid = sb.generation.get() + 1;
        let bg_tree = sb.has_compat_ro(COMPAT_RO_BLOCK_GROUP_TREE);
        let ns = sb.nodesize.get() as u64;

        // Block groups.
        let bg_root = fs.tree_root(if bg_tree { BLOCK_GROUP_TREE_OBJECTID } else { EXTENT_TREE_OBJECTID })?;
        let mut groups = BTreeMap::new();
        let mut c = fs.reader.seek(&bg_root, Key::MIN)?;
        while let Some(it) = c.next_item()? {
            if it.key.item_type != BLOCK_GROUP_ITEM_KEY {
                continue;
            }
            let (bgi, _) = items::read_prefix::<BlockGroupItem>(it.data(), "block group item")?;
            groups.insert(
                it.key.objectid,
                Group { start: it.key.objectid, len: it.key.offset, flags: bgi.flags.get(), chunk_objectid: bgi.chunk_objectid.get() },
            );
        }
        // Allocated extents.
        let ext_root = fs.tree_root(EXTENT_TREE_OBJECTID)?;
        let mut allocated = BTreeMap::new();
        let mut c = fs.reader.seek(&ext_root, Key::MIN)?;
        while let Some(it) = c.next_item()? {
            match it.key.item_type {
                EXTENT_ITEM_KEY => {
                    allocated.insert(it.key.objectid, it.key.offset);
                }
                METADATA_ITEM_KEY => {
                    allocated.insert(it.key.objectid, ns);
                }
                _ => {}
            }
        }
        let excluded = super_stripes(&fs)?;
        // Devices: dev items (chunk tree) and dev extents (dev tree).
        let dev_items = fs.dev_items()?;
        let mut devs: Vec<DevSpace> = dev_items
            .iter()
            .map(|(&devid, d)| DevSpace { devid, total_bytes: d.total_bytes.get(), uuid: d.uuid, extents: BTreeMap::new() })
            .collect();
        let dev_root = fs.tree_root(DEV_TREE_OBJECTID)?;
        let mut c = fs.reader.seek(&dev_root, Key::MIN)?;
        while let Some(it) = c.next_item()? {
            if it.key.item_type != DEV_EXTENT_KEY {
                continue;
            }
            let (de, _) = items::read_prefix::<DevExtent>(it.data(), "dev extent")?;
            if let Some(d) = devs.iter_mut().find(|d| d.devid == it.key.objectid) {
                d.extents.insert(it.key.offset, de.length.get());
            }
        }
        Ok(Store {
            fs,
            fmt,
            transid,
            groups,
            allocated,
            pinned: BTreeMap::new(),
            held,
            excluded,
            dirty_groups: BTreeSet::new(),
            log: Vec::new(),
            bg_tree,
            devs,
            dev_items,
            pending_chunks: Vec::new(),
            new_chunks: Vec::new(),
            hints: BTreeMap::new(),
            used_delta: HashMap::new(),
        })
    }
}

impl BlockStore for Store {
    fn format(&self) -> &BlockFormat {
        &self.fmt
    }

    fn transid(&self) -> u64 {
        self.transid
    }

    fn read(&self, logical: u64, expect: Expect) -> Result<Arc<TreeBlock>> {
        self.fs.reader.read_block(logical, expect, None)
    }

    fn alloc(&mut self, owner: u64, level: u8) -> Result<u64> {
        let ns = self.fmt.nodesize as u64;
        // The chunk tree lives in SYSTEM block groups.
        let (kind, what) =
            if owner == CHUNK_TREE_OBJECTID { (BLOCK_GROUP_SYSTEM, "system metadata") } else { (BLOCK_GROUP_METADATA, "metadata") };
        let mut pos = self.find(kind, ns, ns, true);
        if pos.is_none() && kind == BLOCK_GROUP_METADATA && self.alloc_chunk(kind)? {
            pos = self.find(kind, ns, ns, true);
        }
        if pos.is_none() && self.release_held()? {
            pos = self.find(kind, ns, ns, true);
        }
        let pos = pos.ok_or_else(|| no_space(what, ns))?;
        self.take(kind, pos, ns)?;
        self.log.push(RefOp::Alloc { addr: pos, owner, level });
        *self.used_delta.entry(owner).or_default() += ns as i64;
        Ok(pos)
    }

    fn free(&mut self, logical: u64, owner: u64, level: u8, generation: u64) -> Result<()> {
        *self.used_delta.entry(owner).or_default() -= self.fmt.nodesize as i64;
        if let Some(len) = self.allocated.remove(&logical) {
            if generation < self.transid {
                self.pinned.insert(logical, len);
            }
            let g = self.group_of(logical)?.start;
            self.dirty_groups.insert(g);
        }
        self.log.push(RefOp::Free { addr: logical, owner, level });
        Ok(())
    }
}

/// The logical stripe units that contain a superblock copy, per chunk (the
/// kernel's exclude_super_stripes via btrfs_rmap_block).
fn super_stripes(fs: &Filesystem) -> Result<BTreeMap<u64, u64>> {
    let vol = fs.volume();
    let mut out = BTreeMap::new();
    for e in vol.chunks.entries() {
        out.extend(super_stripes_of(vol, &e)?);
    }
    Ok(out)
}

fn super_stripes_of(vol: &crate::volumes::Volume, e: &crate::volumes::MapEntry) -> Result<BTreeMap<u64, u64>> {
    use crate::format::types::Profile;
    let mut out = BTreeMap::new();
    let c = &e.chunk;
    let n = c.stripes.len() as u64;
    let sl = c.stripe_len.max(1);
    let sub = (c.sub_stripes as u64).max(1);
    let (stripe_size, factor) = match e.profile {
        Profile::Raid0 => (c.length / n.max(1), n),
        Profile::Raid10 => (c.length / (n / sub).max(1), n / sub),
        Profile::Raid5 | Profile::Raid6 => {
            return Err(Error::Unsupported("writing filesystems with RAID5/6 chunks".into()));
        }
        _ => (c.length, 1),
    };
    for (i, st) in c.stripes.iter().enumerate() {
        let Some(dev) = vol.devices.get(&st.devid) else { continue };
        for &off in SUPER_MIRROR_OFFSETS.iter() {
            if off + SUPER_INFO_SIZE as u64 > dev.size || off < st.offset || off >= st.offset + stripe_size {
                continue;
            }
            let stripe_nr = (off - st.offset) / sl;
            let idx = match e.profile {
                Profile::Raid0 => i as u64,
                Profile::Raid10 => i as u64 / sub,
                _ => 0,
            };
            let logical = e.logical + (stripe_nr * factor + idx) * sl;
            out.insert(logical, sl);
        }
    }
    Ok(out)
}
