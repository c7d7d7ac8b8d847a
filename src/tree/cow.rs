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

use std::collections::HashMap;
use std::sync::Arc;

use super::block::{Expect, TreeBlock};
use super::leaf::{internal, leaf_item_size, must_not_be_empty, split_points, BlockFormat, EditBlock, EditLeaf, EditNode, NodePtr};
use super::reader::RootPtr;
use crate::error::{CorruptKind, Error, Result};
use crate::format::{Key, MAX_LEVEL};

/// What a tree needs from the transaction below it.
pub trait BlockStore {
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
pub struct CowTree {
    root: RootPtr,
    /// Blocks copied or created in the current transaction, edited in place.
    dirty: HashMap<u64, EditBlock>,
    /// The transaction the dirty blocks belong to.
    dirty_transid: Option<u64>,
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
    pub fn new(root: RootPtr) -> Self {
        CowTree { root, dirty: HashMap::new(), dirty_transid: None, fanout_limit: None }
    }

    /// A new, empty tree: one empty leaf, dirty in the current transaction.
    pub fn create<S: BlockStore + ?Sized>(store: &mut S, owner: u64) -> Result<Self> {
        let transid = store.transid();
        let addr = store.alloc(owner, 0)?;
        let mut t = CowTree::new(RootPtr { bytenr: addr, level: 0, generation: transid, owner });
        t.dirty.insert(addr, EditBlock::Leaf(EditLeaf::default()));
        t.dirty_transid = Some(transid);
        Ok(t)
    }

    /// Where the tree starts now; after `take_dirty` and the commit, this is what
    /// the root item (or superblock) must record.
    pub fn root(&self) -> RootPtr {
        self.root
    }

    pub fn owner(&self) -> u64 {
        self.root.owner
    }

    /// Cap the number of pointers per node below what the node size allows.
    /// Readers accept such trees; it exists so tests reach several levels with
    /// few items. Values below 3 are raised to 3 (a root split creates up to 3).
    pub fn set_fanout_limit(&mut self, max_ptrs: usize) {
        self.fanout_limit = Some(max_ptrs.max(3));
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Number of blocks this transaction has copied or created (and not freed).
    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// Every dirty block serialized for the commit, as (logical, bytes) sorted
    /// by address. Nothing changes, so a failed write can be retried; once the
    /// blocks are written, call [`CowTree::mark_clean`].
    pub fn dirty_blocks<S: BlockStore + ?Sized>(&self, store: &S) -> Result<Vec<(u64, Vec<u8>)>> {
        let fmt = *store.format();
        let Some(generation) = self.dirty_transid else { return Ok(Vec::new()) };
        if must_not_be_empty(self.root.owner) && matches!(self.dirty.get(&self.root.bytenr), Some(EditBlock::Leaf(l)) if l.items.is_empty())
        {
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

    /// Forget the dirty blocks after they were written: from now on they are
    /// committed blocks, and the next change copies them again, as the kernel
    /// does for a block already written out.
    pub fn mark_clean(&mut self) {
        self.dirty.clear();
        self.dirty_transid = None;
    }

    /// [`CowTree::dirty_blocks`] then [`CowTree::mark_clean`].
    pub fn take_dirty<S: BlockStore + ?Sized>(&mut self, store: &S) -> Result<Vec<(u64, Vec<u8>)>> {
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
    pub fn get<S: BlockStore + ?Sized>(&self, store: &S, key: Key) -> Result<Option<Vec<u8>>> {
        let mut found = None;
        self.visit_range(store, key, key, &mut |_, data| {
            found = Some(data.to_vec());
            Ok(false)
        })?;
        Ok(found)
    }

    /// Every item with min <= key <= max, in key order, as the tree stands now
    /// (dirty blocks included).
    pub fn range<S: BlockStore + ?Sized>(&self, store: &S, min: Key, max: Key) -> Result<Vec<(Key, Vec<u8>)>> {
        let mut out = Vec::new();
        self.visit_range(store, min, max, &mut |k, d| {
            out.push((k, d.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Call `f` for every item with min <= key <= max in key order, until it
    /// returns false.
    pub fn visit_range<S: BlockStore + ?Sized>(
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
        // Children are visited through their pointers; collect them first so the
        // borrow of a committed block ends before recursing.
        let children: Vec<NodePtr> = match self.load(store, addr, level, generation, key)? {
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
                n.ptrs.get(lo..=hi.max(lo)).unwrap_or_default().iter().filter(|p| p.key <= max).copied().collect()
            }
            Loaded::Clean(b) => {
                let (lo, hi) = (b.slot_le(&min).unwrap_or(0), b.slot_le(&max).unwrap_or(0));
                (lo..=hi.max(lo))
                    .map(|i| {
                        let (key, blockptr, generation) = b.ptr(i);
                        NodePtr { key, blockptr, generation }
                    })
                    .filter(|p| p.key <= max)
                    .collect()
            }
        };
        // (Only a first child can start above `max`: it holds nothing in range.)
        let ordered: Box<dyn Iterator<Item = NodePtr>> = match dir {
            Dir::Forward => Box::new(children.into_iter()),
            Dir::Backward => Box::new(children.into_iter().rev()),
        };
        for p in ordered {
            // A node's children are one level down (load() checked the level).
            if !self.visit(store, p.blockptr, level.saturating_sub(1), p.generation, Some(p.key), (min, max), dir, f)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The first item with key >= `key`.
    pub fn first_ge<S: BlockStore + ?Sized>(&self, store: &S, key: Key) -> Result<Option<(Key, Vec<u8>)>> {
        let mut found = None;
        self.visit_range(store, key, Key::MAX, &mut |k, d| {
            found = Some((k, d.to_vec()));
            Ok(false)
        })?;
        Ok(found)
    }

    /// The last item with key <= `key` (e.g. the highest inode number or
    /// directory index in use, to allocate the next one).
    pub fn last_le<S: BlockStore + ?Sized>(&self, store: &S, key: Key) -> Result<Option<(Key, Vec<u8>)>> {
        let mut found = None;
        self.visit_range_rev(store, Key::MIN, key, &mut |k, d| {
            found = Some((k, d.to_vec()));
            Ok(false)
        })?;
        Ok(found)
    }

    /// Like [`CowTree::visit_range`], from `max` down to `min`.
    pub fn visit_range_rev<S: BlockStore + ?Sized>(
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
    pub fn insert<S: BlockStore + ?Sized>(&mut self, store: &mut S, key: Key, data: Vec<u8>) -> Result<()> {
        self.check_size(store.format(), key, &data)?;
        if self.get(store, key)?.is_some() {
            return Err(Error::Invalid(format!("{}: key {key} already exists", self.at(self.root.bytenr))));
        }
        self.modify(store, key, data, Mode::Insert).map(|_| ())
    }

    /// Replace the body of an existing item (the size may change); returns the old body.
    pub fn update<S: BlockStore + ?Sized>(&mut self, store: &mut S, key: Key, data: Vec<u8>) -> Result<Vec<u8>> {
        self.check_size(store.format(), key, &data)?;
        if self.get(store, key)?.is_none() {
            return Err(Error::NotFound(format!("key {key} in {}", self.at(self.root.bytenr))));
        }
        self.modify(store, key, data, Mode::Replace)?.ok_or_else(|| internal(format!("key {key} vanished during update")))
    }

    /// Insert or replace; returns the old body if there was one.
    pub fn put<S: BlockStore + ?Sized>(&mut self, store: &mut S, key: Key, data: Vec<u8>) -> Result<Option<Vec<u8>>> {
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
        let ptrs = self.dirty_node(addr)?.ptrs.clone();
        let child = ptrs.get(slot).ok_or_else(|| internal(format!("node {addr} has no pointer {slot}")))?.blockptr;
        let sizes: Vec<usize> = match self.dirty.get(&child) {
            Some(EditBlock::Leaf(l)) => l.items.iter().map(|(_, d)| leaf_item_size(d.len())).collect(),
            _ => return Err(internal(format!("child {child} of {addr} is not a dirty leaf"))),
        };
        let used: usize = sizes.iter().fold(0, |a, b| a.saturating_add(*b));
        let Some(excess) = used.checked_sub(cap).filter(|e| *e > 0) else { return Ok(()) };
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
        if let Some(&p) = slot.checked_sub(1).and_then(|l| ptrs.get(l)) {
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
        if let Some(&p) = ptrs.get(slot.saturating_add(1)) {
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
    pub fn delete<S: BlockStore + ?Sized>(&mut self, store: &mut S, key: Key) -> Result<Option<Vec<u8>>> {
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
    pub fn delete_range<S: BlockStore + ?Sized>(&mut self, store: &mut S, min: Key, max: Key) -> Result<usize> {
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
mod tests {
    use super::*;
    use crate::format::{CsumType, CSUM_TREE_OBJECTID, EXTENT_DATA_KEY, FS_TREE_OBJECTID};
    use crate::tree::block::HEADER_SIZE;
    use std::collections::{BTreeMap, HashSet};

    /// An in-memory transaction layer that checks the COW discipline: a
    /// committed block is never written again, a freed block is never freed
    /// twice or still in use, and space freed from the committed tree is
    /// reused only after the commit (so the old root stays readable).
    pub(crate) struct MemStore {
        fmt: BlockFormat,
        transid: u64,
        committed: HashMap<u64, Arc<TreeBlock>>,
        /// Allocated and not freed.
        live: HashSet<u64>,
        /// Allocated in the running transaction.
        fresh: HashSet<u64>,
        /// Freed committed blocks, released at the commit.
        pinned: Vec<u64>,
        free_list: Vec<u64>,
        next: u64,
        /// Every alloc (true) and free (false) as (addr, owner, level), for
        /// tests that keep extent refs the way a transaction layer would.
        log: Vec<(bool, u64, u64, u8)>,
        /// Allocations left before the store reports no space.
        allocs_left: Option<usize>,
    }

    impl MemStore {
        pub(crate) fn new(nodesize: u32) -> Self {
            let fmt = BlockFormat::new(nodesize, CsumType::Crc32c, [0x42; 16], [0x43; 16]).unwrap();
            MemStore {
                fmt,
                transid: 7,
                committed: HashMap::new(),
                live: HashSet::new(),
                fresh: HashSet::new(),
                pinned: Vec::new(),
                free_list: Vec::new(),
                next: 1 << 22,
                log: Vec::new(),
                allocs_left: None,
            }
        }

        /// Write a transaction's blocks and start the next one.
        pub(crate) fn commit(&mut self, blocks: Vec<(u64, Vec<u8>)>) {
            for (addr, bytes) in blocks {
                assert!(self.fresh.remove(&addr), "block {addr} written but not allocated in this transaction");
                let expect = Expect { level: None, generation: Some(self.transid), max_generation: None };
                let b = TreeBlock::parse(addr, bytes, self.fmt.csum, &self.fmt.fsid, expect).unwrap();
                check_layout(&b, &self.fmt);
                self.committed.insert(addr, Arc::new(b));
            }
            assert!(self.fresh.is_empty(), "allocated blocks neither written nor freed: {:?}", self.fresh);
            for a in self.pinned.drain(..) {
                self.committed.remove(&a);
                self.free_list.push(a);
            }
            self.transid += 1;
        }
    }

    impl BlockStore for MemStore {
        fn format(&self) -> &BlockFormat {
            &self.fmt
        }
        fn transid(&self) -> u64 {
            self.transid
        }
        fn read(&self, logical: u64, expect: Expect) -> Result<Arc<TreeBlock>> {
            let b = self
                .committed
                .get(&logical)
                .ok_or_else(|| Error::corrupt(CorruptKind::TreeBlock, format!("block {logical}"), "never written"))?;
            assert!(self.live.contains(&logical) || self.pinned.contains(&logical), "read of released block {logical}");
            if expect.level.is_some_and(|l| l != b.level()) || expect.generation.is_some_and(|g| g != b.generation()) {
                return Err(Error::corrupt(CorruptKind::TreeBlock, format!("block {logical}"), "level or generation mismatch"));
            }
            Ok(b.clone())
        }
        fn alloc(&mut self, owner: u64, level: u8) -> Result<u64> {
            if let Some(n) = self.allocs_left.as_mut() {
                if *n == 0 {
                    return Err(Error::Unsupported("metadata space exhausted".into()));
                }
                *n -= 1;
            }
            // Reuse freed space first, so a block still reachable from the old
            // root would be overwritten if it were ever wrongly released.
            let a = self.free_list.pop().unwrap_or_else(|| {
                self.next += self.fmt.nodesize as u64;
                self.next
            });
            assert!(self.live.insert(a), "double allocation of {a}");
            self.fresh.insert(a);
            self.log.push((true, a, owner, level));
            Ok(a)
        }
        fn free(&mut self, logical: u64, owner: u64, level: u8, generation: u64) -> Result<()> {
            assert!(self.live.remove(&logical), "free of {logical}, which is not allocated");
            self.log.push((false, logical, owner, level));
            if generation == self.transid {
                assert!(self.fresh.remove(&logical), "block {logical} of this transaction was not allocated in it");
                self.free_list.push(logical);
            } else {
                assert!(generation < self.transid);
                assert!(self.committed.contains_key(&logical), "free of unwritten committed block {logical}");
                assert!(!self.fresh.contains(&logical));
                self.pinned.push(logical);
            }
            Ok(())
        }
    }

    /// Leaf bodies are packed from the end of the block in item order, with no gaps.
    fn check_layout(b: &TreeBlock, fmt: &BlockFormat) {
        assert_eq!(b.bytes().len(), fmt.nodesize as usize);
        assert_eq!(b.header.flags.get(), 1 | (1 << 56));
        assert_eq!(b.header.chunk_tree_uuid, fmt.chunk_tree_uuid);
        if b.is_leaf() {
            let mut end = (fmt.nodesize as usize - HEADER_SIZE) as u32;
            for i in 0..b.nritems() {
                let (off, size) = b.item_location(i);
                assert_eq!(off + size, end, "item {i} of leaf {} not contiguous", b.logical);
                end = off;
            }
        }
    }

    fn commit(tree: &mut CowTree, store: &mut MemStore) {
        let blocks = tree.take_dirty(store).unwrap();
        store.commit(blocks);
        assert!(!tree.is_dirty());
    }

    /// The recursive walks descend one level per call, so their depth is the
    /// tree's height: a root pointer (from a crafted root item) claiming a
    /// level its block does not have is refused at the first block, whatever
    /// the level, and blocks themselves never claim MAX_LEVEL or more.
    #[test]
    fn a_root_level_the_block_does_not_have_is_an_error() {
        let mut s = MemStore::new(4096);
        let mut t = CowTree::create(&mut s, FS_TREE_OBJECTID).unwrap();
        t.set_fanout_limit(4);
        for i in 0..200u16 {
            t.insert(&mut s, key(i), body(300, i as u64)).unwrap();
        }
        commit(&mut t, &mut s);
        let r = t.root();
        assert!(r.level >= 2);
        for level in [0, r.level - 1, r.level + 1, MAX_LEVEL, 200, u8::MAX] {
            let mut bad = CowTree::new(RootPtr { level, ..r });
            assert!(bad.get(&s, key(7)).is_err(), "level {level}");
            assert!(bad.range(&s, Key::MIN, Key::MAX).is_err(), "level {level}");
            assert!(bad.last_le(&s, Key::MAX).is_err(), "level {level}");
            assert!(bad.insert(&mut s, key(1000), body(10, 0)).is_err(), "level {level}");
        }
        // A block whose header says level 8, otherwise sound (fsid, bytenr, checksum).
        let mut block = vec![0u8; 4096];
        block[32..48].copy_from_slice(&[0x42; 16]);
        block[100] = MAX_LEVEL;
        let c = CsumType::Crc32c.compute(&block[32..]);
        block[..32].copy_from_slice(&c);
        match TreeBlock::parse(0, block, CsumType::Crc32c, &[0x42; 16], Expect::default()) {
            Err(e) => assert!(e.to_string().contains("level 8 out of range"), "{e}"),
            Ok(_) => panic!("a block claiming level 8 parsed"),
        }
    }

    /// Walk the whole tree and check every structural invariant, then compare
    /// its contents with the model. `full` also serializes and re-parses every
    /// dirty block.
    fn check(tree: &CowTree, store: &MemStore, model: &BTreeMap<Key, Vec<u8>>, full: bool) {
        struct Walk<'a> {
            tree: &'a CowTree,
            store: &'a MemStore,
            full: bool,
            seen: HashSet<u64>,
            last: Option<Key>,
            max_ptrs: usize,
        }
        impl Walk<'_> {
            fn block(&mut self, addr: u64, level: u8, generation: u64, pkey: Option<Key>) {
                let fmt = self.store.fmt;
                assert!(self.seen.insert(addr), "block {addr} reachable twice");
                let block = match self.tree.dirty.get(&addr) {
                    Some(b) => {
                        assert_eq!(generation, self.store.transid, "pointer to dirty {addr} has an old generation");
                        assert!(self.store.fresh.contains(&addr), "dirty block {addr} not allocated in this transaction");
                        if self.full {
                            let bytes = b.to_bytes(&fmt, addr, generation, self.tree.owner()).unwrap();
                            let expect = Expect { level: Some(level), generation: Some(generation), max_generation: None };
                            let parsed = TreeBlock::parse(addr, bytes, fmt.csum, &fmt.fsid, expect).unwrap();
                            check_layout(&parsed, &fmt);
                            assert_eq!(&EditBlock::from_block(&parsed).unwrap(), b);
                        }
                        b.clone()
                    }
                    None => {
                        let b = self.store.committed.get(&addr).unwrap_or_else(|| panic!("block {addr} not written"));
                        assert!(generation < self.store.transid);
                        assert_eq!(b.generation(), generation);
                        assert!(!self.store.fresh.contains(&addr));
                        check_layout(b, &fmt);
                        EditBlock::from_block(b).unwrap()
                    }
                };
                assert_eq!(block.level(), level, "block {addr} level");
                if let Some(k) = pkey {
                    assert_eq!(block.first_key(), Some(k), "pointer key of {addr} differs from its first key");
                }
                match block {
                    EditBlock::Leaf(l) => {
                        assert!(pkey.is_none() || !l.items.is_empty(), "empty non-root leaf {addr}");
                        assert!(l.fits(&fmt));
                        for (k, _) in &l.items {
                            assert!(self.last.is_none_or(|p| p < *k), "key {k} out of order in {addr}");
                            self.last = Some(*k);
                        }
                    }
                    EditBlock::Node(n) => {
                        assert!(!n.ptrs.is_empty() && n.ptrs.len() <= self.max_ptrs, "node {addr} has {} ptrs", n.ptrs.len());
                        assert!(n.ptrs.windows(2).all(|w| w[0].key < w[1].key));
                        for p in &n.ptrs {
                            self.block(p.blockptr, level - 1, p.generation, Some(p.key));
                        }
                    }
                }
            }
        }
        let r = tree.root();
        let mut w = Walk { tree, store, full, seen: HashSet::new(), last: None, max_ptrs: tree.max_ptrs(&store.fmt) };
        w.block(r.bytenr, r.level, r.generation, None);
        // No leaks and nothing freed still in use: exactly the reachable blocks are allocated.
        assert_eq!(w.seen, store.live, "allocated blocks differ from reachable blocks");
        assert_eq!(tree.dirty.keys().copied().collect::<HashSet<_>>(), store.fresh);
        let got = tree.range(store, Key::MIN, Key::MAX).unwrap();
        let want: Vec<(Key, Vec<u8>)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "tree contents differ from the model");
        if full {
            let mut back = Vec::new();
            tree.visit_range_rev(store, Key::MIN, Key::MAX, &mut |k, _| {
                back.push(k);
                Ok(true)
            })
            .unwrap();
            assert!(back.into_iter().eq(model.keys().rev().copied()), "reverse iteration differs from the model");
        }
    }

    fn key(k: u16) -> Key {
        Key::new(256 + (k / 4) as u64, EXTENT_DATA_KEY, (k % 4) as u64 * 4096)
    }

    /// A body whose bytes depend on a tag, so a misplaced body is noticed.
    fn body(len: usize, tag: u64) -> Vec<u8> {
        (0..len).map(|i| (tag.wrapping_mul(131).wrapping_add(i as u64 * 7) % 251) as u8).collect()
    }

    fn fresh_tree(store: &mut MemStore) -> CowTree {
        // The csum tree may be empty; the fs tree may not (see must_not_be_empty).
        let mut t = CowTree::create(store, CSUM_TREE_OBJECTID).unwrap();
        commit(&mut t, store);
        t
    }

    #[test]
    fn trees_that_must_not_be_empty_are_refused() {
        let mut s = MemStore::new(4096);
        let mut t = CowTree::create(&mut s, FS_TREE_OBJECTID).unwrap();
        assert!(matches!(t.take_dirty(&s), Err(Error::Invalid(_))));
        t.insert(&mut s, key(1), vec![1]).unwrap();
        commit(&mut t, &mut s);
        assert_eq!(s.committed[&t.root().bytenr].owner(), FS_TREE_OBJECTID);
    }

    #[test]
    fn item_that_exactly_fills_a_leaf() {
        let mut s = MemStore::new(4096);
        let mut t = fresh_tree(&mut s);
        let mut m = BTreeMap::new();
        let max = s.fmt.max_item_data();
        t.insert(&mut s, key(10), body(max, 1)).unwrap();
        m.insert(key(10), body(max, 1));
        check(&t, &s, &m, true);
        assert_eq!(t.root().level, 0);
        // Anything more, even an empty body, splits the leaf and grows a root.
        t.insert(&mut s, key(20), vec![]).unwrap();
        m.insert(key(20), vec![]);
        check(&t, &s, &m, true);
        assert_eq!(t.root().level, 1);
        // Insert below the first key: the root's first pointer key must follow.
        t.insert(&mut s, key(5), vec![]).unwrap();
        m.insert(key(5), vec![]);
        check(&t, &s, &m, true);
        for k in [20, 5] {
            t.delete(&mut s, key(k)).unwrap();
            m.remove(&key(k));
            check(&t, &s, &m, true);
        }
        assert_eq!(t.root().level, 0);
        let too_big = t.insert(&mut s, key(30), vec![0; max + 1]).unwrap_err();
        assert!(matches!(too_big, Error::Invalid(_)), "{too_big}");
        assert!(t.update(&mut s, key(10), vec![0; max + 1]).is_err());
        commit(&mut t, &mut s);
        check(&t, &s, &m, true);
    }

    #[test]
    fn large_item_in_the_middle_splits_three_ways() {
        let mut s = MemStore::new(4096);
        let mut t = fresh_tree(&mut s);
        let mut m = BTreeMap::new();
        for k in 1..=6u16 {
            t.insert(&mut s, key(k * 8), body(600, k as u64)).unwrap();
            m.insert(key(k * 8), body(600, k as u64));
        }
        assert_eq!(t.root().level, 0);
        // Larger than half a leaf, between items 3 and 4: neither side can take it.
        t.insert(&mut s, key(28), body(3000, 99)).unwrap();
        m.insert(key(28), body(3000, 99));
        check(&t, &s, &m, true);
        assert_eq!(t.root().level, 1);
        let root = match t.dirty.get(&t.root().bytenr) {
            Some(EditBlock::Node(n)) => n.clone(),
            other => panic!("root is {other:?}"),
        };
        assert_eq!(root.ptrs.iter().map(|p| p.key).collect::<Vec<_>>(), vec![key(8), key(28), key(32)]);
        // Growing an item in place past the leaf's room splits as well.
        t.update(&mut s, key(8), body(3500, 5)).unwrap();
        m.insert(key(8), body(3500, 5));
        check(&t, &s, &m, true);
    }

    /// Blocks per level, from the root down.
    fn shape(tree: &CowTree, store: &MemStore) -> Vec<usize> {
        let mut levels = vec![0; tree.root().level as usize + 1];
        let mut todo = vec![(tree.root().bytenr, tree.root().generation)];
        while let Some((addr, generation)) = todo.pop() {
            let b = match tree.dirty.get(&addr) {
                Some(b) => b.clone(),
                None => {
                    EditBlock::from_block(&store.read(addr, Expect { generation: Some(generation), ..Expect::default() }).unwrap()).unwrap()
                }
            };
            levels[tree.root().level as usize - b.level() as usize] += 1;
            if let EditBlock::Node(n) = b {
                todo.extend(n.ptrs.iter().map(|p| (p.blockptr, p.generation)));
            }
        }
        levels
    }

    #[test]
    fn appending_in_order_fills_leaves() {
        let mut s = MemStore::new(4096);
        let mut t = fresh_tree(&mut s);
        let mut m = BTreeMap::new();
        // 125 bytes an item: 31 fit in a 4 KiB leaf, so 2000 items need 65 leaves.
        for k in 0..2000u16 {
            t.insert(&mut s, key(k), body(100, k as u64)).unwrap();
            m.insert(key(k), body(100, k as u64));
            if k % 300 == 0 {
                commit(&mut t, &mut s);
            }
        }
        check(&t, &s, &m, true);
        let leaves = *shape(&t, &s).last().unwrap();
        assert!(leaves <= 68, "{leaves} leaves for 65 leaves' worth of items");
        // The same in reverse order fills leaves from the other side.
        let mut s = MemStore::new(4096);
        let mut t = fresh_tree(&mut s);
        for k in (0..2000u16).rev() {
            t.insert(&mut s, key(k), body(100, k as u64)).unwrap();
        }
        check(&t, &s, &m, true);
        let leaves = *shape(&t, &s).last().unwrap();
        assert!(leaves <= 68, "{leaves} leaves for 65 leaves' worth of items");
    }

    /// How a transaction layer can keep the extent tree in step with tree
    /// blocks: alloc/free only queue ref changes (delayed refs), applied after
    /// each operation to the extent tree, itself a `CowTree` whose own COW
    /// queues more changes, until none are left. Checks that this converges
    /// and that the extent tree then lists exactly the live blocks of both trees.
    #[test]
    fn extent_refs_kept_through_delayed_updates() {
        use crate::format::{EXTENT_TREE_OBJECTID, METADATA_ITEM_KEY};
        fn settle(ext: &mut CowTree, s: &mut MemStore) {
            for _round in 0..100 {
                let log = std::mem::take(&mut s.log);
                if log.is_empty() {
                    return;
                }
                for (alloc, addr, owner, level) in log {
                    let k = Key::new(addr, METADATA_ITEM_KEY, level as u64);
                    let item = crate::format::encode::extent_item(&crate::format::items::ExtentInfo {
                        refs: 1,
                        generation: 1,
                        flags: crate::format::EXTENT_FLAG_TREE_BLOCK,
                        tree_block: None,
                        inline_refs: vec![crate::format::items::ExtentRef::TreeBlock { root: owner }],
                    })
                    .unwrap();
                    if alloc {
                        ext.insert(s, k, item).unwrap();
                    } else {
                        assert_eq!(ext.delete(s, k).unwrap(), Some(item));
                    }
                }
            }
            panic!("extent updates do not converge");
        }
        fn refs_match(ext: &CowTree, s: &MemStore) {
            let refs: HashSet<u64> = ext.range(s, Key::MIN, Key::MAX).unwrap().into_iter().map(|(k, _)| k.objectid).collect();
            assert_eq!(refs, s.live);
        }
        let mut s = MemStore::new(4096);
        let mut ext = CowTree::create(&mut s, EXTENT_TREE_OBJECTID).unwrap();
        let mut t = CowTree::create(&mut s, CSUM_TREE_OBJECTID).unwrap();
        ext.set_fanout_limit(4);
        t.set_fanout_limit(4);
        settle(&mut ext, &mut s);
        let mut m = BTreeMap::new();
        for i in 0..1500u16 {
            let k = key(((i as u32 * 53) % 400) as u16);
            if i % 3 == 2 {
                assert_eq!(t.delete(&mut s, k).unwrap(), m.remove(&k));
            } else if let std::collections::btree_map::Entry::Vacant(e) = m.entry(k) {
                t.insert(&mut s, k, body(150 + (i as usize % 7) * 90, i as u64)).unwrap();
                e.insert(body(150 + (i as usize % 7) * 90, i as u64));
            }
            settle(&mut ext, &mut s);
            if i % 100 == 99 {
                refs_match(&ext, &s);
                let mut blocks = t.take_dirty(&s).unwrap();
                blocks.extend(ext.take_dirty(&s).unwrap());
                s.commit(blocks);
            }
        }
        refs_match(&ext, &s);
        assert!(t.range(&s, Key::MIN, Key::MAX).unwrap().into_iter().eq(m));
        eprintln!("levels: tree {} extent tree {}, {} live blocks", t.root().level, ext.root().level, s.live.len());
        assert!(ext.root().level >= 1 && t.root().level >= 2);
    }

    /// Damage in committed blocks and failures of the store come back as
    /// errors, never as panics.
    #[test]
    fn damage_and_allocation_failures_are_errors() {
        let mut s = MemStore::new(4096);
        let mut t = fresh_tree(&mut s);
        t.set_fanout_limit(4);
        for k in 0..300u16 {
            t.insert(&mut s, key(k), body(100, k as u64)).unwrap();
        }
        commit(&mut t, &mut s);
        // Rewrite a committed leaf with its first key changed: the parent's
        // pointer key no longer matches, which a read must notice.
        let root = t.root();
        let node = EditNode::from_block(&s.committed[&root.bytenr]).unwrap();
        let victim = node.ptrs[1];
        let mut below = s.committed[&victim.blockptr].clone();
        while !below.is_leaf() {
            let n = EditNode::from_block(&below).unwrap();
            below = s.committed[&n.ptrs[0].blockptr].clone();
        }
        let mut leaf = EditLeaf::from_block(&below).unwrap();
        let first = leaf.items[0].0;
        leaf.items[0].0 = Key::new(first.objectid, first.item_type - 1, first.offset);
        let bytes = leaf.to_bytes(&s.fmt, below.logical, below.generation(), below.owner()).unwrap();
        let damaged = TreeBlock::parse(below.logical, bytes, s.fmt.csum, &s.fmt.fsid, Expect::default()).unwrap();
        s.committed.insert(below.logical, Arc::new(damaged));
        let probe = t.range(&s, Key::MIN, Key::MAX).unwrap_err();
        assert_eq!(probe.corrupt_kind(), Some(CorruptKind::TreeBlock), "{probe}");
        assert_eq!(t.insert(&mut s, first, vec![1]).unwrap_err().corrupt_kind(), Some(CorruptKind::TreeBlock));
        assert_eq!(t.delete(&mut s, first).unwrap_err().corrupt_kind(), Some(CorruptKind::TreeBlock));

        // Out of space part way through splits: an error, and nothing panics.
        let mut s = MemStore::new(4096);
        let mut t = fresh_tree(&mut s);
        t.set_fanout_limit(3);
        s.allocs_left = Some(40);
        let mut failed = false;
        for k in 0..2000u16 {
            match t.insert(&mut s, key(k % 400), body(500, k as u64)) {
                Ok(()) | Err(Error::Invalid(_)) => {}
                Err(Error::Unsupported(_)) => {
                    failed = true;
                    break;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert!(failed);
    }

    #[test]
    fn duplicate_missing_and_noop() {
        let mut s = MemStore::new(4096);
        let mut t = fresh_tree(&mut s);
        t.insert(&mut s, key(1), vec![1]).unwrap();
        commit(&mut t, &mut s);
        assert!(matches!(t.insert(&mut s, key(1), vec![2]), Err(Error::Invalid(_))));
        assert!(matches!(t.update(&mut s, key(2), vec![2]), Err(Error::NotFound(_))));
        assert_eq!(t.delete(&mut s, key(2)).unwrap(), None);
        assert_eq!(t.delete_range(&mut s, key(2), key(100)).unwrap(), 0);
        // Failed or empty operations copy nothing.
        assert!(!t.is_dirty());
        assert_eq!(t.put(&mut s, key(1), vec![3]).unwrap(), Some(vec![1]));
        assert_eq!(t.get(&s, key(1)).unwrap(), Some(vec![3]));
        assert_eq!(t.update(&mut s, key(1), vec![4, 4]).unwrap(), vec![3]);
        assert_eq!(t.delete(&mut s, key(1)).unwrap(), Some(vec![4, 4]));
        check(&t, &s, &BTreeMap::new(), true);
    }

    #[test]
    fn grow_deep_then_shrink_to_an_empty_leaf() {
        let mut s = MemStore::new(4096);
        let mut t = fresh_tree(&mut s);
        t.set_fanout_limit(4);
        let mut m = BTreeMap::new();
        for k in 0..600u16 {
            // A scattered order, so splits happen everywhere, not only at the right edge.
            let k = (k * 37) % 600;
            t.insert(&mut s, key(k), body(300 + (k as usize % 5) * 100, k as u64)).unwrap();
            m.insert(key(k), body(300 + (k as usize % 5) * 100, k as u64));
            if k % 50 == 0 {
                commit(&mut t, &mut s);
            }
        }
        check(&t, &s, &m, true);
        assert!(t.root().level >= 4, "level {}", t.root().level);
        commit(&mut t, &mut s);
        // Removing a range in the middle and then everything.
        assert_eq!(t.delete_range(&mut s, key(100), key(299)).unwrap(), 200);
        m.retain(|k, _| *k < key(100) || *k > key(299));
        check(&t, &s, &m, true);
        commit(&mut t, &mut s);
        for k in 0..600u16 {
            t.delete(&mut s, key((k * 11) % 600)).unwrap();
        }
        m.clear();
        check(&t, &s, &m, true);
        assert_eq!(t.root().level, 0);
        assert_eq!(s.live.len(), 1);
        commit(&mut t, &mut s);
        check(&t, &s, &m, true);
    }

    #[test]
    fn committed_blocks_are_copied_not_changed() {
        let mut s = MemStore::new(4096);
        let mut t = fresh_tree(&mut s);
        t.set_fanout_limit(3);
        let mut m = BTreeMap::new();
        for k in 0..200u16 {
            t.insert(&mut s, key(k), body(200, k as u64)).unwrap();
            m.insert(key(k), body(200, k as u64));
        }
        commit(&mut t, &mut s);
        let old_root = t.root();
        let old_model = m.clone();
        t.update(&mut s, key(77), body(10, 1)).unwrap();
        m.insert(key(77), body(10, 1));
        // Exactly the path from the root to the leaf was copied.
        assert_eq!(t.dirty_count(), old_root.level as usize + 1);
        assert_ne!(t.root().bytenr, old_root.bytenr);
        assert_eq!(s.pinned.len(), old_root.level as usize + 1);
        // Touching the same path again in this transaction copies nothing more.
        t.update(&mut s, key(76), body(11, 1)).unwrap();
        m.insert(key(76), body(11, 1));
        assert_eq!(t.dirty_count(), old_root.level as usize + 1);
        // The old root still reads back the old contents until the commit.
        let old = CowTree::new(old_root);
        assert_eq!(old.range(&s, Key::MIN, Key::MAX).unwrap(), old_model.into_iter().collect::<Vec<_>>());
        check(&t, &s, &m, true);
        commit(&mut t, &mut s);
        check(&t, &s, &m, true);
    }

    /// A reference image made by mkfs.btrfs and the kernel, unpacked into a
    /// temporary directory (None when the fixture is absent).
    fn open_fixture(name: &str) -> Option<(tempfile::TempDir, crate::Filesystem)> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/foreign").join(name);
        let rd = std::fs::read_dir(&src).ok()?;
        let tmp = tempfile::tempdir().unwrap();
        let mut devs: Vec<_> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "zst"))
            .map(|p| {
                let out = tmp.path().join(p.file_stem().unwrap());
                crate::volumes::raw::unpack_zstd(&p, &out).unwrap();
                out
            })
            .collect();
        devs.sort();
        let opts = crate::volumes::OpenOptions {
            image: devs[0].clone(),
            devices: devs.clone(),
            degraded: false,
            writable: false,
            ..Default::default()
        };
        Some((tmp, crate::Filesystem::open(&opts).unwrap()))
    }

    /// Committed blocks come from a kernel-made image; new blocks get
    /// addresses past its end and stay in memory.
    struct ImageStore<'a> {
        fs: &'a crate::Filesystem,
        fmt: BlockFormat,
        transid: u64,
        next: u64,
        live_new: HashSet<u64>,
        freed_old: HashSet<u64>,
        /// Our blocks after take_dirty, as if written.
        written: HashMap<u64, Arc<TreeBlock>>,
    }

    impl BlockStore for ImageStore<'_> {
        fn format(&self) -> &BlockFormat {
            &self.fmt
        }
        fn transid(&self) -> u64 {
            self.transid
        }
        fn read(&self, logical: u64, expect: Expect) -> Result<Arc<TreeBlock>> {
            if let Some(b) = self.written.get(&logical) {
                assert!(expect.level == Some(b.level()) && expect.generation == Some(b.generation()));
                return Ok(b.clone());
            }
            assert!(!self.freed_old.contains(&logical), "the new tree reaches freed block {logical}");
            self.fs.reader.read_block(logical, expect, None)
        }
        fn alloc(&mut self, _owner: u64, _level: u8) -> Result<u64> {
            self.next += self.fmt.nodesize as u64;
            self.live_new.insert(self.next);
            Ok(self.next)
        }
        fn free(&mut self, logical: u64, _owner: u64, _level: u8, generation: u64) -> Result<()> {
            if generation == self.transid {
                assert!(self.live_new.remove(&logical));
            } else {
                assert!(self.freed_old.insert(logical), "committed block {logical} freed twice");
            }
            Ok(())
        }
    }

    /// Edit the fs tree of a kernel-made image: the copy-on-write code reads
    /// the kernel's blocks (checking pointer keys and generations), and the
    /// result holds exactly the expected items while the old root still reads
    /// back the kernel's tree unchanged.
    #[test]
    fn edit_a_kernel_made_tree() {
        let Some((_tmp, fs)) = open_fixture("raid1-xxhash-4k") else { return };
        let root = fs.tree_root(FS_TREE_OBJECTID).unwrap();
        let original = fs.reader.range(&root, Key::MIN, Key::MAX).unwrap();
        let sb = &fs.sb;
        let fmt =
            BlockFormat::new(sb.nodesize.get(), fs.csum, sb.metadata_fsid(), fs.reader.root_block(&root).unwrap().header.chunk_tree_uuid)
                .unwrap();
        let mut store = ImageStore {
            fs: &fs,
            fmt,
            transid: sb.generation.get() + 1,
            next: sb.total_bytes.get().next_multiple_of(1 << 30),
            live_new: HashSet::new(),
            freed_old: HashSet::new(),
            written: HashMap::new(),
        };
        let mut t = CowTree::new(root);
        let mut model: BTreeMap<Key, Vec<u8>> = original.iter().cloned().collect();
        // Drop every other item, grow a few, and add new ones between the old keys.
        for (i, (k, d)) in original.iter().enumerate() {
            match i % 3 {
                0 => {
                    assert_eq!(t.delete(&mut store, *k).unwrap().as_ref(), Some(d));
                    model.remove(k);
                }
                1 if d.len() < 1000 => {
                    let mut bigger = d.clone();
                    bigger.extend_from_slice(&[0xab; 300]);
                    t.update(&mut store, *k, bigger.clone()).unwrap();
                    model.insert(*k, bigger);
                }
                _ => {
                    let nk = Key::new(k.objectid, k.item_type, k.offset.wrapping_add(1));
                    if !model.contains_key(&nk) && original.binary_search_by(|(o, _)| o.cmp(&nk)).is_err() {
                        t.insert(&mut store, nk, vec![i as u8; 50]).unwrap();
                        model.insert(nk, vec![i as u8; 50]);
                    }
                }
            }
        }
        assert_eq!(t.range(&store, Key::MIN, Key::MAX).unwrap(), model.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>());
        assert_eq!(t.dirty_count(), store.live_new.len());
        // The kernel's tree is untouched and still complete.
        assert_eq!(fs.reader.range(&root, Key::MIN, Key::MAX).unwrap(), original);
        let blocks = t.take_dirty(&store).unwrap();
        assert_eq!(blocks.len(), store.live_new.len());
        for (addr, bytes) in blocks {
            let b = TreeBlock::parse(addr, bytes, fmt.csum, &fmt.fsid, Expect { generation: Some(store.transid), ..Expect::default() })
                .unwrap();
            check_layout(&b, &fmt);
            store.written.insert(addr, Arc::new(b));
        }
        // Read the new tree back from the "written" blocks alone, with every
        // pointer's key, level and generation checked against its child.
        let again = CowTree::new(t.root()).range(&store, Key::MIN, Key::MAX).unwrap();
        assert_eq!(again, t.range(&store, Key::MIN, Key::MAX).unwrap());
        eprintln!("edited {} items of a level-{} tree; {} kernel blocks replaced", original.len(), root.level, store.freed_old.len());
    }

    /// Blocks the kernel (and mkfs) wrote, turned into the editable form and
    /// back, give the very same bytes: our layout is btrfs's, down to the
    /// zeroed free space and the header flags.
    #[test]
    fn kernel_written_blocks_reserialize_byte_for_byte() {
        use crate::format::{
            CHUNK_TREE_OBJECTID, CSUM_TREE_OBJECTID, DEV_TREE_OBJECTID, EXTENT_TREE_OBJECTID, FREE_SPACE_TREE_OBJECTID, ROOT_TREE_OBJECTID,
        };
        let mut compared = 0;
        for name in ["single", "raid1-xxhash-4k", "mixed-noholes"] {
            let Some((_tmp, fs)) = open_fixture(name) else { continue };
            for id in [
                ROOT_TREE_OBJECTID,
                CHUNK_TREE_OBJECTID,
                EXTENT_TREE_OBJECTID,
                DEV_TREE_OBJECTID,
                FS_TREE_OBJECTID,
                CSUM_TREE_OBJECTID,
                FREE_SPACE_TREE_OBJECTID,
            ] {
                if !fs.has_tree(id).unwrap() {
                    continue;
                }
                let mut todo = vec![fs.reader.root_block(&fs.tree_root(id).unwrap()).unwrap()];
                while let Some(b) = todo.pop() {
                    let fmt = BlockFormat::new(fs.sb.nodesize.get(), fs.csum, b.header.fsid, b.header.chunk_tree_uuid).unwrap();
                    let again = EditBlock::from_block(&b).unwrap().to_bytes(&fmt, b.logical, b.generation(), b.owner()).unwrap();
                    assert!(again == b.bytes(), "{name}: block {} of tree {id} differs after a round trip", b.logical);
                    compared += 1;
                    if !b.is_leaf() {
                        for i in 0..b.nritems() {
                            todo.push(fs.reader.child(&b, i, id).unwrap());
                        }
                    }
                }
            }
        }
        eprintln!("{compared} kernel-written tree blocks compared");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Insert(u16, usize),
            Update(u16, usize),
            Delete(u16),
            DeleteRange(u16, u16),
            Commit,
        }

        const KEYS: u16 = 320;

        fn ops(nodesize: usize) -> impl Strategy<Value = Vec<Op>> {
            let max = nodesize - HEADER_SIZE - 25;
            let len = prop_oneof![6 => 0..nodesize / 3, 2 => 0usize..64, 1 => (max - 300)..=max];
            let k = 0..KEYS;
            let op = prop_oneof![
                10 => (k.clone(), len.clone()).prop_map(|(k, l)| Op::Insert(k, l)),
                3 => (k.clone(), len).prop_map(|(k, l)| Op::Update(k, l)),
                6 => k.clone().prop_map(Op::Delete),
                1 => (k.clone(), 0u16..24).prop_map(|(k, w)| Op::DeleteRange(k, k.saturating_add(w))),
                // Wide ranges empty whole subtrees, so nodes above leaves empty and the root shrinks.
                1 => (k, 0..KEYS).prop_map(|(k, w)| Op::DeleteRange(k, k.saturating_add(w))),
                1 => Just(Op::Commit),
            ];
            proptest::collection::vec(op, 1..250)
        }

        fn run(nodesize: u32, fanout: Option<usize>, ops: Vec<Op>) {
            let mut s = MemStore::new(nodesize);
            let mut t = fresh_tree(&mut s);
            if let Some(f) = fanout {
                t.set_fanout_limit(f);
            }
            let mut m: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
            // The tree as of the last commit: what a crash would leave.
            let mut snapshot = (t.root(), m.clone());
            for (step, op) in ops.into_iter().enumerate() {
                let tag = step as u64 + 1;
                match op {
                    Op::Insert(k, len) => {
                        let r = t.insert(&mut s, key(k), body(len, tag));
                        match m.entry(key(k)) {
                            std::collections::btree_map::Entry::Occupied(_) => assert!(r.is_err()),
                            std::collections::btree_map::Entry::Vacant(e) => {
                                r.unwrap();
                                e.insert(body(len, tag));
                            }
                        }
                    }
                    Op::Update(k, len) => {
                        let r = t.update(&mut s, key(k), body(len, tag));
                        match m.get(&key(k)) {
                            Some(old) => {
                                assert_eq!(&r.unwrap(), old);
                                m.insert(key(k), body(len, tag));
                            }
                            None => assert!(r.is_err()),
                        }
                    }
                    Op::Delete(k) => assert_eq!(t.delete(&mut s, key(k)).unwrap(), m.remove(&key(k))),
                    Op::DeleteRange(a, b) => {
                        let n = t.delete_range(&mut s, key(a), key(b)).unwrap();
                        let before = m.len();
                        m.retain(|k, _| *k < key(a) || *k > key(b));
                        assert_eq!(n, before - m.len());
                    }
                    Op::Commit => {
                        commit(&mut t, &mut s);
                        snapshot = (t.root(), m.clone());
                    }
                }
                check(&t, &s, &m, step % 4 == 0);
                // Point lookups and neighbours around a probe key, present or not.
                let probe = key((step as u16).wrapping_mul(37) % KEYS);
                assert_eq!(t.get(&s, probe).unwrap().as_ref(), m.get(&probe));
                assert_eq!(t.first_ge(&s, probe).unwrap(), m.range(probe..).next().map(|(k, v)| (*k, v.clone())));
                assert_eq!(t.last_le(&s, probe).unwrap(), m.range(..=probe).next_back().map(|(k, v)| (*k, v.clone())));
                let (lo, hi) = (probe, key(((step as u16).wrapping_mul(37) % KEYS).saturating_add(9)));
                let mut back = Vec::new();
                t.visit_range_rev(&s, lo, hi, &mut |k, _| {
                    back.push(k);
                    Ok(true)
                })
                .unwrap();
                assert!(back.into_iter().eq(m.range(lo..=hi).rev().map(|(k, _)| *k)));
                if step % 8 == 0 {
                    let old = CowTree::new(snapshot.0);
                    let got = old.range(&s, Key::MIN, Key::MAX).unwrap();
                    assert!(got.into_iter().eq(snapshot.1.clone()), "the last committed tree changed");
                }
            }
            check(&t, &s, &m, true);
            commit(&mut t, &mut s);
            check(&t, &s, &m, true);
        }

        proptest! {
            #[test]
            fn random_ops_4k(fanout in prop_oneof![Just(None), Just(Some(3)), Just(Some(4)), Just(Some(7))], ops in ops(4096)) {
                run(4096, fanout, ops);
            }

            #[test]
            fn random_ops_16k(fanout in prop_oneof![Just(None), Just(Some(3)), Just(Some(5))], ops in ops(16384)) {
                run(16384, fanout, ops);
            }
        }
    }
}
