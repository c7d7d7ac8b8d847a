//! Bulk tree writer: turns the complete, sorted item set of one tree into
//! checksummed tree blocks (leaves, then nodes level by level).
//!
//! Used where a whole tree is written at once (mkfs, fixtures) rather than
//! modified in place. The shape of the tree depends only on the item *sizes*
//! ([`plan_tree`]), so a caller can learn how many blocks a tree needs, hand
//! out addresses for them, and only then fill in items that mention those
//! addresses (the extent tree describes its own blocks).

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

/// Where the tree's blocks go, leaves first, then each level of nodes; the
/// root is the last block.
#[derive(Clone, Debug)]
pub(crate) struct TreePlan {
    /// Item index ranges, one per leaf.
    pub(crate) leaves: Vec<Range<usize>>,
    /// For each node level (1, 2, ...): child index ranges, one per node.
    pub(crate) nodes: Vec<Vec<Range<usize>>>,
}

impl TreePlan {
    pub(crate) fn block_count(&self) -> usize {
        self.nodes.iter().map(Vec::len).fold(self.leaves.len(), usize::saturating_add)
    }

    /// Level of the root block.
    pub(crate) fn root_level(&self) -> u8 {
        // OK: plan_tree makes at most MAX_LEVEL - 1 node levels.
        u8::try_from(self.nodes.len()).unwrap_or(u8::MAX)
    }
}

/// A finished tree: every block with its logical address, root last.
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

/// Split a tree with items of the given data sizes into leaves and nodes.
pub(crate) fn plan_tree(item_sizes: &[usize], nodesize: u32) -> Result<TreePlan> {
    let cap = leaf_data_size(nodesize);
    let target = fill_target(cap);
    let mut leaves = Vec::new();
    let mut start = 0;
    let mut used = 0usize;
    for (i, &size) in item_sizes.iter().enumerate() {
        let need = size.saturating_add(ITEM_SIZE);
        if need > cap {
            return Err(Error::Invalid(format!("item {i} of {size} bytes does not fit in a {nodesize}-byte tree block")));
        }
        // Start a new leaf when this item would pass the fill target, unless
        // the leaf is empty (a large item then gets a leaf to itself).
        if i > start && used.saturating_add(need) > target {
            leaves.push(start..i);
            start = i;
            used = 0;
        }
        used = used.saturating_add(need);
    }
    if start < item_sizes.len() || leaves.is_empty() {
        // An empty tree is one empty leaf.
        leaves.push(start..item_sizes.len());
    }
    let per_node = fill_target(node_capacity(nodesize)).max(2);
    let mut nodes = Vec::new();
    let mut count = leaves.len();
    while count > 1 {
        if nodes.len().saturating_add(1) >= usize::from(MAX_LEVEL) {
            return Err(Error::Invalid("tree would be deeper than btrfs allows".into()));
        }
        // Spread children evenly rather than leaving a nearly empty last node.
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
    Ok(TreePlan { leaves, nodes })
}

/// Number of blocks a tree with items of these sizes needs.
pub(crate) fn count_blocks(item_sizes: &[usize], nodesize: u32) -> Result<usize> {
    Ok(plan_tree(item_sizes, nodesize)?.block_count())
}

/// Build the blocks of a tree. `items` must be sorted by key with no
/// duplicates; `addrs` gives one logical address per block in plan order
/// (leaves, then nodes bottom-up; the root is the last address).
#[cfg(test)]
pub(crate) fn build_tree(items: &[TreeItem], params: &BlockParams, addrs: &[u64]) -> Result<BuiltTree> {
    let mut blocks = Vec::new();
    let (root, level) = build_tree_into(items, params, addrs, &mut |a, l, b| {
        blocks.push((a, l, b));
        Ok(())
    })?;
    Ok(BuiltTree { root, level, blocks })
}

/// Like [`build_tree`], handing each block to `sink` (address, level, bytes)
/// as soon as it is made instead of keeping them all: a large tree need not
/// be in memory twice. Returns the root address and level.
pub(crate) fn build_tree_into(
    items: &[TreeItem],
    params: &BlockParams,
    addrs: &[u64],
    sink: &mut dyn FnMut(u64, u8, Vec<u8>) -> Result<()>,
) -> Result<(u64, u8)> {
    for (a, b) in items.iter().zip(items.iter().skip(1)) {
        if a.key >= b.key {
            return Err(Error::Invalid(format!("tree {}: keys out of order or duplicated: {} then {}", params.owner, a.key, b.key)));
        }
    }
    let sizes: Vec<usize> = items.iter().map(|i| i.data.len()).collect();
    let plan = plan_tree(&sizes, params.format.nodesize)?;
    if addrs.len() != plan.block_count() {
        return Err(Error::Invalid(format!("tree {}: {} addresses for {} blocks", params.owner, addrs.len(), plan.block_count())));
    }
    let mut next_addr = addrs.iter().copied();
    let mut take_addr = || next_addr.next().ok_or_else(|| Error::Invalid("ran out of block addresses".into()));
    // (first key, address) of each block of the level below.
    let mut below: Vec<(Key, u64)> = Vec::with_capacity(plan.leaves.len());
    for range in &plan.leaves {
        let addr = take_addr()?;
        let leaf = items.get(range.clone()).ok_or_else(|| Error::Invalid("tree plan past its items".into()))?;
        let block = leaf_bytes(&params.format, addr, params.generation, params.owner, leaf.iter().map(|i| (i.key, i.data.as_slice())))?;
        let first = items.get(range.start).map(|i| i.key).unwrap_or(Key::MIN);
        below.push((first, addr));
        sink(addr, 0u8, block)?;
    }
    for (level_no, level) in (1u8..).zip(&plan.nodes) {
        let mut this = Vec::with_capacity(level.len());
        for range in level {
            let addr = take_addr()?;
            let children = below.get(range.clone()).ok_or_else(|| Error::Invalid("tree plan past its blocks".into()))?;
            let ptrs: Vec<NodePtr> =
                children.iter().map(|&(key, blockptr)| NodePtr { key, blockptr, generation: params.generation }).collect();
            let block = node_bytes(&params.format, addr, params.generation, params.owner, level_no, &ptrs)?;
            this.push((children.first().map(|c| c.0).unwrap_or(Key::MIN), addr));
            sink(addr, level_no, block)?;
        }
        below = this;
    }
    let root = below.first().map(|b| b.1).ok_or_else(|| Error::Invalid("empty tree plan".into()))?;
    Ok((root, plan.root_level()))
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
