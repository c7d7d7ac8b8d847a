//! Editable in-memory forms of tree blocks for the write path: leaves and nodes.
//!
//! A parsed [`TreeBlock`] is an immutable view of bytes; the copy-on-write code
//! instead edits blocks as plain vectors (items, or key pointers) and turns them
//! back into bytes only when the transaction commits, through the one
//! serializer in [`super::encode`]. Keeping the editable form free of offsets
//! means a leaf can never hold a gap or an overlap: the layout is computed
//! once, when it is serialized.

use super::block::{TreeBlock, HEADER_SIZE};
use super::encode::{internal, leaf_bytes, leaf_item_size, node_bytes, BlockFormat, NodePtr};
use crate::error::{CorruptKind, Error, Result};
use crate::format::{Key, MAX_LEVEL};

/// A leaf as a sorted list of (key, body).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EditLeaf {
    pub(crate) items: Vec<(Key, Vec<u8>)>,
}

/// An internal node: level >= 1 and its sorted child pointers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EditNode {
    pub(crate) level: u8,
    pub(crate) ptrs: Vec<NodePtr>,
}

/// Either kind of block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EditBlock {
    Leaf(EditLeaf),
    Node(EditNode),
}

impl EditLeaf {
    /// Bytes of the leaf data area in use (the kernel's leaf_space_used over all items).
    pub(crate) fn used(&self) -> usize {
        self.items.iter().map(|(_, d)| leaf_item_size(d.len())).sum()
    }

    pub(crate) fn fits(&self, fmt: &BlockFormat) -> bool {
        self.used() <= fmt.leaf_data_size()
    }

    /// `Ok(slot)` of the key, or `Err(slot)` where it would be inserted.
    pub(crate) fn search(&self, key: &Key) -> std::result::Result<usize, usize> {
        self.items.binary_search_by(|(k, _)| k.cmp(key))
    }

    pub(crate) fn first_key(&self) -> Option<Key> {
        self.items.first().map(|(k, _)| *k)
    }

    /// Copy a parsed leaf. `TreeBlock::parse` has bounded every item already.
    pub(crate) fn from_block(b: &TreeBlock) -> Result<Self> {
        if !b.is_leaf() {
            return Err(Error::corrupt(CorruptKind::TreeBlock, format!("tree block {}", b.logical), "expected a leaf, found a node"));
        }
        let leaf = EditLeaf { items: (0..b.nritems()).map(|i| (b.key(i), b.item_data(i).to_vec())).collect() };
        // Parsing bounds each item but allows overlaps; overlapping bodies would
        // not fit once laid out contiguously.
        if leaf.used() > b.bytes().len().saturating_sub(HEADER_SIZE) {
            return Err(Error::corrupt(CorruptKind::TreeBlock, format!("tree block {}", b.logical), "leaf items overlap"));
        }
        Ok(leaf)
    }

    /// Serialize with a full header and checksum.
    pub(crate) fn to_bytes(&self, fmt: &BlockFormat, logical: u64, generation: u64, owner: u64) -> Result<Vec<u8>> {
        if !self.fits(fmt) {
            return Err(internal(format!("leaf {logical} holds {} bytes, more than {}", self.used(), fmt.leaf_data_size())));
        }
        leaf_bytes(fmt, logical, generation, owner, self.items.iter().map(|(k, d)| (*k, d.as_slice())))
    }
}

impl EditNode {
    pub(crate) fn first_key(&self) -> Option<Key> {
        self.ptrs.first().map(|p| p.key)
    }

    /// Pointer `slot`, to change; a slot past the end is a write-path bug.
    pub(crate) fn ptr_mut(&mut self, slot: usize) -> Result<&mut NodePtr> {
        let n = self.ptrs.len();
        self.ptrs.get_mut(slot).ok_or_else(|| internal(format!("node pointer {slot} of {n}")))
    }

    /// Index of the child whose key range holds `key` (slot 0 for keys below the first).
    pub(crate) fn child_slot(&self, key: &Key) -> usize {
        self.ptrs.partition_point(|p| p.key <= *key).saturating_sub(1)
    }

    pub(crate) fn from_block(b: &TreeBlock) -> Result<Self> {
        if b.is_leaf() {
            return Err(Error::corrupt(CorruptKind::TreeBlock, format!("tree block {}", b.logical), "expected a node, found a leaf"));
        }
        let ptrs = (0..b.nritems())
            .map(|i| {
                let (key, blockptr, generation) = b.ptr(i);
                NodePtr { key, blockptr, generation }
            })
            .collect();
        Ok(EditNode { level: b.level(), ptrs })
    }

    pub(crate) fn to_bytes(&self, fmt: &BlockFormat, logical: u64, generation: u64, owner: u64) -> Result<Vec<u8>> {
        // An empty node is refused by every reader (tree-checker: nritems >= 1).
        if self.ptrs.is_empty() || self.ptrs.len() > fmt.max_node_ptrs() {
            return Err(internal(format!("node {logical} with {} pointers", self.ptrs.len())));
        }
        if self.level == 0 || self.level >= MAX_LEVEL {
            return Err(internal(format!("node {logical} at level {}", self.level)));
        }
        node_bytes(fmt, logical, generation, owner, self.level, &self.ptrs)
    }
}

impl EditBlock {
    pub(crate) fn from_block(b: &TreeBlock) -> Result<Self> {
        Ok(if b.is_leaf() { EditBlock::Leaf(EditLeaf::from_block(b)?) } else { EditBlock::Node(EditNode::from_block(b)?) })
    }

    pub(crate) fn level(&self) -> u8 {
        match self {
            EditBlock::Leaf(_) => 0,
            EditBlock::Node(n) => n.level,
        }
    }

    pub(crate) fn first_key(&self) -> Option<Key> {
        match self {
            EditBlock::Leaf(l) => l.first_key(),
            EditBlock::Node(n) => n.first_key(),
        }
    }

    pub(crate) fn to_bytes(&self, fmt: &BlockFormat, logical: u64, generation: u64, owner: u64) -> Result<Vec<u8>> {
        match self {
            EditBlock::Leaf(l) => l.to_bytes(fmt, logical, generation, owner),
            EditBlock::Node(n) => n.to_bytes(fmt, logical, generation, owner),
        }
    }
}

/// Trees the kernel's tree-checker refuses to see as one empty leaf: every
/// filesystem has items in them (the extent tree only without extent-tree-v2,
/// which btrs does not write).
pub(crate) fn must_not_be_empty(owner: u64) -> bool {
    use crate::format::{
        CHUNK_TREE_OBJECTID, DATA_RELOC_TREE_OBJECTID, DEV_TREE_OBJECTID, EXTENT_TREE_OBJECTID, FS_TREE_OBJECTID, ROOT_TREE_OBJECTID,
    };
    matches!(
        owner,
        ROOT_TREE_OBJECTID | CHUNK_TREE_OBJECTID | DEV_TREE_OBJECTID | FS_TREE_OBJECTID | DATA_RELOC_TREE_OBJECTID | EXTENT_TREE_OBJECTID
    )
}

/// Split a sequence of element sizes into contiguous groups, each of at most
/// `cap` bytes, preferring as few groups as possible and then the most even
/// split (the largest group as small as possible). Returns the start index of
/// every group after the first; empty when everything fits in one group.
///
/// Two groups always suffice when the sequence came from one full block plus
/// one element; three when that element is large and lands in the middle (the
/// kernel's "double split"). A greedy packing is the fallback for anything else.
pub(crate) fn split_points(sizes: &[usize], cap: usize) -> Result<Vec<usize>> {
    let total: usize = sizes.iter().sum();
    if total <= cap {
        return Ok(Vec::new());
    }
    if sizes.iter().any(|&s| s > cap) {
        return Err(internal(format!("an element of {} bytes exceeds a block's {cap}", sizes.iter().max().unwrap_or(&0))));
    }
    // Sizes are items of one block: their sums are far below usize::MAX.
    let mut prefix = Vec::with_capacity(sizes.len().saturating_add(1));
    let mut run = 0usize;
    prefix.push(run);
    for s in sizes {
        run = run.saturating_add(*s);
        prefix.push(run);
    }
    let n = sizes.len();
    let at = |i: usize| prefix.get(i).copied().unwrap_or(0);
    let sum = |a: usize, b: usize| at(b).saturating_sub(at(a));
    // Two groups: [0, k) and [k, n).
    let best2 = (1..n).filter(|&k| sum(0, k) <= cap && sum(k, n) <= cap).min_by_key(|&k| sum(0, k).max(sum(k, n)));
    if let Some(k) = best2 {
        return Ok(vec![k]);
    }
    // Three groups. n is at most a few hundred, so the quadratic search is cheap.
    let mut best3: Option<(usize, usize, usize)> = None;
    for a in 1..n {
        if sum(0, a) > cap {
            break;
        }
        for b in a.saturating_add(1)..n {
            if sum(a, b) > cap {
                break;
            }
            if sum(b, n) <= cap {
                let worst = sum(0, a).max(sum(a, b)).max(sum(b, n));
                if best3.is_none_or(|(_, _, w)| worst < w) {
                    best3 = Some((a, b, worst));
                }
            }
        }
    }
    if let Some((a, b, _)) = best3 {
        return Ok(vec![a, b]);
    }
    let mut points = Vec::new();
    let mut acc = 0usize;
    for (i, &s) in sizes.iter().enumerate() {
        if acc.saturating_add(s) > cap {
            points.push(i);
            acc = 0;
        }
        acc = acc.saturating_add(s);
    }
    Ok(points)
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;
    use crate::format::CsumType;
    use crate::tree::block::Expect;

    pub(crate) fn fmt(nodesize: u32) -> BlockFormat {
        BlockFormat::new(nodesize, CsumType::Crc32c, [7; 16], [9; 16]).unwrap()
    }

    #[test]
    fn leaf_layout_packs_from_the_end() {
        let f = fmt(4096);
        let leaf =
            EditLeaf { items: vec![(Key::new(256, 1, 0), vec![1; 10]), (Key::new(256, 12, 0), vec![]), (Key::new(257, 1, 0), vec![3; 7])] };
        let bytes = leaf.to_bytes(&f, 1 << 20, 5, 5).unwrap();
        let b = TreeBlock::parse(1 << 20, bytes, f.csum, &f.fsid, Expect { level: Some(0), generation: Some(5), max_generation: None })
            .unwrap();
        let end = f.leaf_data_size() as u32;
        assert_eq!(b.item_location(0), (end - 10, 10));
        assert_eq!(b.item_location(1), (end - 10, 0));
        assert_eq!(b.item_location(2), (end - 17, 7));
        assert_eq!(b.header.flags.get(), 1 | (1 << 56));
        assert_eq!(b.header.chunk_tree_uuid, [9; 16]);
        assert_eq!(b.owner(), 5);
        assert_eq!(EditLeaf::from_block(&b).unwrap(), leaf);
    }

    #[test]
    fn node_round_trip_and_refusals() {
        let f = fmt(4096);
        let node = EditNode {
            level: 2,
            ptrs: vec![
                NodePtr { key: Key::new(1, 1, 1), blockptr: 4096, generation: 3 },
                NodePtr { key: Key::new(2, 1, 1), blockptr: 8192, generation: 4 },
            ],
        };
        let bytes = node.to_bytes(&f, 65536, 4, 2).unwrap();
        let b = TreeBlock::parse(65536, bytes, f.csum, &f.fsid, Expect::default()).unwrap();
        assert_eq!(EditNode::from_block(&b).unwrap(), node);
        assert!(EditLeaf::from_block(&b).is_err());
        assert!(EditNode { level: 1, ptrs: vec![] }.to_bytes(&f, 65536, 4, 2).is_err());
        let full = EditLeaf { items: vec![(Key::MIN, vec![0; f.max_item_data() + 1])] };
        assert!(full.to_bytes(&f, 65536, 4, 2).is_err());
        assert!(BlockFormat::new(1000, CsumType::Crc32c, [0; 16], [0; 16]).is_err());
    }

    #[test]
    fn split_points_prefer_two_even_groups() {
        assert_eq!(split_points(&[10, 10, 10], 30).unwrap(), Vec::<usize>::new());
        assert_eq!(split_points(&[10, 10, 10, 10], 30).unwrap(), vec![2]);
        // A big element in the middle needs a group of its own.
        assert_eq!(split_points(&[10, 10, 25, 10, 10], 30).unwrap(), vec![2, 3]);
        assert!(split_points(&[31], 30).is_err());
    }
}
