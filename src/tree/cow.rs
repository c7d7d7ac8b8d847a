//! Copy-on-write modification of one B-tree: insert, update, delete, with leaf
//! and node splits, merges and rebalancing, growing and shrinking the root.
//!
//! The model is btrfs's: a block that reached disk in an earlier transaction is
//! never changed in place. The first time a transaction touches it, the block is
//! copied to a newly allocated address (and the old address handed back to the
//! [`BlockStore`], which keeps it pinned until the commit), and every ancestor
//! is copied too so that its pointer can name the copy. Copies live in memory,
//! in this tree's dirty map, and are edited in place for the rest of the
//! transaction; [`CowTree::dirty_blocks`] serializes them for the commit. Until
//! the new superblock is written, the old root still describes the old tree,
//! complete and untouched, which is what makes a crash harmless.
//!
//! Structure differs from the kernel's `ctree.c` in one respect: the kernel
//! splits and balances top-down while searching (so that each level has room
//! before descending), because it edits locked extent buffers in place. Here
//! the walk is recursive and every level fixes its child up on the way back:
//! an over-full leaf first sheds items into its left or right neighbour (the
//! kernel's push_leaf_left/right) and is split only when neither has room (in
//! two by bytes, or in three around an item larger than half a leaf); an
//! over-full node is split in half; an emptied child is dropped and an
//! under-filled one (a quarter full, as the kernel's del_items/balance_level)
//! is merged into a neighbour or evened out with it; the pointer's key and
//! generation are refreshed. The root grows by one level when it splits and
//! shrinks while it is a node with a single child. The result obeys the same
//! on-disk rules: sorted unique keys, parent key == child's first key, levels
//! decreasing by one, nodes with 1..=max pointers, non-root leaves non-empty,
//! leaf bodies packed from the end without gaps.
//!
//! Errors: the checks a caller can trigger (key already present, key missing,
//! body too large for a leaf) come before anything is copied and leave the
//! tree untouched. Any other error (allocation failure, a damaged committed
//! block met half way) may leave the dirty copies half edited; the
//! transaction must then be aborted (drop the `CowTree` and release what the
//! store allocated), as the kernel aborts a transaction on such errors.
//!
//! Extent references, free space and the root item are the transaction
//! layer's business, reached through [`BlockStore::alloc`] / [`BlockStore::free`]
//! and [`CowTree::root`].

use rustc_hash::FxHashMap;
use std::sync::Arc;

use super::block::{Expect, TreeBlock};
use super::edit::{must_not_be_empty, split_points, EditBlock, EditLeaf, EditNode};
use super::encode::{internal, leaf_item_size, BlockFormat, NodePtr};
use super::reader::RootPtr;
use crate::error::{CorruptKind, Error, Result};
use crate::format::{Key, MAX_LEVEL};

/// What a tree needs from the transaction below it.
pub(crate) trait BlockStore {
    /// Node size, checksum type and header identity of the filesystem.
    fn format(&self) -> &BlockFormat;

    /// Generation of the running transaction; blocks written by it carry this.
    fn transid(&self) -> u64;

    /// A committed block (one written by an earlier transaction), verified
    /// against `expect` (level and generation from the parent pointer).
    fn read(&self, logical: u64, expect: Expect) -> Result<Arc<TreeBlock>>;

    /// An address for a new block of tree `owner` at `level`. The store must add
    /// the extent item / tree block ref for it and take the space from free space.
    fn alloc(&mut self, owner: u64, level: u8) -> Result<u64>;

    /// The tree no longer references the block at `logical`. `generation` is the
    /// block's generation: equal to [`BlockStore::transid`] for a block allocated
    /// in this transaction (no committed root reaches it, so its space may be
    /// reused once any write of it already issued is dropped), older for a
    /// committed block, whose space must stay pinned until the commit because
    /// the old root still reaches it. For a committed block that
    /// is shared (snapshots: extent refs > 1) the store drops only this tree's
    /// ref, and when the block is a node it must add refs for the node's
    /// children, which the copy now also points to (the kernel's update_ref_for_cow).
    fn free(&mut self, logical: u64, owner: u64, level: u8, generation: u64) -> Result<()>;
}

/// A B-tree being modified in one transaction.
#[derive(Debug)]
pub(crate) struct CowTree {
    root: RootPtr,
    /// Blocks copied or created in the current transaction, edited in place.
    /// By address. (rustc-hash: each tree operation looks blocks up here
    /// at every level, and std's SipHash showed in profiles of `put`.)
    dirty: FxHashMap<u64, EditBlock>,
    /// The transaction the dirty blocks belong to.
    dirty_transid: Option<u64>,
    /// Some of this transaction's blocks were written out before its commit
    /// and forgotten ([`CowTree::forget_written`]): the tree changed even
    /// when no block is held now.
    written_back: bool,
    /// Cap on node pointers below the format's, to grow deep trees in tests.
    fanout_limit: Option<usize>,
}

/// Result of modifying a subtree: its (possibly new) root address and the
/// siblings split off to its right, for the parent to link in.
struct Modified {
    addr: u64,
    split: Vec<NodePtr>,
}

enum Mode {
    Insert,
    Replace,
}

/// A block found by a read: either our in-memory copy or a committed block.
enum Loaded<'a> {
    Dirty(&'a EditBlock),
    Clean(Arc<TreeBlock>),
}

impl CowTree {
    /// A tree whose root is the committed block `root`.
    pub(crate) fn new(root: RootPtr) -> Self {
        CowTree { root, dirty: FxHashMap::default(), dirty_transid: None, written_back: false, fanout_limit: None }
    }

    /// A new, empty tree: one empty leaf, dirty in the current transaction.
    pub(crate) fn create<S: BlockStore + ?Sized>(store: &mut S, owner: u64) -> Result<Self> {
        let transid = store.transid();
        let addr = store.alloc(owner, 0)?;
        let mut t = CowTree::new(RootPtr { bytenr: addr, level: 0, generation: transid, owner });
        t.dirty.insert(addr, EditBlock::Leaf(EditLeaf::default()));
        t.dirty_transid = Some(transid);
        Ok(t)
    }

    /// A new tree of `owner` whose root is a copy of the committed block
    /// `src` (a snapshot's root: the kernel's btrfs_copy_root), dirty in the
    /// current transaction at a new address. What `src` points to is not
    /// touched: the caller adds the copy's references to it.
    pub(crate) fn copy_of<S: BlockStore + ?Sized>(store: &mut S, src: &TreeBlock, owner: u64) -> Result<Self> {
        let transid = store.transid();
        let level = src.level();
        let edit = EditBlock::from_block(src)?;
        let addr = store.alloc(owner, level)?;
        let mut t = CowTree::new(RootPtr { bytenr: addr, level, generation: transid, owner });
        t.dirty.insert(addr, edit);
        t.dirty_transid = Some(transid);
        Ok(t)
    }

    /// Where the tree starts now; after `take_dirty` and the commit, this is what
    /// the root item (or superblock) must record.
    pub(crate) fn root(&self) -> RootPtr {
        self.root
    }

    #[cfg(test)]
    pub(crate) fn owner(&self) -> u64 {
        self.root.owner
    }

    /// Cap the number of pointers per node below what the node size allows.
    /// Readers accept such trees; it exists so tests reach several levels with
    /// few items. Values below 3 are raised to 3 (a root split creates up to 3).
    #[cfg(test)]
    pub(crate) fn set_fanout_limit(&mut self, max_ptrs: usize) {
        self.fanout_limit = Some(max_ptrs.max(3));
    }

    /// Whether this transaction changed the tree: blocks held, or written
    /// out early and forgotten.
    pub(crate) fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || self.written_back
    }

    /// Number of blocks this transaction has copied or created (and not
    /// freed) that are held in memory.
    pub(crate) fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// Whether the tree's blocks cannot be written now: a tree the kernel
    /// refuses empty (see `must_not_be_empty`) whose root is an empty leaf,
    /// as it may be for a moment inside a transaction.
    pub(crate) fn empty_refused(&self) -> bool {
        must_not_be_empty(self.root.owner) && matches!(self.dirty.get(&self.root.bytenr), Some(EditBlock::Leaf(l)) if l.items.is_empty())
    }

    /// Every dirty block serialized for the commit, as (logical, bytes) sorted
    /// by address. Nothing changes, so a failed write can be retried; once the
    /// blocks are written, call [`CowTree::mark_clean`].
    pub(crate) fn dirty_blocks<S: BlockStore + ?Sized>(&self, store: &S) -> Result<Vec<(u64, Vec<u8>)>> {
        let fmt = *store.format();
        let Some(generation) = self.dirty_transid else { return Ok(Vec::new()) };
        if self.empty_refused() {
            return Err(Error::Invalid(format!("{} would be written empty, which the kernel refuses", self.at(self.root.bytenr))));
        }
        let mut out = self
            .dirty
            .iter()
            .map(|(&addr, b)| Ok((addr, b.to_bytes(&fmt, addr, generation, self.root.owner)?)))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|(a, _)| *a);
        Ok(out)
    }

    /// Forget the dirty blocks after they were written out before the
    /// commit (to bound a long transaction's memory): from now on the tree
    /// reads them back, and the next change of one copies it again, as the
    /// kernel does for a block already written out. A copy frees the written
    /// one at once (its generation is this transaction's: no committed root
    /// reaches it). The tree still counts as changed.
    pub(crate) fn forget_written(&mut self) {
        self.dirty.clear();
        self.dirty_transid = None;
        self.written_back = true;
    }

    /// Forget the dirty blocks after they were committed: from now on they
    /// are committed blocks, and the next change copies them again.
    #[cfg(test)]
    pub(crate) fn mark_clean(&mut self) {
        self.dirty.clear();
        self.dirty_transid = None;
        self.written_back = false;
    }

    /// [`CowTree::dirty_blocks`] then [`CowTree::mark_clean`].
    #[cfg(test)]
    pub(crate) fn take_dirty<S: BlockStore + ?Sized>(&mut self, store: &S) -> Result<Vec<(u64, Vec<u8>)>> {
        let out = self.dirty_blocks(store)?;
        self.mark_clean();
        Ok(out)
    }

    fn max_ptrs(&self, fmt: &BlockFormat) -> usize {
        let cap = fmt.max_node_ptrs();
        self.fanout_limit.map_or(cap, |l| l.min(cap))
    }

    fn at(&self, addr: u64) -> String {
        let tree =
            crate::format::types::tree_name(self.root.owner).map(str::to_string).unwrap_or_else(|| format!("tree {}", self.root.owner));
        format!("tree block {addr} ({tree})")
    }

    // ---------------------------------------------------------------- reading

    /// Fetch a block for reading. `key` is the parent's key for it, which must
    /// equal its first key (None for the root).
    fn load<S: BlockStore + ?Sized>(&self, store: &S, addr: u64, level: u8, generation: u64, key: Option<Key>) -> Result<Loaded<'_>> {
        if let Some(b) = self.dirty.get(&addr) {
            if b.level() != level {
                return Err(internal(format!("dirty block {addr} at level {}, pointer says {level}", b.level())));
            }
            return Ok(Loaded::Dirty(b));
        }
        let b = store.read(addr, Expect { level: Some(level), generation: Some(generation), max_generation: None })?;
        if b.level() != level {
            return Err(Error::corrupt(CorruptKind::TreeBlock, self.at(addr), format!("level {}, expected {level}", b.level())));
        }
        if b.generation() != generation {
            return Err(Error::corrupt(
                CorruptKind::TreeBlock,
                self.at(addr),
                format!("generation {}, parent says {generation}", b.generation()),
            ));
        }
        if let Some(k) = key {
            if b.nritems() == 0 {
                return Err(Error::corrupt(CorruptKind::TreeBlock, self.at(addr), "empty block below a node"));
            }
            if b.key(0) != k {
                return Err(Error::corrupt(
                    CorruptKind::TreeBlock,
                    self.at(addr),
                    format!("first key {} but parent pointer key {k}", b.key(0)),
                ));
            }
        }
        Ok(Loaded::Clean(b))
    }

    /// Body of the item with exactly `key`.
    pub(crate) fn get<S: BlockStore + ?Sized>(&self, store: &S, key: Key) -> Result<Option<Vec<u8>>> {
        let mut found = None;
        self.visit_range(store, key, key, &mut |_, data| {
            found = Some(data.to_vec());
            Ok(false)
        })?;
        Ok(found)
    }

    /// Every item with min <= key <= max, in key order, as the tree stands now
    /// (dirty blocks included).
    pub(crate) fn range<S: BlockStore + ?Sized>(&self, store: &S, min: Key, max: Key) -> Result<Vec<(Key, Vec<u8>)>> {
        let mut out = Vec::new();
        self.visit_range(store, min, max, &mut |k, d| {
            out.push((k, d.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Call `f` for every item with min <= key <= max in key order, until it
    /// returns false.
    pub(crate) fn visit_range<S: BlockStore + ?Sized>(
        &self,
        store: &S,
        min: Key,
        max: Key,
        f: &mut dyn FnMut(Key, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        if min > max {
            return Ok(());
        }
        let r = self.root;
        self.visit(store, r.bytenr, r.level, r.generation, None, (min, max), Dir::Forward, f).map(|_| ())
    }

    /// Visit the items with keys in `range` below the block at `addr`, in
    /// `dir` order, until `f` says stop; false once the walk should stop
    /// (`f` asked to, or the range ended inside this subtree).
    #[allow(clippy::too_many_arguments)]
    fn visit<S: BlockStore + ?Sized>(
        &self,
        store: &S,
        addr: u64,
        level: u8,
        generation: u64,
        key: Option<Key>,
        (min, max): (Key, Key),
        dir: Dir,
        f: &mut dyn FnMut(Key, &[u8]) -> Result<bool>,
    ) -> Result<bool> {
        // Children are visited through their pointers, one at a time from the
        // block as loaded (a dirty block borrowed, a committed one held):
        // nothing collected, so that a walk backward from the end of a wide
        // range (`last_le` from Key::MIN) costs a pointer per level, not a
        // whole node's worth.
        let loaded = self.load(store, addr, level, generation, key)?;
        let (lo, hi) = match &loaded {
            Loaded::Dirty(EditBlock::Leaf(l)) => {
                let start = l.items.partition_point(|(k, _)| *k < min);
                let end = l.items.partition_point(|(k, _)| *k <= max).max(start);
                let items = l.items.get(start..end).unwrap_or_default().iter().map(|(k, d)| (*k, d.as_slice()));
                return visit_items(items, start > 0, end < l.items.len(), dir, f);
            }
            Loaded::Clean(b) if b.is_leaf() => {
                let start = match b.slot_le(&min) {
                    Some(s) if b.key(s) == min => s,
                    Some(s) => s.saturating_add(1),
                    None => 0,
                };
                let end = b.slot_le(&max).map_or(0, |s| s.saturating_add(1)).max(start);
                let items = (start..end).map(|i| (b.key(i), b.item_data(i)));
                return visit_items(items, start > 0, end < b.nritems(), dir, f);
            }
            Loaded::Dirty(EditBlock::Node(n)) => {
                let (lo, hi) = (n.child_slot(&min), n.child_slot(&max));
                (lo, hi.max(lo).min(n.ptrs.len().saturating_sub(1)))
            }
            Loaded::Clean(b) => {
                let (lo, hi) = (b.slot_le(&min).unwrap_or(0), b.slot_le(&max).unwrap_or(0));
                (lo, hi.max(lo).min(b.nritems().saturating_sub(1)))
            }
        };
        let ptr = |i: usize| -> Option<NodePtr> {
            match &loaded {
                Loaded::Dirty(EditBlock::Node(n)) => n.ptrs.get(i).copied(),
                Loaded::Clean(b) if i < b.nritems() => {
                    let (key, blockptr, generation) = b.ptr(i);
                    Some(NodePtr { key, blockptr, generation })
                }
                _ => None,
            }
        };
        for step in 0..=hi.saturating_sub(lo) {
            let i = match dir {
                Dir::Forward => lo.saturating_add(step),
                Dir::Backward => hi.saturating_sub(step),
            };
            // (Only a first child can start above `max`: it holds nothing in range.)
            let Some(p) = ptr(i).filter(|p| p.key <= max) else { continue };
            // A node's children are one level down (load() checked the level).
            if !self.visit(store, p.blockptr, level.saturating_sub(1), p.generation, Some(p.key), (min, max), dir, f)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The first item with key >= `key`.
    #[cfg(test)]
    pub(crate) fn first_ge<S: BlockStore + ?Sized>(&self, store: &S, key: Key) -> Result<Option<(Key, Vec<u8>)>> {
        let mut found = None;
        self.visit_range(store, key, Key::MAX, &mut |k, d| {
            found = Some((k, d.to_vec()));
            Ok(false)
        })?;
        Ok(found)
    }

    /// The last item with key <= `key` (e.g. the highest inode number or
    /// directory index in use, to allocate the next one).
    pub(crate) fn last_le<S: BlockStore + ?Sized>(&self, store: &S, key: Key) -> Result<Option<(Key, Vec<u8>)>> {
        let mut found = None;
        self.visit_range_rev(store, Key::MIN, key, &mut |k, d| {
            found = Some((k, d.to_vec()));
            Ok(false)
        })?;
        Ok(found)
    }

    /// Like [`CowTree::visit_range`], from `max` down to `min`.
    pub(crate) fn visit_range_rev<S: BlockStore + ?Sized>(
        &self,
        store: &S,
        min: Key,
        max: Key,
        f: &mut dyn FnMut(Key, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        if min > max {
            return Ok(());
        }
        let r = self.root;
        self.visit(store, r.bytenr, r.level, r.generation, None, (min, max), Dir::Backward, f).map(|_| ())
    }

    // ---------------------------------------------------------------- COW

    /// Make the block at `addr` ours for this transaction and return its
    /// address: itself when already dirty, else a fresh copy (old one freed).
    fn cow<S: BlockStore + ?Sized>(&mut self, store: &mut S, addr: u64, level: u8, generation: u64, key: Option<Key>) -> Result<u64> {
        let transid = store.transid();
        match self.dirty_transid {
            Some(t) if t != transid => {
                return Err(internal(format!(
                    "tree {} still holds blocks of transaction {t} in transaction {transid}; take_dirty first",
                    self.root.owner
                )))
            }
            _ => {}
        }
        if self.dirty.contains_key(&addr) {
            return Ok(addr);
        }
        let block = match self.load(store, addr, level, generation, key)? {
            Loaded::Clean(b) => EditBlock::from_block(&b)?,
            Loaded::Dirty(_) => return Ok(addr),
        };
        if generation > transid {
            return Err(Error::corrupt(
                CorruptKind::TreeBlock,
                self.at(addr),
                format!("generation {generation} is newer than transaction {transid}"),
            ));
        }
        let new = store.alloc(self.root.owner, level)?;
        store.free(addr, self.root.owner, level, generation)?;
        self.dirty.insert(new, block);
        self.dirty_transid = Some(transid);
        Ok(new)
    }

    /// A fresh dirty block (split sibling, new root).
    fn new_block<S: BlockStore + ?Sized>(&mut self, store: &mut S, block: EditBlock) -> Result<u64> {
        let addr = store.alloc(self.root.owner, block.level())?;
        if self.dirty.insert(addr, block).is_some() {
            return Err(internal(format!("store handed out {addr}, which is still in use")));
        }
        self.dirty_transid = Some(store.transid());
        Ok(addr)
    }

    /// Drop a dirty block that is no longer referenced.
    fn discard<S: BlockStore + ?Sized>(&mut self, store: &mut S, addr: u64) -> Result<()> {
        let Some(b) = self.dirty.remove(&addr) else {
            return Err(internal(format!("discarding block {addr}, which is not dirty")));
        };
        store.free(addr, self.root.owner, b.level(), store.transid())
    }

    fn dirty_node(&mut self, addr: u64) -> Result<&mut EditNode> {
        match self.dirty.get_mut(&addr) {
            Some(EditBlock::Node(n)) => Ok(n),
            _ => Err(internal(format!("block {addr} is not a dirty node"))),
        }
    }

    fn dirty_first_key(&self, addr: u64) -> Result<Key> {
        self.dirty.get(&addr).and_then(EditBlock::first_key).ok_or_else(|| internal(format!("block {addr} is empty or not dirty")))
    }

    // ---------------------------------------------------------------- insert / update

    /// Add an item; an error if the key is already present.
    pub(crate) fn insert<S: BlockStore + ?Sized>(&mut self, store: &mut S, key: Key, data: Vec<u8>) -> Result<()> {
        self.check_size(store.format(), key, &data)?;
        if self.get(store, key)?.is_some() {
            return Err(Error::Invalid(format!("{}: key {key} already exists", self.at(self.root.bytenr))));
        }
        self.modify(store, key, data, Mode::Insert).map(|_| ())
    }

    /// Replace the body of an existing item (the size may change); returns the old body.
    #[cfg(test)]
    pub(crate) fn update<S: BlockStore + ?Sized>(&mut self, store: &mut S, key: Key, data: Vec<u8>) -> Result<Vec<u8>> {
        self.check_size(store.format(), key, &data)?;
        if self.get(store, key)?.is_none() {
            return Err(Error::NotFound(format!("key {key} in {}", self.at(self.root.bytenr))));
        }
        self.modify(store, key, data, Mode::Replace)?.ok_or_else(|| internal(format!("key {key} vanished during update")))
    }

    /// Insert or replace; returns the old body if there was one.
    pub(crate) fn put<S: BlockStore + ?Sized>(&mut self, store: &mut S, key: Key, data: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.check_size(store.format(), key, &data)?;
        let mode = if self.get(store, key)?.is_some() { Mode::Replace } else { Mode::Insert };
        self.modify(store, key, data, mode)
    }

    fn check_size(&self, fmt: &BlockFormat, key: Key, data: &[u8]) -> Result<()> {
        if data.len() > fmt.max_item_data() {
            return Err(Error::Invalid(format!(
                "item {key} of {} bytes does not fit in a leaf (at most {} with nodesize {})",
                data.len(),
                fmt.max_item_data(),
                fmt.nodesize
            )));
        }
        Ok(())
    }

    fn modify<S: BlockStore + ?Sized>(&mut self, store: &mut S, key: Key, data: Vec<u8>, mode: Mode) -> Result<Option<Vec<u8>>> {
        let r = self.root;
        let mut old = None;
        let mut m = self.modify_rec(store, r.bytenr, r.level, r.generation, None, key, data, &mode, &mut old)?;
        self.root.bytenr = m.addr;
        self.root.generation = store.transid();
        if r.level == 0 {
            // A root leaf has no neighbours to shed into.
            m.split = self.split_leaf(store, m.addr)?;
        }
        if !m.split.is_empty() {
            // The root itself split: a new root one level up holds the pieces.
            let level = r.level.saturating_add(1);
            if level >= MAX_LEVEL {
                return Err(Error::Unsupported(format!("{} would grow beyond {MAX_LEVEL} levels", self.at(m.addr))));
            }
            let mut ptrs = vec![NodePtr { key: self.dirty_first_key(m.addr)?, blockptr: m.addr, generation: store.transid() }];
            ptrs.extend(m.split);
            self.root.bytenr = self.new_block(store, EditBlock::Node(EditNode { level, ptrs }))?;
            self.root.level = level;
        }
        // Merges after a shrinking update may leave the root with one child.
        self.shrink_root(store)?;
        Ok(old)
    }

    #[allow(clippy::too_many_arguments)]
    fn modify_rec<S: BlockStore + ?Sized>(
        &mut self,
        store: &mut S,
        addr: u64,
        level: u8,
        generation: u64,
        pkey: Option<Key>,
        key: Key,
        data: Vec<u8>,
        mode: &Mode,
        old: &mut Option<Vec<u8>>,
    ) -> Result<Modified> {
        let fmt = *store.format();
        let transid = store.transid();
        let addr = self.cow(store, addr, level, generation, pkey)?;
        if level == 0 {
            let Some(EditBlock::Leaf(leaf)) = self.dirty.get_mut(&addr) else {
                return Err(internal(format!("block {addr} is not a dirty leaf")));
            };
            match (leaf.search(&key), mode) {
                (Ok(i), Mode::Replace) => {
                    let slot = leaf.items.get_mut(i).ok_or_else(|| internal(format!("leaf {addr} has no item {i}")))?;
                    *old = Some(std::mem::replace(&mut slot.1, data));
                }
                (Err(i), Mode::Insert) => leaf.items.insert(i, (key, data)),
                (Ok(_), Mode::Insert) => return Err(internal(format!("key {key} appeared during insert"))),
                (Err(_), Mode::Replace) => return Err(internal(format!("key {key} vanished during update"))),
            }
            // An over-full leaf stays so for a moment: the parent first tries to
            // shed items into a neighbour, and splits only if that fails.
            return Ok(Modified { addr, split: Vec::new() });
        }
        let node = self.dirty_node(addr)?;
        let slot = node.child_slot(&key);
        let child = node.ptrs.get(slot).copied().ok_or_else(|| internal(format!("node {addr} has no pointers")))?;
        let m = self.modify_rec(store, child.blockptr, level.saturating_sub(1), child.generation, Some(child.key), key, data, mode, old)?;
        let first = self.dirty_first_key(m.addr)?;
        let max_ptrs = self.max_ptrs(&fmt);
        let node = self.dirty_node(addr)?;
        *node.ptr_mut(slot)? = NodePtr { key: first, blockptr: m.addr, generation: transid };
        let after = slot.saturating_add(1);
        node.ptrs.splice(after..after, m.split);
        if level == 1 {
            self.relieve_leaf(store, addr, slot)?;
        }
        if matches!(mode, Mode::Replace) {
            // A body that shrank may leave the leaf under-filled, as a delete would.
            self.fix_child(store, addr, slot)?;
        }
        let node = self.dirty_node(addr)?;
        if node.ptrs.len() <= max_ptrs {
            return Ok(Modified { addr, split: Vec::new() });
        }
        let points = split_points(&vec![1; node.ptrs.len()], max_ptrs)?;
        let pieces = cut(&mut node.ptrs, &points);
        let mut split = Vec::new();
        for ptrs in pieces {
            let key = ptrs.first().map(|p| p.key).ok_or_else(|| internal("empty split piece".into()))?;
            let blockptr = self.new_block(store, EditBlock::Node(EditNode { level, ptrs }))?;
            split.push(NodePtr { key, blockptr, generation: transid });
        }
        Ok(Modified { addr, split })
    }

    /// Used bytes of the leaf a pointer leads to, without copying it.
    fn leaf_used<S: BlockStore + ?Sized>(&self, store: &S, p: NodePtr) -> Result<usize> {
        Ok(match self.load(store, p.blockptr, 0, p.generation, Some(p.key))? {
            Loaded::Dirty(EditBlock::Leaf(l)) => l.used(),
            Loaded::Clean(b) => {
                (0..b.nritems()).map(|i| leaf_item_size(crate::format::usize_of(b.item_location(i).1))).fold(0, usize::saturating_add)
            }
            Loaded::Dirty(EditBlock::Node(_)) => return Err(internal(format!("block {} is a node at level 0", p.blockptr))),
        })
    }

    /// Child `slot` of dirty node `addr` is a dirty leaf that may be over-full
    /// after an insert or a growing update. Like the kernel's split_leaf, first
    /// try to move items into the left neighbour, then into the right one, and
    /// split only when neither has room. Without this, appending keys in order
    /// (the common case: new inodes, new extents) would leave every leaf half
    /// empty; with it, the half-empty left piece of a split fills up first.
    fn relieve_leaf<S: BlockStore + ?Sized>(&mut self, store: &mut S, addr: u64, slot: usize) -> Result<()> {
        let fmt = *store.format();
        let cap = fmt.leaf_data_size();
        let transid = store.transid();
        // Called after every change to a leaf: the common case (it fits)
        // copies and allocates nothing; only the child's two neighbours are
        // ever needed, not the node's pointers.
        let node = self.dirty_node(addr)?;
        let child = node.ptrs.get(slot).ok_or_else(|| internal(format!("node {addr} has no pointer {slot}")))?.blockptr;
        let (left_ptr, right_ptr) =
            (slot.checked_sub(1).and_then(|l| node.ptrs.get(l)).copied(), node.ptrs.get(slot.saturating_add(1)).copied());
        let leaf = match self.dirty.get(&child) {
            Some(EditBlock::Leaf(l)) => l,
            _ => return Err(internal(format!("child {child} of {addr} is not a dirty leaf"))),
        };
        let Some(excess) = leaf.used().checked_sub(cap).filter(|e| *e > 0) else { return Ok(()) };
        let sizes: Vec<usize> = leaf.items.iter().map(|(_, d)| leaf_item_size(d.len())).collect();
        // How many items from one end of the child a neighbour with `room`
        // bytes free can take so that the child fits, keeping at least one.
        let take = |order: &mut dyn Iterator<Item = &usize>, room: usize| -> Option<usize> {
            let mut moved = 0usize;
            for (n, s) in (1..).zip(order.take(sizes.len().saturating_sub(1))) {
                moved = moved.saturating_add(*s);
                if moved > room {
                    return None;
                }
                if moved >= excess {
                    return Some(n);
                }
            }
            None
        };
        if let Some(p) = left_ptr {
            let room = cap.saturating_sub(self.leaf_used(store, p)?);
            if let Some(n) = take(&mut sizes.iter(), room) {
                let left = self.cow(store, p.blockptr, 0, p.generation, Some(p.key))?;
                let moved: Vec<_> = self.dirty_leaf(child)?.items.drain(..n).collect();
                self.dirty_leaf(left)?.items.extend(moved);
                let first = self.dirty_first_key(child)?;
                let node = self.dirty_node(addr)?;
                *node.ptr_mut(slot.saturating_sub(1))? = NodePtr { key: p.key, blockptr: left, generation: transid };
                node.ptr_mut(slot)?.key = first;
                return Ok(());
            }
        }
        if let Some(p) = right_ptr {
            let room = cap.saturating_sub(self.leaf_used(store, p)?);
            if let Some(n) = take(&mut sizes.iter().rev(), room) {
                let right = self.cow(store, p.blockptr, 0, p.generation, Some(p.key))?;
                let items = &mut self.dirty_leaf(child)?.items;
                let moved: Vec<_> = items.drain(items.len().saturating_sub(n)..).collect();
                self.dirty_leaf(right)?.items.splice(0..0, moved);
                let first = self.dirty_first_key(right)?;
                *self.dirty_node(addr)?.ptr_mut(slot.saturating_add(1))? = NodePtr { key: first, blockptr: right, generation: transid };
                return Ok(());
            }
        }
        let split = self.split_leaf(store, child)?;
        let after = slot.saturating_add(1);
        self.dirty_node(addr)?.ptrs.splice(after..after, split);
        Ok(())
    }

    /// Split an over-full dirty leaf into two pieces (three when a large item
    /// sits in the middle); returns pointers to the new right-hand pieces.
    fn split_leaf<S: BlockStore + ?Sized>(&mut self, store: &mut S, addr: u64) -> Result<Vec<NodePtr>> {
        let fmt = *store.format();
        let transid = store.transid();
        let leaf = self.dirty_leaf(addr)?;
        if leaf.fits(&fmt) {
            return Ok(Vec::new());
        }
        let sizes: Vec<usize> = leaf.items.iter().map(|(_, d)| leaf_item_size(d.len())).collect();
        let points = split_points(&sizes, fmt.leaf_data_size())?;
        let pieces = cut(&mut leaf.items, &points);
        let mut split = Vec::new();
        for items in pieces {
            let key = items.first().map(|(k, _)| *k).ok_or_else(|| internal("empty split piece".into()))?;
            let blockptr = self.new_block(store, EditBlock::Leaf(EditLeaf { items }))?;
            split.push(NodePtr { key, blockptr, generation: transid });
        }
        Ok(split)
    }

    fn dirty_leaf(&mut self, addr: u64) -> Result<&mut EditLeaf> {
        match self.dirty.get_mut(&addr) {
            Some(EditBlock::Leaf(l)) => Ok(l),
            _ => Err(internal(format!("block {addr} is not a dirty leaf"))),
        }
    }

    // ---------------------------------------------------------------- delete

    /// Remove an item; returns its body, or None (and changes nothing) when absent.
    pub(crate) fn delete<S: BlockStore + ?Sized>(&mut self, store: &mut S, key: Key) -> Result<Option<Vec<u8>>> {
        if self.get(store, key)?.is_none() {
            return Ok(None);
        }
        let r = self.root;
        let mut old = None;
        self.root.bytenr = self.delete_rec(store, r.bytenr, r.level, r.generation, None, key, &mut old)?;
        self.root.generation = store.transid();
        self.shrink_root(store)?;
        if old.is_none() {
            return Err(internal(format!("key {key} vanished during delete")));
        }
        Ok(old)
    }

    /// Remove every item with min <= key <= max; returns how many.
    #[cfg(test)]
    pub(crate) fn delete_range<S: BlockStore + ?Sized>(&mut self, store: &mut S, min: Key, max: Key) -> Result<usize> {
        let mut keys = Vec::new();
        self.visit_range(store, min, max, &mut |k, _| {
            keys.push(k);
            Ok(true)
        })?;
        for k in &keys {
            self.delete(store, *k)?;
        }
        Ok(keys.len())
    }

    #[allow(clippy::too_many_arguments)]
    fn delete_rec<S: BlockStore + ?Sized>(
        &mut self,
        store: &mut S,
        addr: u64,
        level: u8,
        generation: u64,
        pkey: Option<Key>,
        key: Key,
        old: &mut Option<Vec<u8>>,
    ) -> Result<u64> {
        let addr = self.cow(store, addr, level, generation, pkey)?;
        if level == 0 {
            let Some(EditBlock::Leaf(leaf)) = self.dirty.get_mut(&addr) else {
                return Err(internal(format!("block {addr} is not a dirty leaf")));
            };
            if let Ok(i) = leaf.search(&key) {
                *old = Some(leaf.items.remove(i).1);
            }
            return Ok(addr);
        }
        let node = self.dirty_node(addr)?;
        let slot = node.child_slot(&key);
        let child = node.ptrs.get(slot).copied().ok_or_else(|| internal(format!("node {addr} has no pointers")))?;
        let new_child = self.delete_rec(store, child.blockptr, level.saturating_sub(1), child.generation, Some(child.key), key, old)?;
        let transid = store.transid();
        let p = self.dirty_node(addr)?.ptr_mut(slot)?;
        p.blockptr = new_child;
        p.generation = transid;
        self.fix_child(store, addr, slot)?;
        Ok(addr)
    }

    /// After a delete below pointer `slot` of dirty node `addr` (whose child is
    /// dirty): drop the child if it is empty, merge it into a neighbour or even
    /// out the two if it is under-filled, and refresh the keys of what remains.
    fn fix_child<S: BlockStore + ?Sized>(&mut self, store: &mut S, addr: u64, slot: usize) -> Result<()> {
        let fmt = *store.format();
        let transid = store.transid();
        let max_ptrs = self.max_ptrs(&fmt);
        let n = self.dirty_node(addr)?.ptrs.len();
        let child = self.dirty_node(addr)?.ptr_mut(slot)?.blockptr;
        let (nritems, underfull) = match self.dirty.get(&child) {
            Some(EditBlock::Leaf(l)) => (l.items.len(), l.used() < fmt.leaf_data_size() >> 2),
            // The kernel balances nodes at a quarter full too (balance_level);
            // at least 2 so small test fanouts still merge single-pointer nodes.
            Some(EditBlock::Node(c)) => (c.ptrs.len(), c.ptrs.len() < (max_ptrs >> 2).max(2)),
            None => return Err(internal(format!("child {child} of {addr} is not dirty"))),
        };
        if nritems == 0 {
            // Only the root may be empty; an empty child goes away. A node left
            // without pointers is removed the same way by its own parent, or
            // replaced by an empty leaf if it is the root (shrink_root).
            self.discard(store, child)?;
            self.dirty_node(addr)?.ptrs.remove(slot);
            return Ok(());
        }
        let first = self.dirty_first_key(child)?;
        self.dirty_node(addr)?.ptr_mut(slot)?.key = first;
        if !underfull || n < 2 {
            return Ok(());
        }
        // Pair with the left neighbour when there is one (as the kernel tries
        // push_leaf_left first), else with the right one.
        let (l, r) = match slot.checked_sub(1) {
            Some(left) => (left, slot),
            None => (slot, slot.saturating_add(1)),
        };
        let level = self.dirty.get(&child).map_or(0, EditBlock::level);
        let mut ends = [0u64; 2];
        for (end, s) in ends.iter_mut().zip([l, r]) {
            let p = *self.dirty_node(addr)?.ptr_mut(s)?;
            let a = self.cow(store, p.blockptr, level, p.generation, Some(p.key))?;
            let q = self.dirty_node(addr)?.ptr_mut(s)?;
            q.blockptr = a;
            q.generation = transid;
            *end = a;
        }
        let (left_addr, right_addr) = (ends[0], ends[1]);
        let left = self.dirty.remove(&left_addr);
        let right = self.dirty.remove(&right_addr);
        let (new_left, new_right) = match (left, right) {
            (Some(EditBlock::Leaf(mut a)), Some(EditBlock::Leaf(mut b))) => {
                a.items.append(&mut b.items);
                let sizes: Vec<usize> = a.items.iter().map(|(_, d)| leaf_item_size(d.len())).collect();
                let rest = rebalance(&mut a.items, &sizes, fmt.leaf_data_size())?;
                (EditBlock::Leaf(a), rest.map(|items| EditBlock::Leaf(EditLeaf { items })))
            }
            (Some(EditBlock::Node(mut a)), Some(EditBlock::Node(mut b))) => {
                a.ptrs.append(&mut b.ptrs);
                let sizes = vec![1; a.ptrs.len()];
                let rest = rebalance(&mut a.ptrs, &sizes, max_ptrs)?;
                let level = a.level;
                (EditBlock::Node(a), rest.map(|ptrs| EditBlock::Node(EditNode { level, ptrs })))
            }
            _ => return Err(internal(format!("siblings {left_addr} and {right_addr} of {addr} differ in kind"))),
        };
        let left_key = new_left.first_key();
        self.dirty.insert(left_addr, new_left);
        match new_right {
            Some(b) => {
                let right_key = b.first_key();
                self.dirty.insert(right_addr, b);
                let node = self.dirty_node(addr)?;
                node.ptr_mut(l)?.key = left_key.ok_or_else(|| internal("empty left after rebalance".into()))?;
                node.ptr_mut(r)?.key = right_key.ok_or_else(|| internal("empty right after rebalance".into()))?;
            }
            None => {
                // Everything fit in the left block: the right one is gone.
                store.free(right_addr, self.root.owner, level, transid)?;
                let node = self.dirty_node(addr)?;
                node.ptr_mut(l)?.key = left_key.ok_or_else(|| internal("empty block after merge".into()))?;
                node.ptrs.remove(r);
            }
        }
        Ok(())
    }

    /// Lower the tree while the root is a node with a single child (or none).
    fn shrink_root<S: BlockStore + ?Sized>(&mut self, store: &mut S) -> Result<()> {
        loop {
            let r = self.root;
            let only = match self.dirty.get(&r.bytenr) {
                Some(EditBlock::Node(n)) if n.ptrs.len() <= 1 => n.ptrs.first().copied(),
                _ => return Ok(()),
            };
            self.discard(store, r.bytenr)?;
            match only {
                Some(p) => {
                    self.root = RootPtr { bytenr: p.blockptr, level: r.level.saturating_sub(1), generation: p.generation, owner: r.owner };
                }
                None => {
                    // Every child was emptied: the tree is one empty leaf again.
                    let bytenr = self.new_block(store, EditBlock::Leaf(EditLeaf::default()))?;
                    self.root = RootPtr { bytenr, level: 0, generation: store.transid(), owner: r.owner };
                }
            }
        }
    }
}

/// Cut `v` at the given ascending indices; `v` keeps the first group and the
/// later groups are returned in order.
fn cut<T>(v: &mut Vec<T>, points: &[usize]) -> Vec<Vec<T>> {
    let mut pieces = Vec::with_capacity(points.len());
    for &p in points.iter().rev() {
        pieces.push(v.split_off(p));
    }
    pieces.reverse();
    pieces
}

/// Given the concatenation of two neighbours, keep everything in `v` if it fits
/// one block (a merge), else split it evenly in two and return the right half.
fn rebalance<T>(v: &mut Vec<T>, sizes: &[usize], cap: usize) -> Result<Option<Vec<T>>> {
    let points = split_points(sizes, cap)?;
    match points.as_slice() {
        [] => Ok(None),
        [p] => Ok(Some(v.split_off(*p))),
        _ => Err(internal(format!("two neighbours of {} elements do not fit in two blocks", sizes.len()))),
    }
}

/// The order of a walk over a key range.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Forward,
    Backward,
}

/// Give a leaf's items in `range` to `f` in `dir` order; false once the
/// walk should stop: `f` said so, or the leaf holds keys past the range's
/// far end (`below` keys under it, `above` keys over it).
fn visit_items<'a>(
    items: impl DoubleEndedIterator<Item = (Key, &'a [u8])>,
    below: bool,
    above: bool,
    dir: Dir,
    f: &mut dyn FnMut(Key, &[u8]) -> Result<bool>,
) -> Result<bool> {
    let mut each = |(k, d): (Key, &[u8])| f(k, d);
    let (done, past_end) = match dir {
        Dir::Forward => (items.map(&mut each).find(|r| !matches!(r, Ok(true))), above),
        Dir::Backward => (items.rev().map(&mut each).find(|r| !matches!(r, Ok(true))), below),
    };
    match done {
        // `f` said stop, or failed.
        Some(r) => r,
        None => Ok(!past_end),
    }
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
#[path = "cow_tests.rs"]
mod tests;
