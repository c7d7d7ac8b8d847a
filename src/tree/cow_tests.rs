//! Tests of the copy-on-write tree ([`super`]): random edits against a
//! `BTreeMap` model, damage, allocation failures, fixtures.

use super::*;
use crate::format::{CsumType, CSUM_TREE_OBJECTID, EXTENT_DATA_KEY, FS_TREE_OBJECTID};
use crate::tree::block::HEADER_SIZE;
use std::collections::{BTreeMap, HashMap, HashSet};

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

use crate::fs::testutil::open_fixture;

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
    let fmt = BlockFormat::new(sb.nodesize.get(), fs.csum, sb.metadata_fsid(), fs.reader.root_block(&root).unwrap().header.chunk_tree_uuid)
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
        let b =
            TreeBlock::parse(addr, bytes, fmt.csum, &fmt.fsid, Expect { generation: Some(store.transid), ..Expect::default() }).unwrap();
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
