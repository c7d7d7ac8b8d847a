//! Reading B-trees: fetching verified tree blocks (trying every copy), and
//! searching and iterating items in key order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::block::{problem_error, BlockProblem, Expect, TreeBlock};
use crate::error::{CorruptKind, Error, Result};
use crate::format::{CsumType, Key};
use crate::volumes::{ReadCopy, Volume};

/// Where a tree starts: its root block, level and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootPtr {
    pub bytenr: u64,
    pub level: u8,
    pub generation: u64,
    /// The tree's object id, for error messages.
    pub owner: u64,
}

/// A copy that failed verification while another copy served the read.
#[derive(Clone, Debug)]
pub(crate) struct BadCopy {
    pub(crate) logical: u64,
    pub(crate) mirror: usize,
    pub(crate) devid: Option<u64>,
    pub(crate) physical: Option<u64>,
    pub(crate) problem: String,
}

/// Bytes of verified tree blocks kept for reuse: a walk's upper levels stay
/// cached while its leaves pass through. A budget in bytes, not blocks, so
/// that a reader's peak memory is the same whatever the node size (8192
/// blocks of 16 KiB had made every large walk take 128 MiB).
const CACHE_BYTES: usize = 32 << 20;

pub struct TreeReader {
    pub(crate) vol: Arc<Volume>,
    pub(crate) nodesize: u32,
    pub(crate) csum: CsumType,
    pub(crate) fsid: [u8; 16],
    pub(crate) max_generation: u64,
    cache: Mutex<HashMap<u64, Arc<TreeBlock>>>,
    /// Bad copies noticed while reading, for the caller to report.
    pub(crate) bad_copies: Mutex<Vec<BadCopy>>,
}

impl TreeReader {
    pub(crate) fn new(vol: Arc<Volume>) -> Result<Self> {
        let sb = vol.sb;
        Ok(TreeReader {
            nodesize: sb.nodesize.get(),
            csum: sb.csum_kind()?,
            fsid: sb.metadata_fsid(),
            max_generation: sb.generation.get(),
            vol,
            cache: Mutex::new(HashMap::new()),
            bad_copies: Mutex::new(Vec::new()),
        })
    }

    /// Blocks of the running transaction `generation` were written out before
    /// its commit at `addrs`: accept that generation, and drop what the cache
    /// holds at those addresses (a block freed earlier in the transaction
    /// may have been read there).
    pub(crate) fn wrote_uncommitted(&mut self, generation: u64, addrs: impl IntoIterator<Item = u64>) {
        self.max_generation = self.max_generation.max(generation);
        if let Ok(mut c) = self.cache.lock() {
            for a in addrs {
                c.remove(&a);
            }
        }
    }

    /// Read one copy of a tree block and verify it.
    pub(crate) fn read_copy(&self, logical: u64, mirror: usize, expect: Expect) -> std::result::Result<TreeBlock, BlockProblem> {
        let mut buf = vec![0u8; crate::format::usize_of(self.nodesize)];
        if let Err(e) = self.vol.read_copy(logical, &mut buf, mirror) {
            return Err(BlockProblem::Structure(format!("read failed: {e}")));
        }
        TreeBlock::parse(logical, buf, self.csum, &self.fsid, expect)
    }

    /// Forget cached blocks and accept blocks up to `generation`: after this
    /// process committed a transaction, freed addresses may hold new blocks.
    pub(crate) fn committed(&mut self, generation: u64) {
        self.max_generation = generation;
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }

    /// Read a tree block, trying every copy until one verifies.
    pub(crate) fn read_block(&self, logical: u64, expect: Expect, owner: Option<u64>) -> Result<Arc<TreeBlock>> {
        if let Some(b) = self.cache.lock().map_err(|_| poisoned())?.get(&logical) {
            if expect.level.is_none_or(|l| l == b.level()) && expect.generation.is_none_or(|g| g == b.generation()) {
                return Ok(b.clone());
            }
        }
        if logical.checked_rem(u64::from(self.vol.sb.sectorsize.get())) != Some(0) {
            return Err(Error::corrupt(CorruptKind::TreeBlock, format!("tree block {logical}"), "address not sector aligned"));
        }
        let expect = Expect { max_generation: Some(self.max_generation), ..expect };
        let copies = self.vol.num_copies(logical).map_err(|e| e.within(format!("tree block {logical}")))?;
        // Current devices only: a stale device's copy never serves (see
        // ReadCopy::stale), but is named in the error when it is all there is.
        // Copies on missing devices come last, to be reported unreadable.
        let mut order = self.vol.read_order(logical).unwrap_or_default();
        let rest: Vec<ReadCopy> = (0..copies)
            .filter(|m| !order.iter().any(|c| c.mirror == *m))
            .map(|mirror| ReadCopy { mirror, devid: 0, stale: false, lagging: false })
            .collect();
        order.extend(rest);
        let mut problems = Vec::new();
        for ReadCopy { mirror, devid, stale, lagging } in order {
            if stale {
                let generation = self.vol.stale.get(&devid).copied().unwrap_or(0);
                let why = if lagging {
                    format!(
                        "on stale devid {devid}, one commit behind (generation {generation}): not trusted, nothing in \
                         a tree block tells a crash from an older copy or another history (--accept-lagging takes \
                         it as current after a crash)"
                    )
                } else {
                    format!(
                        "on stale devid {devid} (generation {generation}), which may hold another history of this \
                         filesystem: not trusted (put its current image back; `btrs scrub --repair` rebuilds it \
                         from copies on current devices only)"
                    )
                };
                problems.push((mirror, BlockProblem::Untrusted(why)));
                continue;
            }
            let read = self.read_copy(logical, mirror, expect);
            match read {
                Ok(b) => {
                    let b = Arc::new(b);
                    self.note_bad(logical, &problems);
                    let mut cache = self.cache.lock().map_err(|_| poisoned())?;
                    if cache.len() >= CACHE_BYTES.checked_div(crate::format::usize_of(self.nodesize)).unwrap_or(0).max(64) {
                        cache.clear();
                    }
                    cache.insert(logical, b.clone());
                    return Ok(b);
                }
                Err(p) => problems.push((mirror, p)),
            }
        }
        Err(problem_error(logical, owner, &problems))
    }

    fn note_bad(&self, logical: u64, problems: &[(usize, BlockProblem)]) {
        if problems.is_empty() {
            return;
        }
        if let Ok(mut v) = self.bad_copies.lock() {
            for (mirror, p) in problems {
                let loc = self.vol.locate(logical, *mirror).ok();
                v.push(BadCopy {
                    logical,
                    mirror: *mirror,
                    devid: loc.map(|l| l.devid),
                    physical: loc.map(|l| l.physical),
                    problem: p.to_string(),
                });
            }
        }
    }

    pub(crate) fn take_bad_copies(&self) -> Vec<BadCopy> {
        self.bad_copies.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }

    pub fn root_block(&self, root: &RootPtr) -> Result<Arc<TreeBlock>> {
        self.read_block(
            root.bytenr,
            Expect { level: Some(root.level), generation: Some(root.generation), max_generation: None },
            Some(root.owner),
        )
    }

    /// Child `slot` of node `parent`, verified against the parent's pointer.
    pub fn child(&self, parent: &TreeBlock, slot: usize, owner: u64) -> Result<Arc<TreeBlock>> {
        let (key, ptr, gen) = parent.ptr(slot);
        let child = self.read_block(
            ptr,
            // A node's level is 1..MAX_LEVEL (parse() checked it): its children are one below.
            Expect { level: Some(parent.level().saturating_sub(1)), generation: Some(gen), max_generation: None },
            Some(owner),
        )?;
        // The parent's key must be the child's first key; anything else means
        // pointers were swapped or misdirected, and searches would go astray.
        if child.nritems() > 0 && child.key(0) != key {
            return Err(Error::corrupt(
                CorruptKind::TreeBlock,
                format!("tree block {} ({})", parent.logical, tree_label(owner)),
                format!("pointer {slot} key {key} does not match child {ptr}'s first key {}", child.key(0)),
            ));
        }
        Ok(child)
    }

    /// Position a cursor at the first item with key >= `key`.
    pub fn seek(&self, root: &RootPtr, key: Key) -> Result<Cursor<'_>> {
        let mut c = Cursor { reader: self, owner: root.owner, path: Vec::new(), last: None };
        let mut block = self.root_block(root)?;
        loop {
            if block.is_leaf() {
                // First slot with key >= target.
                let slot = match block.slot_le(&key) {
                    Some(s) if block.key(s) == key => s,
                    Some(s) => s.saturating_add(1),
                    None => 0,
                };
                c.path.push((block, slot));
                return Ok(c);
            }
            let slot = block.slot_le(&key).unwrap_or(0);
            let child = self.child(&block, slot, root.owner)?;
            c.path.push((block, slot));
            block = child;
        }
    }

    /// Every item with min <= key <= max, in order.
    pub fn range(&self, root: &RootPtr, min: Key, max: Key) -> Result<Vec<(Key, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut c = self.seek(root, min)?;
        while let Some(item) = c.next_item()? {
            if item.key > max {
                break;
            }
            out.push((item.key, item.data().to_vec()));
        }
        Ok(out)
    }

    /// Body of the item with exactly this key.
    pub fn lookup(&self, root: &RootPtr, key: Key) -> Result<Option<Vec<u8>>> {
        let mut c = self.seek(root, key)?;
        Ok(match c.next_item()? {
            Some(item) if item.key == key => Some(item.data().to_vec()),
            _ => None,
        })
    }

    /// Position a cursor at the last item with key <= `key` (or at the first
    /// item when every key is greater).
    pub(crate) fn seek_le(&self, root: &RootPtr, key: Key) -> Result<Cursor<'_>> {
        let mut c = Cursor { reader: self, owner: root.owner, path: Vec::new(), last: None };
        let mut block = self.root_block(root)?;
        loop {
            let slot = block.slot_le(&key).unwrap_or(0);
            if block.is_leaf() {
                c.path.push((block, slot));
                return Ok(c);
            }
            let child = self.child(&block, slot, root.owner)?;
            c.path.push((block, slot));
            block = child;
        }
    }

    /// The last item with key <= `key` among keys with the same objectid and type.
    pub(crate) fn lookup_le(&self, root: &RootPtr, key: Key) -> Result<Option<(Key, Vec<u8>)>> {
        let mut c = self.seek_le(root, key)?;
        let mut found = None;
        while let Some(item) = c.next_item()? {
            if item.key > key {
                break;
            }
            if item.key.objectid == key.objectid && item.key.item_type == key.item_type {
                found = Some((item.key, item.data().to_vec()));
            }
        }
        Ok(found)
    }
}

fn poisoned() -> Error {
    Error::Internal("tree block cache lock poisoned".into())
}

/// An item found by a cursor: the leaf that holds it and its slot.
pub struct ItemRef {
    pub key: Key,
    pub leaf: Arc<TreeBlock>,
    pub slot: usize,
}

impl ItemRef {
    pub fn data(&self) -> &[u8] {
        self.leaf.item_data(self.slot)
    }
}

/// Walks items in key order from a position; verifies that keys keep
/// increasing across leaves, so a damaged tree cannot make it loop.
pub struct Cursor<'a> {
    reader: &'a TreeReader,
    owner: u64,
    path: Vec<(Arc<TreeBlock>, usize)>,
    last: Option<Key>,
}

impl Cursor<'_> {
    pub fn next_item(&mut self) -> Result<Option<ItemRef>> {
        loop {
            let Some((leaf, slot)) = self.path.last().cloned() else { return Ok(None) };
            if slot < leaf.nritems() {
                if let Some(l) = self.path.last_mut() {
                    l.1 = l.1.saturating_add(1);
                }
                let key = leaf.key(slot);
                if let Some(prev) = self.last {
                    if key <= prev {
                        return Err(Error::corrupt(
                            CorruptKind::TreeBlock,
                            format!("tree block {} ({})", leaf.logical, tree_label(self.owner)),
                            format!("key {key} follows {prev}: tree out of order or looping"),
                        ));
                    }
                }
                self.last = Some(key);
                return Ok(Some(ItemRef { key, leaf, slot }));
            }
            // Leaf exhausted: climb until a node has a next pointer, then descend leftmost.
            self.path.pop();
            loop {
                let Some((node, slot)) = self.path.last_mut() else { return Ok(None) };
                *slot = slot.saturating_add(1);
                if *slot < node.nritems() {
                    let node = node.clone();
                    let slot = *slot;
                    let mut block = self.reader.child(&node, slot, self.owner)?;
                    loop {
                        if block.is_leaf() {
                            self.path.push((block, 0));
                            break;
                        }
                        let child = self.reader.child(&block, 0, self.owner)?;
                        self.path.push((block, 0));
                        block = child;
                    }
                    break;
                }
                self.path.pop();
            }
        }
    }
}

fn tree_label(owner: u64) -> String {
    crate::format::types::tree_name(owner).map(str::to_string).unwrap_or_else(|| format!("tree {owner}"))
}
