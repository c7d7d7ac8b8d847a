//! Bulk tree writer: turns the complete, sorted item set of one tree into
//! checksummed tree blocks (leaves, then nodes level by level).
//!
//! Used where a whole tree is written at once (mkfs) rather than modified in
//! place. The shape of the tree depends only on the item *sizes*
//! ([`count_blocks`]), so a caller can learn how many blocks a tree needs,
//! hand out addresses for them, and only then fill in items that mention
//! those addresses (the extent tree describes its own blocks).

use std::ops::Range;

use super::block::{HEADER_SIZE, ITEM_SIZE, KEY_PTR_SIZE};
use super::encode::{leaf_bytes, node_bytes, BlockFormat, NodePtr};
use crate::error::{Error, Result};
use crate::format::ondisk::*;
use crate::format::{usize_of, Key};

/// One leaf item: its key and its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TreeItem {
    pub(crate) key: Key,
    pub(crate) data: Vec<u8>,
}

impl TreeItem {
    pub(crate) fn new(key: Key, data: Vec<u8>) -> Self {
        TreeItem { key, data }
    }
}

/// What every block of one tree carries: the filesystem's block format
/// (which also says whether sealed blocks pass the tree-checker rules), the
/// generation and the tree id written in every header.
#[derive(Clone, Debug)]
pub(crate) struct BlockParams {
    pub(crate) format: BlockFormat,
    pub(crate) generation: u64,
    /// The tree id written in every header (`btrfs_header.owner`).
    pub(crate) owner: u64,
}

/// Where a finished tree's blocks went: the root, its level, and every
/// block's (address, level) in the order they were written (leaves, then
/// each level of nodes; the root last).
#[derive(Clone, Debug, Default)]
pub(crate) struct PlacedTree {
    pub(crate) root: u64,
    pub(crate) level: u8,
    pub(crate) blocks: Vec<(u64, u8)>,
}

/// A finished tree: every block with its logical address, root last.
#[cfg(test)]
#[derive(Clone, Debug)]
pub(crate) struct BuiltTree {
    pub(crate) root: u64,
    pub(crate) level: u8,
    /// (logical address, level, block bytes).
    pub(crate) blocks: Vec<(u64, u8, Vec<u8>)>,
}

/// Bytes of a leaf available for item headers and data.
pub(crate) fn leaf_data_size(nodesize: u32) -> usize {
    usize_of(nodesize).saturating_sub(HEADER_SIZE)
}

/// The largest item data a leaf can hold (one item alone in a leaf).
pub(crate) fn max_item_size(nodesize: u32) -> usize {
    leaf_data_size(nodesize).saturating_sub(ITEM_SIZE)
}

/// Key pointers that fit in one node.
pub(crate) fn node_capacity(nodesize: u32) -> usize {
    leaf_data_size(nodesize).checked_div(KEY_PTR_SIZE).unwrap_or(0)
}

/// Fill target for leaves and nodes. Sequential inserts in the kernel leave
/// leaves nearly full; we leave a little room (about 1/16) so that the first
/// writes after mount do not split every leaf they touch.
fn fill_target(capacity: usize) -> usize {
    capacity.saturating_sub(capacity.checked_div(16).unwrap_or(0))
}

/// The node levels above `leaves` leaves: for each level (1, 2, ...), the
/// child index ranges of its nodes. Children are spread evenly rather than
/// leaving a nearly empty last node.
fn plan_nodes(leaves: usize, nodesize: u32) -> Result<Vec<Vec<Range<usize>>>> {
    let per_node = fill_target(node_capacity(nodesize)).max(2);
    let mut nodes = Vec::new();
    let mut count = leaves;
    while count > 1 {
        if nodes.len().saturating_add(1) >= usize::from(MAX_LEVEL) {
            return Err(Error::Invalid("tree would be deeper than btrfs allows".into()));
        }
        // OK: per_node >= 2 and count > 1, so n_nodes >= 1.
        #[allow(clippy::arithmetic_side_effects)]
        let (n_nodes, base, extra) = {
            let n = count.div_ceil(per_node);
            (n, count / n, count % n)
        };
        let mut level = Vec::with_capacity(n_nodes);
        let mut s = 0usize;
        for j in 0..n_nodes {
            let len = base.saturating_add(usize::from(j < extra));
            level.push(s..s.saturating_add(len));
            s = s.saturating_add(len);
        }
        count = level.len();
        nodes.push(level);
    }
    Ok(nodes)
}

/// Where a [`LeafStream`]'s blocks go: an address for each block as it is
/// sealed, and the block's bytes.
pub(crate) trait BlockOut {
    /// The address of the next block.
    fn alloc(&mut self) -> Result<u64>;
    /// A sealed block (empty bytes when [`Self::wants_bytes`] is false).
    fn write(&mut self, addr: u64, level: u8, bytes: Vec<u8>) -> Result<()>;
    /// False when only the shape counts: blocks are then not encoded.
    fn wants_bytes(&self) -> bool {
        true
    }
}

/// Counts blocks without making them: addresses 0, 1, 2, ...
#[derive(Default)]
pub(crate) struct CountBlocks {
    pub(crate) blocks: usize,
}

impl BlockOut for CountBlocks {
    fn alloc(&mut self) -> Result<u64> {
        let n = self.blocks;
        self.blocks = self.blocks.saturating_add(1);
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }
    fn write(&mut self, _addr: u64, _level: u8, _bytes: Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn wants_bytes(&self) -> bool {
        false
    }
}

/// Builds one tree from its items as they arrive in key order: each leaf is
/// sealed and handed out as soon as it is full, so only one leaf and the
/// first key and address of every leaf are held; the nodes above are made
/// by [`Self::finish`]. The shape depends only on the items' sizes, so a
/// counting pass ([`CountBlocks`]) and the writing pass agree.
pub(crate) struct LeafStream {
    params: BlockParams,
    cap: usize,
    target: usize,
    items: Vec<(Key, Vec<u8>)>,
    used: usize,
    last: Option<Key>,
    pushed: usize,
    /// (first key, address) of every sealed leaf.
    leaves: Vec<(Key, u64)>,
    blocks: Vec<(u64, u8)>,
}

impl LeafStream {
    pub(crate) fn new(params: BlockParams) -> Self {
        let cap = leaf_data_size(params.format.nodesize);
        LeafStream {
            params,
            cap,
            target: fill_target(cap),
            items: Vec::new(),
            used: 0,
            last: None,
            pushed: 0,
            leaves: Vec::new(),
            blocks: Vec::new(),
        }
    }

    /// The next item; its key must be greater than every earlier one.
    pub(crate) fn push(&mut self, key: Key, data: Vec<u8>, out: &mut dyn BlockOut) -> Result<()> {
        if let Some(last) = self.last {
            if key <= last {
                return Err(Error::Invalid(format!("tree {}: keys out of order or duplicated: {last} then {key}", self.params.owner)));
            }
        }
        let need = data.len().saturating_add(ITEM_SIZE);
        if need > self.cap {
            return Err(Error::Invalid(format!(
                "tree {}: item {} ({key}) of {} bytes does not fit in a {}-byte tree block",
                self.params.owner,
                self.pushed,
                data.len(),
                self.params.format.nodesize
            )));
        }
        // Start a new leaf when this item would pass the fill target, unless
        // the leaf is empty (a large item then gets a leaf to itself).
        if !self.items.is_empty() && self.used.saturating_add(need) > self.target {
            self.seal(out)?;
        }
        self.used = self.used.saturating_add(need);
        self.items.push((key, data));
        self.last = Some(key);
        self.pushed = self.pushed.saturating_add(1);
        Ok(())
    }

    fn seal(&mut self, out: &mut dyn BlockOut) -> Result<()> {
        let addr = out.alloc()?;
        let p = &self.params;
        let block = if out.wants_bytes() {
            leaf_bytes(&p.format, addr, p.generation, p.owner, self.items.iter().map(|(k, d)| (*k, d.as_slice())))?
        } else {
            Vec::new()
        };
        self.leaves.push((self.items.first().map_or(Key::MIN, |i| i.0), addr));
        self.blocks.push((addr, 0));
        out.write(addr, 0, block)?;
        self.items.clear();
        self.used = 0;
        Ok(())
    }

    /// Seal the last leaf (an empty tree is one empty leaf) and make the
    /// nodes above, level by level.
    pub(crate) fn finish(mut self, out: &mut dyn BlockOut) -> Result<PlacedTree> {
        if !self.items.is_empty() || self.leaves.is_empty() {
            self.seal(out)?;
        }
        let p = self.params.clone();
        let mut below = std::mem::take(&mut self.leaves);
        let mut level_no = 0u8;
        for level in plan_nodes(below.len(), p.format.nodesize)? {
            level_no = level_no.saturating_add(1);
            let mut this = Vec::with_capacity(level.len());
            for range in level {
                let addr = out.alloc()?;
                let children = below.get(range).ok_or_else(|| Error::Invalid("tree plan past its blocks".into()))?;
                let block = if out.wants_bytes() {
                    let ptrs: Vec<NodePtr> =
                        children.iter().map(|&(key, blockptr)| NodePtr { key, blockptr, generation: p.generation }).collect();
                    node_bytes(&p.format, addr, p.generation, p.owner, level_no, &ptrs)?
                } else {
                    Vec::new()
                };
                this.push((children.first().map_or(Key::MIN, |c| c.0), addr));
                self.blocks.push((addr, level_no));
                out.write(addr, level_no, block)?;
            }
            below = this;
        }
        let root = below.first().map(|b| b.1).ok_or_else(|| Error::Invalid("empty tree plan".into()))?;
        Ok(PlacedTree { root, level: level_no, blocks: self.blocks })
    }
}

/// Number of blocks a tree with items of these sizes (in key order) needs.
pub(crate) fn count_blocks(item_sizes: &[usize], nodesize: u32) -> Result<usize> {
    count_blocks_of(item_sizes.iter().copied(), nodesize)
}

/// Like [`count_blocks`], for sizes that arrive one by one.
pub(crate) fn count_blocks_of(item_sizes: impl Iterator<Item = usize>, nodesize: u32) -> Result<usize> {
    Ok(block_levels(item_sizes, nodesize)?.len())
}

/// The level of each block of a tree with items of these sizes (in key
/// order), in the order its blocks are handed addresses.
pub(crate) fn block_levels(item_sizes: impl Iterator<Item = usize>, nodesize: u32) -> Result<Vec<u8>> {
    // Only the shape is wanted: the format and keys are stand-ins.
    let format = BlockFormat::new(nodesize, crate::format::CsumType::Crc32c, [0; 16], [0; 16])?;
    let mut s = LeafStream::new(BlockParams { format, generation: 0, owner: 0 });
    let mut out = CountBlocks::default();
    for (n, size) in item_sizes.enumerate() {
        s.push(Key::new(u64::try_from(n).unwrap_or(u64::MAX), 0, 0), vec![0; size], &mut out)?;
    }
    Ok(s.finish(&mut out)?.blocks.into_iter().map(|b| b.1).collect())
}

/// Hands out a fixed list of addresses (plan order: leaves, then nodes
/// bottom-up) and passes blocks on to a sink.
pub(crate) struct GivenAddrs<'a> {
    addrs: std::slice::Iter<'a, u64>,
    sink: &'a mut dyn FnMut(u64, u8, Vec<u8>) -> Result<()>,
}

impl<'a> GivenAddrs<'a> {
    pub(crate) fn new(addrs: &'a [u64], sink: &'a mut dyn FnMut(u64, u8, Vec<u8>) -> Result<()>) -> Self {
        GivenAddrs { addrs: addrs.iter(), sink }
    }

    /// The tree is finished: every address planned must have been used.
    pub(crate) fn check_all_used(&self, owner: u64, placed: &PlacedTree) -> Result<()> {
        if self.addrs.len() != 0 {
            return Err(Error::Invalid(format!(
                "tree {owner}: {} blocks planned, {} made (internal)",
                self.addrs.len().saturating_add(placed.blocks.len()),
                placed.blocks.len()
            )));
        }
        Ok(())
    }
}

impl BlockOut for GivenAddrs<'_> {
    fn alloc(&mut self) -> Result<u64> {
        self.addrs.next().copied().ok_or_else(|| Error::Invalid("a tree needs more blocks than planned (internal)".into()))
    }
    fn write(&mut self, addr: u64, level: u8, bytes: Vec<u8>) -> Result<()> {
        (self.sink)(addr, level, bytes)
    }
}

/// Build the blocks of a tree. `items` must be sorted by key with no
/// duplicates; `addrs` gives one logical address per block in plan order
/// (leaves, then nodes bottom-up; the root is the last address).
#[cfg(test)]
pub(crate) fn build_tree(items: &[TreeItem], params: &BlockParams, addrs: &[u64]) -> Result<BuiltTree> {
    let mut blocks = Vec::new();
    let placed = build_tree_into(items.iter().map(|i| Ok((i.key, i.data.clone()))), params.clone(), addrs, &mut |a, l, b| {
        blocks.push((a, l, b));
        Ok(())
    })?;
    Ok(BuiltTree { root: placed.root, level: placed.level, blocks })
}

/// Build a tree of `items` (in key order) at the planned `addrs`, handing
/// each block to `sink` (address, level, bytes) as soon as it is made.
/// Every address must be used.
pub(crate) fn build_tree_into(
    items: impl IntoIterator<Item = Result<(Key, Vec<u8>)>>,
    params: BlockParams,
    addrs: &[u64],
    sink: &mut dyn FnMut(u64, u8, Vec<u8>) -> Result<()>,
) -> Result<PlacedTree> {
    let owner = params.owner;
    let mut out = GivenAddrs::new(addrs, sink);
    let mut s = LeafStream::new(params);
    for item in items {
        let (k, v) = item?;
        s.push(k, v, &mut out)?;
    }
    let placed = s.finish(&mut out)?;
    out.check_all_used(owner, &placed)?;
    Ok(placed)
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;
    use crate::format::CsumType;
    use crate::tree::block::{Expect, TreeBlock};

    fn params(nodesize: u32) -> BlockParams {
        BlockParams { format: BlockFormat::new(nodesize, CsumType::Crc32c, [7; 16], [9; 16]).unwrap(), generation: 3, owner: 5 }
    }

    #[test]
    fn empty_tree_is_one_leaf() {
        let t = build_tree(&[], &params(4096), &[4096 * 10]).unwrap();
        assert_eq!(t.level, 0);
        assert_eq!(t.blocks.len(), 1);
        let b = TreeBlock::parse(40960, t.blocks[0].2.clone(), CsumType::Crc32c, &[7; 16], Expect::default()).unwrap();
        assert_eq!(b.nritems(), 0);
    }

    #[test]
    fn many_items_make_a_valid_multilevel_tree() {
        let items: Vec<TreeItem> = (0..5000u64).map(|i| TreeItem::new(Key::new(256 + i, 1, 0), vec![i as u8; 160])).collect();
        let sizes: Vec<usize> = items.iter().map(|i| i.data.len()).collect();
        let n = count_blocks(&sizes, 4096).unwrap();
        let addrs: Vec<u64> = (0..n as u64).map(|i| (100 + i) * 4096).collect();
        let t = build_tree(&items, &params(4096), &addrs).unwrap();
        assert!(t.level >= 2);
        assert_eq!(t.root, *addrs.last().unwrap());
        let mut seen = 0;
        for (addr, level, bytes) in &t.blocks {
            let b = TreeBlock::parse(*addr, bytes.clone(), CsumType::Crc32c, &[7; 16], Expect::default()).unwrap();
            assert_eq!(b.level(), *level);
            if *level == 0 {
                for i in 0..b.nritems() {
                    assert_eq!(b.key(i), items[seen].key);
                    assert_eq!(b.item_data(i), &items[seen].data[..]);
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, items.len());
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let items = vec![TreeItem::new(Key::new(1, 1, 1), vec![]), TreeItem::new(Key::new(1, 1, 1), vec![])];
        assert!(build_tree(&items, &params(4096), &[4096, 8192]).is_err());
    }
}
