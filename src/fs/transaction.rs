//! A write transaction: copy-on-write trees, extent allocation from existing
//! block groups, extent-tree back references, block group `used`, the free
//! space tree, and a crash-safe commit.
//!
//! Model (the kernel's, simplified): every tree the transaction touches is a
//! [`CowTree`]; the [`Store`] below them hands out metadata addresses and
//! queues extent-tree reference changes ("delayed refs"). Before the commit,
//! [`Transaction::settle`] applies those changes to the extent tree, rewrites
//! the block group items and free space tree entries of every block group
//! whose allocation changed, and refreshes root items — each of which may COW
//! more blocks and queue more changes — until a fixed point.
//!
//! Free space source of truth: at open, the extent tree (block group ranges
//! minus EXTENT_ITEM / METADATA_ITEM ranges). The free space tree is then
//! *recomputed* for each changed block group from that in-memory map rather
//! than edited incrementally: simpler, and correct by construction. Blocks the
//! last committed superblock can reach are never reused before the commit:
//! they are freed from the extent tree (so the new free space tree shows them
//! free, as the kernel's does) but kept `pinned` in memory.
//!
//! Commit order: every dirty tree block to every mirror, fsync every image,
//! then the superblocks (all copies that fit, generation + 1, backup roots
//! rotated), fsync again. A crash before the superblock write leaves the old
//! superblock pointing at untouched blocks.
//!
//! Readers beside the writer: a read-only open registers the generation it
//! reads (an OFD byte-range lock, `volumes::guard::register_reader`). Space
//! a transaction freed stays unused by this process's later transactions
//! while a reader of an older generation is registered (`Held`), and a
//! writer whose process did not see what was freed since a registered
//! reader's generation waits for it, then refuses. NODATACOW overwrites are
//! copied on write while any reader is registered; a writer that overwrote in
//! place holds a mark until its commit, and a reader that comes meanwhile
//! waits for that commit (`volumes::guard::mark_in_place`).
//!
//! Free space tree bitmaps (the kernel switches fragmented groups to them)
//! are read from nowhere (the extent tree is the truth) and a changed group
//! is written back in extent form with its info flag cleared.
//!
//! New chunks: when no block group of the needed kind has room, a chunk is
//! planned by [`crate::fs::alloc`] in the profile of the newest block group
//! of that kind, entered into the live chunk map at once (so its blocks can
//! be written), and recorded in the trees during `settle` — chunk item and
//! dev item (chunk tree, which lives in SYSTEM block groups), dev extents
//! (dev tree), block group item and free space — like the kernel's pending
//! block groups. SYSTEM chunks are never added (they would have to enter the
//! superblock's sys_chunk_array); running out of system space is an error.
//!
//! Shared tree blocks (a snapshot shares the subvolume's blocks) and the
//! FULL_BACKREF blocks the kernel's balance leaves are copied the way the
//! kernel's update_ref_for_cow does it: references move between "from this
//! tree" and "from this parent block" so that every tree still using the
//! old block keeps its references (see `cow_shared`, `unshare_children`).
//!
//! Back references live inline in the extent item (type ascending, within a
//! type parent / root / hash descending, as the tree-checker wants) until it
//! would reach BTRFS_MAX_EXTENT_ITEM_SIZE; past that they are keyed items,
//! found, counted and dropped like the inline ones (`add_ref`, `drop_ref`).
//!
//! Limits (refused cleanly, image untouched): non-skinny metadata extent
//! items, filesystems without a free space tree (v1 space cache), quotas,
//! and a full device set ("no space left"). With quota groups on, a
//! commit marks their counts inconsistent for a rescan (see
//! `mark_qgroups_inconsistent`); simple quotas are refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use zerocopy::{FromZeros, IntoBytes};

use crate::error::{Error, Result};
use crate::format::items::{self, parse_extent_item, ExtentRef};
use crate::format::superblock::seal_super;
use crate::format::*;
use crate::fs::alloc::{plan_chunk, ChunkPlan, DevSpace};
use crate::fs::Filesystem;
use crate::tree::block::{Expect, TreeBlock};
use crate::tree::cow::{BlockStore, CowTree};
use crate::tree::leaf::BlockFormat;
use crate::tree::RootPtr;

/// One block group as the allocator sees it.
#[derive(Clone, Debug)]
pub struct Group {
    pub start: u64,
    pub len: u64,
    pub flags: u64,
    pub chunk_objectid: u64,
}

/// A queued extent-tree change for a tree block.
#[derive(Clone, Copy, Debug)]
enum RefOp {
    Alloc { addr: u64, owner: u64, level: u8 },
    Free { addr: u64, owner: u64, level: u8 },
}

/// Allocation state and the delayed-ref queue; the `BlockStore` of every tree.
pub struct Store {
    pub fs: Filesystem,
    fmt: BlockFormat,
    transid: u64,
    pub groups: BTreeMap<u64, Group>,
    /// Extents the extent tree will list after the commit: start -> length.
    allocated: BTreeMap<u64, u64>,
    /// Freed this transaction but still reachable from the committed roots.
    pinned: BTreeMap<u64, u64>,
    /// Freed by earlier transactions of this process, kept unused while a
    /// registered reader still reads a generation that reaches them.
    held: Held,
    /// Logical ranges holding a superblock copy on some device: never
    /// allocated, though the free space tree lists them free (as mkfs and the
    /// kernel do; readers exclude them when loading it).
    excluded: BTreeMap<u64, u64>,
    /// Block groups whose allocation changed (start addresses).
    dirty_groups: BTreeSet<u64>,
    log: Vec<RefOp>,
    /// Whether the block group items live in the block group tree.
    bg_tree: bool,
    /// The devices' free space, for new chunks.
    devs: Vec<DevSpace>,
    /// Dev items as the chunk tree holds them (bytes_used changes with new chunks).
    dev_items: BTreeMap<u64, DevItem>,
    /// Chunks planned this transaction whose tree items are not written yet.
    pending_chunks: Vec<ChunkPlan>,
    /// Chunks added this transaction (for the report and the proactive rule).
    pub new_chunks: Vec<(u64, u64, u64)>,
    /// Where the last allocation of each kind ended.
    hints: BTreeMap<u64, u64>,
    /// Per tree: bytes of tree blocks allocated minus freed, not yet in its
    /// root item's bytes_used.
    used_delta: HashMap<u64, i64>,
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
            _ => Err(Error::corrupt(format!("logical {addr}"), "not inside any block group")),
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
    fn find(&self, kind: u64, len: u64, align: u64, no_stripe_cross: bool) -> Option<u64> {
        let hint = self.hints.get(&kind).copied().unwrap_or(0);
        self.find_from(kind, len, align, no_stripe_cross, hint)
            .or_else(|| if hint > 0 { self.find_from(kind, len, align, no_stripe_cross, 0) } else { None })
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
        let info = plan.info(&self.devs, self.fs.sectorsize);
        vol.chunks.insert(plan.logical, info)?;
        let entry = vol.chunks.lookup(plan.logical)?;
        self.excluded.extend(super_stripes_of(vol, &entry)?);
        for &(devid, phys) in &plan.stripes {
            if let Some(d) = self.devs.iter_mut().find(|d| d.devid == devid) {
                d.extents.insert(phys, plan.stripe_size);
            }
        }
        self.groups.insert(
            plan.logical,
            Group { start: plan.logical, len: plan.length, flags, chunk_objectid: FIRST_CHUNK_TREE_OBJECTID },
        );
        self.dirty_groups.insert(plan.logical);
        self.new_chunks.push((plan.logical, plan.length, flags));
        self.pending_chunks.push(plan);
        Ok(true)
    }

    /// Fail with ENOSPC, before anything is written, when `len` bytes of data
    /// cannot fit: free bytes of the data block groups plus the chunks the
    /// devices still have room for. (Fragmentation and metadata can still
    /// fail a write later; the commit then never happens.)
    pub fn ensure_data_space(&self, len: u64) -> Result<()> {
        let mut free = 0u64;
        for g in self.groups.values().filter(|g| g.flags & BLOCK_GROUP_DATA != 0) {
            let end = g.start + g.len;
            let busy: u64 = [&self.allocated, &self.pinned, &self.excluded, &self.held.ranges]
                .iter()
                .map(|m| m.range(g.start..end).map(|(&s, &l)| l.min(end - s)).sum::<u64>())
                .sum();
            free += g.len.saturating_sub(busy);
        }
        if free >= len {
            return Ok(());
        }
        let flags = self.new_chunk_flags(BLOCK_GROUP_DATA)?;
        let mut devs = self.devs.clone();
        while free < len {
            let Some(plan) = plan_chunk(&devs, 0, flags)? else {
                return Err(Error::NoSpace(format!(
                    "{len} bytes of data do not fit: {free} bytes free in the data block groups and on the devices; nothing of this transaction was committed"
                )));
            };
            for &(devid, phys) in &plan.stripes {
                if let Some(d) = devs.iter_mut().find(|d| d.devid == devid) {
                    d.extents.insert(phys, plan.stripe_size);
                }
            }
            free += plan.length;
        }
        Ok(())
    }

    /// The kernel adds a metadata chunk before the old ones are full (its
    /// reserve for the next transactions, deletes included): do the same when
    /// metadata block groups are more than 80 % used.
    fn metadata_headroom(&mut self) -> Result<()> {
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
    pub fn alloc_data(&mut self, len: u64) -> Result<(u64, u64)> {
        let ss = self.fs.sectorsize as u64;
        self.alloc_data_min(len, ss)
    }

    /// Data space of exactly `len` bytes in one run (a compressed extent);
    /// `NoSpace` when there is no such run.
    pub fn alloc_data_exact(&mut self, len: u64) -> Result<u64> {
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

    /// Forget a data extent the extent tree no longer lists; pinned until the
    /// commit because the committed file tree may still reference it.
    pub fn release_data(&mut self, start: u64) -> Result<()> {
        if let Some(len) = self.allocated.remove(&start) {
            self.pinned.insert(start, len);
            let g = self.group_of(start)?.start;
            self.dirty_groups.insert(g);
        }
        Ok(())
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

/// Space freed by this process's earlier transactions that readers of older
/// generations may still be reading. A reader registers the generation it
/// reads (`volumes::guard::register_reader`); an extent freed by transaction
/// T is reachable from generations before T, so it stays unused while a
/// reader of a generation below T is registered, as the kernel keeps freed
/// extents pinned until no one can see them.
#[derive(Debug, Default)]
pub struct Held {
    /// start -> length, of every range still held.
    ranges: BTreeMap<u64, u64>,
    /// start -> the transaction that freed it.
    freed_in: BTreeMap<u64, u64>,
    /// The committed generation when this process started writing: frees
    /// before it are unknown here.
    since: Option<u64>,
}

impl Held {
    /// Keep only what a reader of generation `oldest` (None: no reader)
    /// can still reach.
    fn release(&mut self, oldest: Option<u64>) {
        let keep: BTreeMap<u64, u64> = match oldest {
            None => BTreeMap::new(),
            Some(r) => self.freed_in.iter().filter(|&(_, &t)| t > r).map(|(&s, &t)| (s, t)).collect(),
        };
        self.ranges.retain(|s, _| keep.contains_key(s));
        self.freed_in = keep;
    }
}

/// How long a writer waits for readers of generations it cannot protect.
const READER_PATIENCE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Where a transaction stands with NODATACOW overwrites in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum InPlace {
    #[default]
    Unmarked,
    /// Marked before looking for readers; nothing overwritten yet.
    Marked,
    /// Committed bytes overwritten: marked until the commit is on the images.
    Written,
}

/// A running transaction. Dropping it without [`Transaction::commit`] aborts:
/// nothing reachable from the superblock was written.
pub struct Transaction {
    pub store: Store,
    pub trees: BTreeMap<u64, CowTree>,
    /// Root items as found at open, to notice which changed.
    root_items: HashMap<u64, (Key, RootItem)>,
    /// Current time for inode stamps.
    pub now: crate::format::Timespec,
    /// Direct bios of this transaction's writes, on the devices' threads
    /// (started by the first direct write).
    pub direct: Option<crate::volumes::bio::DirectWriter>,
    /// Paths commands named inodes by, for messages: (tree, inode) -> path.
    pub names: HashMap<(u64, u64), String>,
    /// The in-place mark is held (see `volumes::guard::mark_in_place`), and
    /// whether committed bytes were overwritten under it.
    pub(crate) in_place: InPlace,
    /// Test-only switches of the direct writer (see `fs::direct`).
    #[cfg(test)]
    pub direct_no_bounce: bool,
    #[cfg(test)]
    pub direct_fail_at: Option<u64>,
}

impl Transaction {
    /// Start a transaction on a filesystem opened with `OpenOptions.writable`.
    pub fn begin(fs: Filesystem) -> Result<Transaction> {
        Transaction::begin_holding(fs, Held::default())
    }

    /// Start a transaction that keeps `held` (from this process's earlier
    /// transactions) unused as long as readers need it.
    fn begin_holding(fs: Filesystem, mut held: Held) -> Result<Transaction> {
        let sb = fs.sb;
        let committed = sb.generation.get();
        // A log tree holds what was fsynced after the last commit; the kernel
        // replays it at its next mount. Its blocks (and the data extents it
        // logged) are in no extent tree, so a commit here could allocate over
        // them, and the replay would then read whatever was written there.
        if sb.log_root.get() != 0 {
            return Err(Error::Unsupported(format!(
                "writing to a filesystem with a log tree (block {}: changes fsynced after generation {committed}, which the \
                 kernel replays at its next mount): btrs does not replay it, and a write could reuse the space it lies \
                 in; mount it with the kernel once (which replays and commits it), or drop those changes with \
                 `btrfs rescue zero-log`",
                sb.log_root.get()
            )));
        }
        let since = *held.since.get_or_insert(committed);
        // A reader of a generation older than what this process has seen
        // freed may read blocks freed by an earlier writer: wait for it.
        let started = std::time::Instant::now();
        let oldest = loop {
            let oldest = fs.volume().oldest_reader(committed)?;
            match oldest {
                Some(r) if r < since => {
                    if started.elapsed() >= READER_PATIENCE {
                        return Err(Error::Devices(format!(
                            "a reader still reads generation {r} of this filesystem (now at {committed}); writing now could \
                             overwrite what it reads: try again when it is done"
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => break oldest,
            }
        };
        held.release(oldest);
        if !sb.has_incompat(INCOMPAT_SKINNY_METADATA) {
            return Err(Error::Unsupported("writing filesystems without skinny-metadata".into()));
        }
        if !sb.has_compat_ro(COMPAT_RO_FREE_SPACE_TREE) || !sb.has_compat_ro(COMPAT_RO_FREE_SPACE_TREE_VALID) {
            return Err(Error::Unsupported("writing filesystems without a free space tree (v1 space cache)".into()));
        }
        // Simple quotas need an owner ref on every new data extent, which
        // btrs does not write.
        if sb.has_incompat(INCOMPAT_SIMPLE_QUOTA) {
            return Err(Error::Unsupported("writing filesystems with simple quotas".into()));
        }
        if sb.log_root.get() != 0 {
            return Err(Error::Unsupported("the filesystem has a log tree to replay; mount it once with the kernel".into()));
        }
        for (_, d) in fs.volume().devices.iter() {
            if !d.opened_writable()? {
                return Err(Error::Invalid("filesystem opened read-only; open with writable".into()));
            }
        }
        if !fs.volume().missing.is_empty() {
            return Err(Error::Unsupported("writing a degraded filesystem".into()));
        }
        // A write would seal a new generation over a device that lacks
        // earlier ones, and its superblock would then hide that it is stale.
        if let Some(&devid) = fs.volume().stale.keys().next() {
            let after_crash = if fs.volume().lagging.contains(&devid) { " (or --accept-lagging after a crash)" } else { "" };
            return Err(Error::Devices(format!(
                "{}; not writing: run `btrs scrub --repair` to rebuild it from the current copies first{after_crash}",
                fs.volume().stale_text(devid)
            )));
        }
        let chunk_uuid = fs.reader.root_block(&fs.tree_root(CHUNK_TREE_OBJECTID)?)?.header.chunk_tree_uuid;
        // Every block the engine seals passes the kernel's tree-checker rules.
        let fmt = BlockFormat::new(sb.nodesize.get(), fs.csum, sb.metadata_fsid(), chunk_uuid)?.checked(fs.sectorsize, sb.incompat_flags.get());
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
        let mut dev_items = BTreeMap::new();
        let chunk_root = fs.tree_root(CHUNK_TREE_OBJECTID)?;
        for (k, data) in fs.reader.range(&chunk_root, Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, 0), Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, u64::MAX))? {
            let (d, _) = items::read_prefix::<DevItem>(&data, "dev item").map_err(|e| e.within(format!("chunk tree item {k}")))?;
            dev_items.insert(k.offset, d);
        }
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
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let store = Store {
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
        };
        Ok(Transaction {
            store,
            trees: BTreeMap::new(),
            root_items: HashMap::new(),
            now: crate::format::Timespec::new(now.as_secs(), now.subsec_nanos()),
            direct: None,
            names: HashMap::new(),
            in_place: InPlace::Unmarked,
            #[cfg(test)]
            direct_no_bounce: false,
            #[cfg(test)]
            direct_fail_at: None,
        })
    }

    pub fn transid(&self) -> u64 {
        self.store.transid
    }

    /// Turn on incompat feature `flag` in the superblock this transaction
    /// commits (a feature the kernel itself turns on when first used).
    pub fn set_incompat(&mut self, flag: u64) {
        let sb = &mut self.store.fs.sb;
        sb.incompat_flags = (sb.incompat_flags.get() | flag).into();
    }

    pub fn fs(&self) -> &Filesystem {
        &self.store.fs
    }

    /// Make sure tree `id` is loaded as a CowTree.
    pub fn open_tree(&mut self, id: u64) -> Result<()> {
        if self.trees.contains_key(&id) {
            return Ok(());
        }
        // The root and chunk trees are named by the superblock, not a root item.
        let root = if id == ROOT_TREE_OBJECTID || id == CHUNK_TREE_OBJECTID {
            self.store.fs.tree_root(id)?
        } else {
            let (k, ri) = self
                .store
                .fs
                .root_item(id)?
                .ok_or_else(|| Error::NotFound(format!("tree {id} has no root item")))?;
            self.root_items.insert(id, (k, ri));
            RootPtr { bytenr: ri.bytenr.get(), level: ri.level, generation: ri.generation.get(), owner: id }
        };
        self.trees.insert(id, CowTree::new(root));
        Ok(())
    }

    /// Run `f` on tree `id` with the store.
    pub fn with_tree<T>(&mut self, id: u64, f: impl FnOnce(&mut CowTree, &mut Store) -> Result<T>) -> Result<T> {
        self.open_tree(id)?;
        let t = self.trees.get_mut(&id).ok_or_else(|| Error::Invalid(format!("tree {id} not open")))?;
        f(t, &mut self.store)
    }

    pub fn get(&mut self, tree: u64, key: Key) -> Result<Option<Vec<u8>>> {
        self.with_tree(tree, |t, s| t.get(s, key))
    }

    pub fn range(&mut self, tree: u64, min: Key, max: Key) -> Result<Vec<(Key, Vec<u8>)>> {
        self.with_tree(tree, |t, s| t.range(s, min, max))
    }

    pub fn insert(&mut self, tree: u64, key: Key, data: Vec<u8>) -> Result<()> {
        self.with_tree(tree, |t, s| t.insert(s, key, data))
    }

    pub fn put(&mut self, tree: u64, key: Key, data: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.with_tree(tree, |t, s| t.put(s, key, data))
    }

    pub fn delete(&mut self, tree: u64, key: Key) -> Result<Option<Vec<u8>>> {
        self.with_tree(tree, |t, s| t.delete(s, key))
    }

    pub fn last_le(&mut self, tree: u64, key: Key) -> Result<Option<(Key, Vec<u8>)>> {
        self.with_tree(tree, |t, s| t.last_le(s, key))
    }

    /// Add a data extent item with one inline EXTENT_DATA_REF.
    pub fn add_data_extent(&mut self, bytenr: u64, len: u64, root: u64, ino: u64, offset: u64) -> Result<()> {
        let mut body = ExtentItem { refs: 1.into(), generation: self.transid().into(), flags: EXTENT_FLAG_DATA.into() }
            .as_bytes()
            .to_vec();
        body.push(EXTENT_DATA_REF_KEY);
        body.extend_from_slice(
            ExtentDataRef { root: root.into(), objectid: ino.into(), offset: offset.into(), count: 1.into() }.as_bytes(),
        );
        self.insert(EXTENT_TREE_OBJECTID, Key::new(bytenr, EXTENT_ITEM_KEY, len), body)
    }

    /// Edit the inline refs of extent item `key`: `f` changes them and
    /// returns by how much the reference count changed. The item is deleted
    /// when no reference is left; returns whether it was.
    fn edit_extent_refs(&mut self, key: Key, f: impl FnOnce(&mut Vec<ExtentRef>) -> Result<i64>) -> Result<bool> {
        self.edit_extent_item(key, |info| f(&mut info.inline_refs))
    }

    /// Like [`Self::edit_extent_refs`], with the flags in reach too.
    fn edit_extent_item(&mut self, key: Key, f: impl FnOnce(&mut items::ExtentInfo) -> Result<i64>) -> Result<bool> {
        let at = || format!("extent {} ({})", key.objectid, if key.item_type == METADATA_ITEM_KEY { "tree block" } else { "data" });
        let body = self.get(EXTENT_TREE_OBJECTID, key)?.ok_or_else(|| Error::corrupt(at(), "no extent item"))?;
        let mut info = parse_extent_item(key, &body)?;
        let delta = f(&mut info)?;
        info.inline_refs.retain(|r| !matches!(r, ExtentRef::Data { count: 0, .. } | ExtentRef::SharedData { count: 0, .. }));
        let refs = info.refs as i64 + delta;
        if refs < 0 {
            return Err(Error::corrupt(at(), "reference count underflow"));
        }
        if refs == 0 {
            if info.inline_refs.iter().any(|r| r.count() > 0) {
                return Err(Error::corrupt(at(), "no references counted but back references left"));
            }
            self.delete(EXTENT_TREE_OBJECTID, key)?;
            return Ok(true);
        }
        info.refs = refs as u64;
        self.put(EXTENT_TREE_OBJECTID, key, info.to_bytes())?;
        Ok(false)
    }

    /// Change the count of the (root, ino, offset) data ref of extent `bytenr` by
    /// `delta`; returns true when the extent lost its last reference (deleted).
    pub fn data_ref_delta(&mut self, bytenr: u64, len: u64, root: u64, ino: u64, offset: u64, delta: i64) -> Result<bool> {
        // Leaves the kernel relocated hold their data refs by parent: turn
        // them into per-root refs first (see `unshare_children`).
        self.apply_log()?;
        let key = Key::new(bytenr, EXTENT_ITEM_KEY, len);
        let r = ExtentRef::Data { root, objectid: ino, offset, count: 0 };
        let gone = if delta >= 0 {
            self.add_ref(key, r, delta as u32)?;
            false
        } else {
            self.drop_ref(key, r, (-delta) as u32)?
        };
        if gone {
            self.store.release_data(bytenr)?;
        }
        Ok(gone)
    }

    /// The keyed item holding back reference `r` (identity only; counts
    /// ignored) of the extent at `bytenr`, and its count, if there is one.
    /// EXTENT_DATA_REF items sit at the hash of (root, objectid, offset); on a
    /// hash collision the kernel moves the later one to the next offset.
    fn find_keyed_ref(&mut self, bytenr: u64, r: &ExtentRef) -> Result<Option<(Key, u32)>> {
        let (ty, at) = r.order();
        let mut key = Key::new(bytenr, ty, at);
        loop {
            let Some(body) = self.get(EXTENT_TREE_OBJECTID, key)? else { return Ok(None) };
            let found = items::parse_keyed_ref(key, &body)?;
            let count = found.count() as u32;
            match (&found, r) {
                (ExtentRef::Data { root, objectid, offset, .. }, ExtentRef::Data { root: r0, objectid: o0, offset: f0, .. }) => {
                    if (root, objectid, offset) == (r0, o0, f0) {
                        return Ok(Some((key, count)));
                    }
                    key.offset = key.offset.checked_add(1).ok_or_else(|| Error::corrupt(format!("data extent {bytenr}"), "data ref hash chain past 2^64"))?;
                }
                _ => return Ok(Some((key, count.max(1)))),
            }
        }
    }

    /// The body of keyed back reference item `r` with count `count`.
    fn keyed_ref_body(r: &ExtentRef, count: u32) -> Vec<u8> {
        match *r {
            ExtentRef::Data { root, objectid, offset, .. } => {
                ExtentDataRef { root: root.into(), objectid: objectid.into(), offset: offset.into(), count: count.into() }.as_bytes().to_vec()
            }
            ExtentRef::SharedData { .. } => SharedDataRef { count: count.into() }.as_bytes().to_vec(),
            _ => Vec::new(),
        }
    }

    /// `n` more of back reference `r` (its count field ignored) on extent
    /// item `key`: added to the inline ref or keyed item that holds it, else a
    /// new inline ref — or, like the kernel's lookup_inline_extent_backref,
    /// a new keyed item once the extent item would reach
    /// BTRFS_MAX_EXTENT_ITEM_SIZE.
    fn add_ref(&mut self, key: Key, r: ExtentRef, n: u32) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let at = || format!("extent {} ({})", key.objectid, if key.item_type == METADATA_ITEM_KEY { "tree block" } else { "data" });
        let body = self.get(EXTENT_TREE_OBJECTID, key)?.ok_or_else(|| Error::corrupt(at(), "no extent item"))?;
        let info = parse_extent_item(key, &body)?;
        let counted = matches!(r, ExtentRef::Data { .. } | ExtentRef::SharedData { .. });
        if info.inline_refs.iter().any(|x| same_ref(x, &r)) {
            if !counted {
                return Err(Error::corrupt(at(), format!("a second {r:?} back reference")));
            }
            self.edit_extent_refs(key, |refs| {
                for x in refs.iter_mut() {
                    if same_ref(x, &r) {
                        match x {
                            ExtentRef::Data { count, .. } | ExtentRef::SharedData { count, .. } => {
                                *count = count.checked_add(n).ok_or_else(|| Error::corrupt(at(), "back reference count overflow"))?
                            }
                            _ => {}
                        }
                    }
                }
                Ok(n as i64)
            })?;
            return Ok(());
        }
        if let Some((k, count)) = self.find_keyed_ref(key.objectid, &r)? {
            if !counted {
                return Err(Error::corrupt(at(), format!("a second {r:?} back reference")));
            }
            let count = count.checked_add(n).ok_or_else(|| Error::corrupt(at(), "back reference count overflow"))?;
            self.put(EXTENT_TREE_OBJECTID, k, Self::keyed_ref_body(&r, count))?;
            self.edit_extent_refs(key, |_| Ok(n as i64))?;
            return Ok(());
        }
        let with_count = match r {
            ExtentRef::Data { root, objectid, offset, .. } => ExtentRef::Data { root, objectid, offset, count: n },
            ExtentRef::SharedData { parent, .. } => ExtentRef::SharedData { parent, count: n },
            other if n == 1 => other,
            _ => return Err(Error::corrupt(at(), format!("{n} references of one {r:?}"))),
        };
        let inline_size = inline_ref_size(&with_count);
        if body.len() + inline_size < max_extent_item_size(self.store.fmt.nodesize) {
            self.edit_extent_refs(key, |refs| {
                refs.push(with_count);
                Ok(n as i64)
            })?;
            return Ok(());
        }
        // Keyed: at the first free offset of the hash chain for data refs.
        let (ty, mut off) = with_count.order();
        while self.get(EXTENT_TREE_OBJECTID, Key::new(key.objectid, ty, off))?.is_some() {
            if ty != EXTENT_DATA_REF_KEY {
                return Err(Error::corrupt(at(), format!("keyed back reference {ty} {off} already there")));
            }
            off = off.checked_add(1).ok_or_else(|| Error::corrupt(at(), "data ref hash chain past 2^64"))?;
        }
        self.insert(EXTENT_TREE_OBJECTID, Key::new(key.objectid, ty, off), Self::keyed_ref_body(&with_count, n))?;
        self.edit_extent_refs(key, |_| Ok(n as i64))?;
        Ok(())
    }

    /// `n` fewer of back reference `r` (count field ignored) on extent item
    /// `key`, inline or keyed; true when the extent lost its last reference
    /// (its item is deleted).
    fn drop_ref(&mut self, key: Key, r: ExtentRef, n: u32) -> Result<bool> {
        let at = || format!("extent {} ({})", key.objectid, if key.item_type == METADATA_ITEM_KEY { "tree block" } else { "data" });
        let body = self.get(EXTENT_TREE_OBJECTID, key)?.ok_or_else(|| Error::corrupt(at(), "no extent item"))?;
        let info = parse_extent_item(key, &body)?;
        if info.inline_refs.iter().any(|x| same_ref(x, &r)) {
            return self.edit_extent_refs(key, |refs| {
                let mut kept = Vec::with_capacity(refs.len());
                for x in refs.drain(..) {
                    if !same_ref(&x, &r) {
                        kept.push(x);
                        continue;
                    }
                    match x {
                        ExtentRef::Data { root, objectid, offset, count } => {
                            let count = count.checked_sub(n).ok_or_else(|| Error::corrupt(at(), "data ref count underflow"))?;
                            kept.push(ExtentRef::Data { root, objectid, offset, count });
                        }
                        ExtentRef::SharedData { parent, count } => {
                            let count = count.checked_sub(n).ok_or_else(|| Error::corrupt(at(), "shared data ref count underflow"))?;
                            kept.push(ExtentRef::SharedData { parent, count });
                        }
                        _ if n == 1 => {}
                        _ => return Err(Error::corrupt(at(), format!("dropping {n} of a single {r:?}"))),
                    }
                }
                *refs = kept;
                Ok(-(n as i64))
            });
        }
        let (k, count) = self.find_keyed_ref(key.objectid, &r)?.ok_or_else(|| Error::corrupt(at(), format!("no back reference {r:?}")))?;
        match count.checked_sub(n) {
            None => return Err(Error::corrupt(at(), format!("{r:?}: count {count} cannot drop {n}"))),
            Some(0) => {
                self.delete(EXTENT_TREE_OBJECTID, k)?;
            }
            Some(left) => {
                self.put(EXTENT_TREE_OBJECTID, k, Self::keyed_ref_body(&r, left))?;
            }
        }
        self.edit_extent_refs(key, |_| Ok(-(n as i64)))
    }

    /// Block `addr` of tree `owner`, which the kernel marked FULL_BACKREF
    /// (balance does this to the blocks it relocates), is being replaced by
    /// an ordinary copy: what it points to is referenced by parent address
    /// (SHARED_BLOCK_REF / SHARED_DATA_REF to `addr`), which will no longer
    /// exist. Move each such reference to the tree (TREE_BLOCK_REF /
    /// EXTENT_DATA_REF), as the kernel's update_ref_for_cow does.
    fn unshare_children(&mut self, addr: u64, owner: u64, level: u8) -> Result<()> {
        let old = self.store.fs.reader.read_block(addr, Expect { level: Some(level), ..Default::default() }, Some(owner))?;
        for child in children(&old)? {
            // The new reference first: dropping the old one first could take
            // the count through zero and delete the extent item.
            match child {
                Child::Block(key) => {
                    // A child already replaced in this transaction has no item left.
                    if self.get(EXTENT_TREE_OBJECTID, key)?.is_none() {
                        continue;
                    }
                    self.add_ref(key, ExtentRef::TreeBlock { root: owner }, 1)?;
                    self.drop_ref(key, ExtentRef::SharedBlock { parent: addr }, 1)?;
                }
                Child::Data { key, ino, offset: off } => {
                    self.add_ref(key, ExtentRef::Data { root: owner, objectid: ino, offset: off, count: 0 }, 1)?;
                    self.drop_ref(key, ExtentRef::SharedData { parent: addr, count: 0 }, 1)?;
                }
            }
        }
        Ok(())
    }

    /// Block `addr`, shared with other trees (a snapshot), was replaced by a
    /// copy in tree `root`. It stays for the others; what it points to gains
    /// a reference for the copy, and `root` drops its reference to it — the
    /// kernel's update_ref_for_cow: when `root` owns the block and it is not
    /// yet FULL_BACKREF, the block turns FULL_BACKREF and its children are
    /// (also) referenced by its address for the trees still using it, while
    /// the tree's own references go on serving the copy; otherwise the
    /// children gain references from `root` for the copy.
    fn cow_shared(&mut self, addr: u64, root: u64, level: u8, flags: u64) -> Result<()> {
        let old = self.store.fs.reader.read_block(addr, Expect { level: Some(level), ..Default::default() }, Some(root))?;
        let by_parent = old.owner() == root && flags & BLOCK_FLAG_FULL_BACKREF == 0;
        self.add_child_refs(&old, addr, if by_parent { None } else { Some(root) })?;
        let key = Key::new(addr, METADATA_ITEM_KEY, level as u64);
        let keyed = self.drop_keyed_ref(Key::new(addr, TREE_BLOCK_REF_KEY, root), 1)?;
        self.edit_extent_item(key, |info| {
            if by_parent {
                info.flags |= BLOCK_FLAG_FULL_BACKREF;
            }
            if !keyed {
                let n = info.inline_refs.len();
                info.inline_refs.retain(|r| *r != ExtentRef::TreeBlock { root });
                if info.inline_refs.len() == n {
                    return Err(Error::corrupt(format!("tree block {addr}"), format!("shared, but holds no reference from tree {root}")));
                }
            }
            Ok(-1)
        })?;
        // Still in use by the other trees: not free after this commit.
        let ns = self.store.fmt.nodesize as u64;
        self.store.pinned.remove(&addr);
        self.store.allocated.insert(addr, ns);
        Ok(())
    }

    /// One more reference to everything block `old` (at `parent`) points
    /// to: by its address (`root` None: SHARED_BLOCK_REF / SHARED_DATA_REF)
    /// or from tree `root` (TREE_BLOCK_REF / EXTENT_DATA_REF).
    fn add_child_refs(&mut self, old: &TreeBlock, parent: u64, root: Option<u64>) -> Result<()> {
        for child in children(old)? {
            let (key, r) = match (child, root) {
                (Child::Block(key), None) => (key, ExtentRef::SharedBlock { parent }),
                (Child::Block(key), Some(root)) => (key, ExtentRef::TreeBlock { root }),
                (Child::Data { key, .. }, None) => (key, ExtentRef::SharedData { parent, count: 0 }),
                (Child::Data { key, ino, offset }, Some(root)) => (key, ExtentRef::Data { root, objectid: ino, offset, count: 0 }),
            };
            self.add_ref(key, r, 1)?;
        }
        Ok(())
    }

    /// Take `n` off a standalone (keyed) back reference item; false when
    /// there is no such item (the reference is inline).
    fn drop_keyed_ref(&mut self, key: Key, n: u32) -> Result<bool> {
        let Some(body) = self.get(EXTENT_TREE_OBJECTID, key)? else { return Ok(false) };
        let count = match key.item_type {
            SHARED_DATA_REF_KEY => items::read_prefix::<SharedDataRef>(&body, "shared data ref")?.0.count.get(),
            _ => 1,
        };
        if count <= n {
            self.delete(EXTENT_TREE_OBJECTID, key)?;
        } else {
            self.put(EXTENT_TREE_OBJECTID, key, SharedDataRef { count: (count - n).into() }.as_bytes().to_vec())?;
        }
        Ok(true)
    }

    /// Apply queued tree-block ref changes to the extent tree.
    fn apply_log(&mut self) -> Result<bool> {
        let log = std::mem::take(&mut self.store.log);
        if log.is_empty() {
            return Ok(false);
        }
        let ns = self.store.fmt.nodesize as u64;
        let transid = self.transid();
        for op in log {
            match op {
                RefOp::Alloc { addr, owner, level } => {
                    let mut body = ExtentItem { refs: 1.into(), generation: transid.into(), flags: EXTENT_FLAG_TREE_BLOCK.into() }
                        .as_bytes()
                        .to_vec();
                    body.push(TREE_BLOCK_REF_KEY);
                    body.extend_from_slice(&owner.to_le_bytes());
                    self.insert(EXTENT_TREE_OBJECTID, Key::new(addr, METADATA_ITEM_KEY, level as u64), body)?;
                }
                RefOp::Free { addr, owner, level } => {
                    let key = Key::new(addr, METADATA_ITEM_KEY, level as u64);
                    match self.get(EXTENT_TREE_OBJECTID, key)? {
                        Some(body) => {
                            let info = parse_extent_item(key, &body)?;
                            if info.refs > 1 {
                                self.cow_shared(addr, owner, level, info.flags)?;
                                continue;
                            }
                            if info.flags & BLOCK_FLAG_FULL_BACKREF != 0 {
                                self.unshare_children(addr, owner, level)?;
                            }
                            self.delete(EXTENT_TREE_OBJECTID, key)?;
                        }
                        None => {
                            return Err(Error::corrupt(
                                format!("tree block {addr}"),
                                format!("no metadata extent item (nodesize {ns}) to free"),
                            ))
                        }
                    }
                }
            }
        }
        Ok(true)
    }

    /// Rewrite block group item `used` and the free space tree entries of one group.
    fn update_group(&mut self, start: u64) -> Result<()> {
        let g = self.store.groups.get(&start).cloned().ok_or_else(|| Error::Invalid(format!("no block group at {start}")))?;
        let end = g.start + g.len;
        let mut used = 0u64;
        let mut free: Vec<(u64, u64)> = Vec::new();
        let mut pos = g.start;
        for (&s, &l) in self.store.allocated.range(g.start..end) {
            used += l;
            if s > pos {
                free.push((pos, s - pos));
            }
            pos = pos.max(s + l);
        }
        if pos < end {
            free.push((pos, end - pos));
        }
        // Block group item.
        let bg_tree = if self.store.bg_tree { BLOCK_GROUP_TREE_OBJECTID } else { EXTENT_TREE_OBJECTID };
        let bg_key = Key::new(g.start, BLOCK_GROUP_ITEM_KEY, g.len);
        let new_bg = BlockGroupItem { used: used.into(), chunk_objectid: g.chunk_objectid.into(), flags: g.flags.into() };
        let old = self.get(bg_tree, bg_key)?;
        if old.as_deref() != Some(new_bg.as_bytes()) {
            self.put(bg_tree, bg_key, new_bg.as_bytes().to_vec())?;
        }
        // Free space tree: diff existing extents against the wanted ones.
        let fst = FREE_SPACE_TREE_OBJECTID;
        // A group the kernel switched to bitmaps is written back as extents
        // (either form is valid as long as the info flag says which): drop
        // its bitmap items first.
        let items = self.range(fst, Key::new(g.start, FREE_SPACE_EXTENT_KEY, 0), Key::new(end - 1, FREE_SPACE_BITMAP_KEY, u64::MAX))?;
        let mut have = BTreeSet::new();
        for (k, _) in items {
            match k.item_type {
                FREE_SPACE_EXTENT_KEY => {
                    have.insert((k.objectid, k.offset));
                }
                FREE_SPACE_BITMAP_KEY => {
                    self.delete(fst, k)?;
                }
                _ => {}
            }
        }
        let want: BTreeSet<(u64, u64)> = free.iter().copied().collect();
        for &(s, l) in have.difference(&want) {
            self.delete(fst, Key::new(s, FREE_SPACE_EXTENT_KEY, l))?;
        }
        for &(s, l) in want.difference(&have) {
            self.insert(fst, Key::new(s, FREE_SPACE_EXTENT_KEY, l), Vec::new())?;
        }
        let info_key = Key::new(g.start, FREE_SPACE_INFO_KEY, g.len);
        let info = FreeSpaceInfo { extent_count: (want.len() as u32).into(), flags: 0.into() };
        let old = self.get(fst, info_key)?;
        if old.as_deref() != Some(info.as_bytes()) {
            self.put(fst, info_key, info.as_bytes().to_vec())?;
        }
        Ok(())
    }

    /// Record chunks planned since the last call: chunk item, dev items and
    /// dev extents (the block group item and free space entries follow from
    /// the group being dirty).
    fn insert_pending_chunks(&mut self) -> Result<bool> {
        let plans = std::mem::take(&mut self.store.pending_chunks);
        if plans.is_empty() {
            return Ok(false);
        }
        let chunk_tree_uuid = self.store.fmt.chunk_tree_uuid;
        for plan in plans {
            let info = plan.info(&self.store.devs, self.store.fs.sectorsize);
            self.insert(CHUNK_TREE_OBJECTID, Key::new(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, plan.logical), info.to_bytes())?;
            for &(devid, phys) in &plan.stripes {
                let de = DevExtent {
                    chunk_tree: CHUNK_TREE_OBJECTID.into(),
                    chunk_objectid: FIRST_CHUNK_TREE_OBJECTID.into(),
                    chunk_offset: plan.logical.into(),
                    length: plan.stripe_size.into(),
                    chunk_tree_uuid,
                };
                self.insert(DEV_TREE_OBJECTID, Key::new(devid, DEV_EXTENT_KEY, phys), de.as_bytes().to_vec())?;
                let item = self
                    .store
                    .dev_items
                    .get_mut(&devid)
                    .ok_or_else(|| Error::corrupt(format!("devid {devid}"), "no dev item in the chunk tree"))?;
                item.bytes_used = (item.bytes_used.get() + plan.stripe_size).into();
            }
            let devids: BTreeSet<u64> = plan.stripes.iter().map(|s| s.0).collect();
            for devid in devids {
                let item = self.store.dev_items[&devid];
                self.put(CHUNK_TREE_OBJECTID, Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, devid), item.as_bytes().to_vec())?;
            }
        }
        Ok(true)
    }

    /// Write changed tree roots into their root items.
    fn update_root_items(&mut self) -> Result<bool> {
        let mut changed = false;
        let ids: Vec<u64> = self.trees.keys().copied().filter(|&id| id != ROOT_TREE_OBJECTID).collect();
        for id in ids {
            let root = match self.trees.get(&id) {
                Some(t) => t.root(),
                None => continue,
            };
            let Some((key, mut ri)) = self.root_items.get(&id).cloned() else { continue };
            let delta = self.store.used_delta.remove(&id).unwrap_or(0);
            if delta == 0 && ri.bytenr.get() == root.bytenr && ri.level == root.level && ri.generation.get() == root.generation {
                continue;
            }
            // bytes_used counts the tree's blocks; the kernel keeps it up to
            // date block by block and sizes its global reserve from it, so a
            // stale value (worse, one it later drives below zero) makes it
            // fail with ENOSPC.
            ri.bytes_used = ri.bytes_used.get().saturating_add_signed(delta).into();
            ri.bytenr = root.bytenr.into();
            ri.level = root.level;
            ri.generation = root.generation.into();
            ri.generation_v2 = root.generation.into();
            if id == FS_TREE_OBJECTID || id >= FIRST_FREE_OBJECTID {
                ri.ctransid = self.transid().into();
                ri.ctime = self.now;
            }
            // Keep the stored size (v1 root items stay v1).
            let old = self.get(ROOT_TREE_OBJECTID, key)?.ok_or_else(|| Error::corrupt(format!("root item {key}"), "vanished"))?;
            let mut body = ri.as_bytes().to_vec();
            body.truncate(old.len().min(body.len()));
            self.put(ROOT_TREE_OBJECTID, key, body)?;
            self.root_items.insert(id, (key, ri));
            changed = true;
        }
        Ok(changed)
    }

    /// Bring extent tree, block groups, free space tree and root items to a
    /// fixed point (each update may COW blocks and queue more updates).
    pub fn settle(&mut self) -> Result<()> {
        self.store.metadata_headroom()?;
        for _ in 0..200 {
            let mut busy = self.insert_pending_chunks()?;
            busy |= self.apply_log()?;
            let groups = std::mem::take(&mut self.store.dirty_groups);
            for g in &groups {
                self.update_group(*g)?;
                busy = true;
            }
            busy |= self.update_root_items()?;
            if !busy && self.store.log.is_empty() && self.store.dirty_groups.is_empty() && self.store.pending_chunks.is_empty() {
                return Ok(());
            }
        }
        Err(Error::Invalid("transaction bookkeeping does not converge".into()))
    }

    /// Write everything and the superblocks. Consumes the transaction.
    pub fn commit(self) -> Result<()> {
        self.commit_keep().map(drop)
    }

    /// Commit; the warnings gathered on the way (devices that failed a read,
    /// quota accounting left to a rescan).
    pub fn commit_with_warnings(self) -> Result<Vec<String>> {
        let fs = self.commit_keep()?;
        Ok(fs.take_warnings().into_iter().map(|w| w.0).collect())
    }

    /// Quota groups count each subvolume's referenced and exclusive bytes;
    /// keeping them exact needs every changed extent's owners walked, which
    /// btrs does not do. Like the kernel when it cannot account an operation,
    /// the counts are marked inconsistent (kept, with their limits) until
    /// `btrfs quota rescan` recounts them; the kernel and `btrfs check`
    /// accept that state.
    fn mark_qgroups_inconsistent(&mut self) -> Result<()> {
        if self.store.fs.root_item(QUOTA_TREE_OBJECTID)?.is_none() {
            return Ok(());
        }
        let key = Key::new(0, QGROUP_STATUS_KEY, 0);
        let Some(body) = self.get(QUOTA_TREE_OBJECTID, key)? else {
            return Err(Error::corrupt("quota tree", "no qgroup status item"));
        };
        let mut raw = body.clone();
        raw.resize(raw.len().max(std::mem::size_of::<QgroupStatusItem>()), 0);
        let (mut st, _) = items::read_prefix::<QgroupStatusItem>(&raw, "qgroup status")?;
        let flags = st.flags.get();
        if flags & QGROUP_STATUS_FLAG_ON == 0 || flags & QGROUP_STATUS_FLAG_INCONSISTENT != 0 {
            return Ok(());
        }
        st.flags = (flags | QGROUP_STATUS_FLAG_INCONSISTENT).into();
        st.generation = self.transid().into();
        let mut out = st.as_bytes().to_vec();
        // Keep the stored size (32 bytes without simple quotas' enable_gen).
        out.truncate(body.len());
        self.put(QUOTA_TREE_OBJECTID, key, out)?;
        self.store.fs.warn("quota group counts are now marked inconsistent; run `btrfs quota rescan` on the mounted filesystem".into());
        Ok(())
    }

    /// Commit, then start the next transaction on the same (still locked)
    /// devices: long operations commit in steps so their memory stays
    /// bounded, each step crash-safe on its own.
    pub fn commit_and_continue(mut self) -> Result<Transaction> {
        let now = self.now;
        let names = std::mem::take(&mut self.names);
        // What this transaction freed stays unused while readers of older
        // generations remain (decided when the next one begins).
        let transid = self.transid();
        let mut held = std::mem::take(&mut self.store.held);
        for (&start, &len) in &self.store.pinned {
            held.ranges.insert(start, len);
            held.freed_in.insert(start, transid);
        }
        let mut next = Transaction::begin_holding(self.commit_keep()?, held)?;
        next.now = now;
        next.names = names;
        Ok(next)
    }

    /// Commit and hand back the filesystem, now at the new generation.
    fn commit_keep(mut self) -> Result<Filesystem> {
        // No root may point at data before every bio writing it is done.
        if let Some(mut dw) = self.direct.take() {
            dw.finish()?;
        }
        if self.trees.values().any(|t| t.is_dirty()) {
            self.mark_qgroups_inconsistent()?;
        }
        self.settle()?;
        let vol = self.store.fs.volume();
        let mut blocks = Vec::new();
        for t in self.trees.values() {
            blocks.extend(t.dirty_blocks(&self.store)?);
        }
        // Nothing changed: no new generation (a superblock generation newer
        // than its root block's would not mount).
        if blocks.is_empty() {
            if self.in_place != InPlace::Unmarked {
                vol.mark_in_place(false)?;
            }
            return Ok(self.store.fs);
        }
        // 1. Tree blocks to every mirror.
        for (logical, bytes) in &blocks {
            let copies = vol.num_copies(*logical)?;
            for m in 0..copies {
                vol.write_copy(*logical, bytes, m)?;
            }
        }
        vol.sync_all()?;
        // 2. Superblocks.
        let root = self.trees.get(&ROOT_TREE_OBJECTID).map(|t| t.root()).unwrap_or(self.store.fs.tree_root(ROOT_TREE_OBJECTID)?);
        let transid = self.transid();
        let mut sb = self.store.fs.sb;
        // Sum of block group `used`: every extent the extent tree lists
        // (chunk tree blocks included), pinned ones not.
        let used: u64 = self.store.allocated.values().sum::<u64>();
        let old_gen = sb.generation.get();
        sb.generation = transid.into();
        sb.root = root.bytenr.into();
        sb.root_level = root.level;
        sb.bytes_used = used.into();
        if sb.uuid_tree_generation.get() == old_gen {
            sb.uuid_tree_generation = transid.into();
        }
        if sb.cache_generation.get() == old_gen {
            sb.cache_generation = transid.into();
        }
        if let Some(t) = self.trees.get(&CHUNK_TREE_OBJECTID) {
            let c = t.root();
            sb.chunk_root = c.bytenr.into();
            sb.chunk_root_level = c.level;
            sb.chunk_root_generation = c.generation.into();
        }
        self.fill_backup(&mut sb, root)?;
        let csum = self.store.fs.csum;
        for dev in vol.devices.values() {
            let mut s = sb;
            s.dev_item = dev.sb.dev_item;
            if let Some(item) = self.store.dev_items.get(&dev.devid) {
                s.dev_item.bytes_used = item.bytes_used;
            }
            for &off in SUPER_MIRROR_OFFSETS.iter() {
                if off + SUPER_INFO_SIZE as u64 > dev.size {
                    break;
                }
                s.bytenr = off.into();
                seal_super(&mut s, csum);
                dev.write_all_at(off, s.as_bytes())?;
            }
        }
        vol.sync_all()?;
        // Readers waiting for the bytes overwritten in place to be part of a
        // commit can open this one.
        if self.in_place != InPlace::Unmarked {
            vol.mark_in_place(false)?;
        }
        let mut fs = self.store.fs;
        fs.committed(sb)?;
        Ok(fs)
    }

    fn fill_backup(&self, sb: &mut SuperBlock, root: RootPtr) -> Result<()> {
        // The kernel rotates through the four slots; the next slot after the
        // newest one gets this commit.
        let newest = (0..NUM_BACKUP_ROOTS).max_by_key(|&i| sb.super_roots[i].tree_root_gen.get()).unwrap_or(0);
        let slot = (newest + 1) % NUM_BACKUP_ROOTS;
        let mut b = RootBackup::new_zeroed();
        let ptr = |id: u64| -> Result<RootPtr> {
            match self.trees.get(&id) {
                Some(t) => Ok(t.root()),
                None => self.store.fs.tree_root(id),
            }
        };
        let ext = ptr(EXTENT_TREE_OBJECTID)?;
        let fst = ptr(FS_TREE_OBJECTID)?;
        let dev = ptr(DEV_TREE_OBJECTID)?;
        let csum = ptr(CSUM_TREE_OBJECTID)?;
        b.tree_root = root.bytenr.into();
        b.tree_root_gen = root.generation.into();
        b.tree_root_level = root.level;
        b.chunk_root = sb.chunk_root;
        b.chunk_root_gen = sb.chunk_root_generation;
        b.chunk_root_level = sb.chunk_root_level;
        b.extent_root = ext.bytenr.into();
        b.extent_root_gen = ext.generation.into();
        b.extent_root_level = ext.level;
        b.fs_root = fst.bytenr.into();
        b.fs_root_gen = fst.generation.into();
        b.fs_root_level = fst.level;
        b.dev_root = dev.bytenr.into();
        b.dev_root_gen = dev.generation.into();
        b.dev_root_level = dev.level;
        b.csum_root = csum.bytenr.into();
        b.csum_root_gen = csum.generation.into();
        b.csum_root_level = csum.level;
        b.total_bytes = sb.total_bytes;
        b.bytes_used = sb.bytes_used;
        b.num_devices = sb.num_devices;
        sb.super_roots[slot] = b;
        Ok(())
    }
}

/// Something a tree block holds a reference to.
enum Child {
    /// A child block (its METADATA_ITEM key).
    Block(Key),
    /// A data extent (its EXTENT_ITEM key) and the (inode, file offset of the
    /// extent's start) a file extent item maps it at.
    Data { key: Key, ino: u64, offset: u64 },
}

/// Every reference `block` holds: its child blocks, or the data extents its
/// file extent items point to (one per item, holes and inline ones skipped).
fn children(block: &TreeBlock) -> Result<Vec<Child>> {
    let mut out = Vec::with_capacity(block.nritems());
    for i in 0..block.nritems() {
        if block.level() > 0 {
            let (_, child, _) = block.ptr(i);
            out.push(Child::Block(Key::new(child, METADATA_ITEM_KEY, (block.level() - 1) as u64)));
            continue;
        }
        let k = block.key(i);
        if k.item_type != EXTENT_DATA_KEY {
            continue;
        }
        let fe = items::parse_file_extent(block.item_data(i))?;
        if let items::FileExtentKind::Regular { disk_bytenr, disk_num_bytes, offset, .. } = fe.kind {
            if disk_bytenr != 0 {
                out.push(Child::Data {
                    key: Key::new(disk_bytenr, EXTENT_ITEM_KEY, disk_num_bytes),
                    ino: k.objectid,
                    offset: k.offset.wrapping_sub(offset),
                });
            }
        }
    }
    Ok(out)
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

/// Whether two back references name the same referrer (counts aside).
fn same_ref(a: &ExtentRef, b: &ExtentRef) -> bool {
    match (a, b) {
        (ExtentRef::Data { root, objectid, offset, .. }, ExtentRef::Data { root: r, objectid: o, offset: f, .. }) => (root, objectid, offset) == (r, o, f),
        (ExtentRef::SharedData { parent, .. }, ExtentRef::SharedData { parent: p, .. }) => parent == p,
        _ => a == b,
    }
}

/// Bytes an inline back reference takes in an extent item (type byte included).
fn inline_ref_size(r: &ExtentRef) -> usize {
    match r {
        ExtentRef::Data { .. } => 1 + std::mem::size_of::<ExtentDataRef>(),
        ExtentRef::SharedData { .. } => 1 + 8 + std::mem::size_of::<SharedDataRef>(),
        _ => 1 + 8,
    }
}

/// The kernel's BTRFS_MAX_EXTENT_ITEM_SIZE: an extent item stops taking
/// inline refs before it reaches a sixteenth of a leaf's data area, less
/// one item header.
fn max_extent_item_size(nodesize: u32) -> usize {
    (nodesize as usize - std::mem::size_of::<Header>()) / 16 - std::mem::size_of::<Item>()
}


#[cfg(test)]
mod ref_tests {
    use super::*;
    use crate::format::items::{extent_data_ref_hash, parse_keyed_ref, FileExtentKind};
    use crate::fs::inode::InodeId;
    use crate::fs::write::{WriteOpts, WriteReport};
    use crate::volumes::OpenOptions;

    /// Sixty more owners of one data extent: the first ones inline while the
    /// item stays under BTRFS_MAX_EXTENT_ITEM_SIZE, the rest keyed at their
    /// hash; more of a keyed ref counts up in its item; dropping them all
    /// gives back the extent item as it was.
    #[test]
    fn refs_past_the_inline_limit_go_keyed_and_come_back() {
        let Some((_tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(1, &[]) else { return };
        let o = OpenOptions { image: imgs[0].clone(), devices: imgs.to_vec(), degraded: false, writable: true, alongside_writer: false, accept_lagging: false, divergent_ok: false };
        let mut tx = Transaction::begin(Filesystem::open(&o).unwrap()).unwrap();
        let ino = tx.create(FS_TREE_OBJECTID, FIRST_FREE_OBJECTID, b"f", S_IFREG | 0o644, 0).unwrap();
        tx.write_at(FS_TREE_OBJECTID, ino, 0, &vec![7u8; 1 << 20], &WriteOpts::default(), &mut WriteReport::default()).unwrap();
        tx.commit().unwrap();
        let fs = Filesystem::open(&o).unwrap();
        let extents = fs.file_extents(InodeId { subvol: FS_TREE_OBJECTID, ino }).unwrap();
        let FileExtentKind::Regular { disk_bytenr, disk_num_bytes, .. } = extents[0].1.kind else { panic!("{extents:?}") };
        let nodesize = fs.sb.nodesize.get();
        let mut tx = Transaction::begin(fs).unwrap();
        let key = Key::new(disk_bytenr, EXTENT_ITEM_KEY, disk_num_bytes);
        let before = tx.get(EXTENT_TREE_OBJECTID, key).unwrap().unwrap();
        let keyed = |tx: &mut Transaction| {
            tx.range(EXTENT_TREE_OBJECTID, Key::new(disk_bytenr, EXTENT_DATA_REF_KEY, 0), Key::new(disk_bytenr, EXTENT_DATA_REF_KEY, u64::MAX))
                .unwrap()
        };
        for i in 0..60 {
            assert!(!tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, 1000 + i, 0, 1).unwrap());
        }
        let item = tx.get(EXTENT_TREE_OBJECTID, key).unwrap().unwrap();
        assert!(item.len() < max_extent_item_size(nodesize), "extent item of {} bytes", item.len());
        let info = parse_extent_item(key, &item).unwrap();
        let k = keyed(&mut tx);
        assert!(!k.is_empty() && info.inline_refs.len() > 20, "{} inline, {} keyed", info.inline_refs.len(), k.len());
        assert_eq!((info.refs, info.inline_refs.len() + k.len()), (61, 61));
        for (kk, body) in &k {
            let ExtentRef::Data { root, objectid, offset, count } = parse_keyed_ref(*kk, body).unwrap() else { panic!() };
            assert_eq!((kk.offset, count), (extent_data_ref_hash(root, objectid, offset), 1));
        }
        // One more of a keyed owner: its item counts 2.
        let ExtentRef::Data { objectid: keyed_owner, .. } = parse_keyed_ref(k[0].0, &k[0].1).unwrap() else { panic!() };
        tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, keyed_owner, 0, 1).unwrap();
        let body = tx.get(EXTENT_TREE_OBJECTID, k[0].0).unwrap().unwrap();
        assert!(matches!(parse_keyed_ref(k[0].0, &body).unwrap(), ExtentRef::Data { count: 2, .. }));
        // Dropping a reference nobody holds is corruption, not a silent no-op.
        assert!(tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, 999, 0, -1).is_err());
        tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, keyed_owner, 0, -1).unwrap();
        for i in 0..60 {
            assert!(!tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, 1000 + i, 0, -1).unwrap());
        }
        assert!(keyed(&mut tx).is_empty());
        assert_eq!(tx.get(EXTENT_TREE_OBJECTID, key).unwrap().unwrap(), before);
        // The last reference gone: the extent is gone.
        assert!(tx.data_ref_delta(disk_bytenr, disk_num_bytes, FS_TREE_OBJECTID, ino, 0, -1).unwrap());
        assert!(tx.get(EXTENT_TREE_OBJECTID, key).unwrap().is_none());
    }
}
