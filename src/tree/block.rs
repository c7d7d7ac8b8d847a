//! A tree block (node or leaf) held in memory, with its item table checked once
//! so that every accessor afterwards is in bounds.

use zerocopy::FromBytes;

use crate::error::{CorruptKind, Error};
use crate::format::usize_of;
use crate::format::{CsumType, Header, Item, Key, KeyPtr, MAX_LEVEL};

pub(crate) const HEADER_SIZE: usize = std::mem::size_of::<Header>();
pub(crate) const ITEM_SIZE: usize = std::mem::size_of::<Item>();
pub(crate) const KEY_PTR_SIZE: usize = std::mem::size_of::<KeyPtr>();

#[derive(Debug, Clone)]
pub struct TreeBlock {
    pub logical: u64,
    pub header: Header,
    data: Box<[u8]>,
}

/// What a reader expects of a tree block, from the pointer that led to it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect {
    pub(crate) level: Option<u8>,
    pub(crate) generation: Option<u64>,
    /// Blocks may not be newer than the superblock that reaches them.
    pub(crate) max_generation: Option<u64>,
}

/// Why one copy of a tree block was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockProblem {
    Csum,
    Bytenr(u64),
    Fsid,
    Level {
        found: u8,
        expected: u8,
    },
    Generation {
        found: u64,
        expected: u64,
    },
    TooNew {
        found: u64,
        max: u64,
    },
    Structure(String),
    /// The copy is on a stale device (the words say which and why).
    Untrusted(String),
}

impl std::fmt::Display for BlockProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockProblem::Csum => write!(f, "checksum mismatch"),
            BlockProblem::Bytenr(b) => write!(f, "header bytenr {b} does not match"),
            BlockProblem::Fsid => write!(f, "header fsid does not match the filesystem"),
            BlockProblem::Level { found, expected } => write!(f, "level {found}, expected {expected}"),
            BlockProblem::Generation { found, expected } => {
                write!(f, "generation {found}, parent pointer says {expected} (stale or misdirected write)")
            }
            BlockProblem::TooNew { found, max } => write!(f, "generation {found} newer than superblock {max}"),
            BlockProblem::Structure(s) | BlockProblem::Untrusted(s) => write!(f, "{s}"),
        }
    }
}

impl TreeBlock {
    /// Verify identity (checksum, bytenr, fsid, level, generation) and structure.
    pub fn parse(
        logical: u64,
        data: Vec<u8>,
        csum: CsumType,
        fsid: &[u8; 16],
        expect: Expect,
    ) -> std::result::Result<TreeBlock, BlockProblem> {
        let header = Header::read_from_prefix(&data).map_err(|_| BlockProblem::Structure("block shorter than a header".into()))?.0;
        let region = data.get(32..).unwrap_or(&[]);
        if !csum.matches(&csum.compute(region), &header.csum) {
            return Err(BlockProblem::Csum);
        }
        if header.bytenr.get() != logical {
            return Err(BlockProblem::Bytenr(header.bytenr.get()));
        }
        if &header.fsid != fsid {
            return Err(BlockProblem::Fsid);
        }
        if let Some(l) = expect.level {
            if header.level != l {
                return Err(BlockProblem::Level { found: header.level, expected: l });
            }
        }
        if let Some(g) = expect.generation {
            if header.generation.get() != g {
                return Err(BlockProblem::Generation { found: header.generation.get(), expected: g });
            }
        }
        if let Some(max) = expect.max_generation {
            if header.generation.get() > max {
                return Err(BlockProblem::TooNew { found: header.generation.get(), max });
            }
        }
        let block = TreeBlock { logical, header, data: data.into_boxed_slice() };
        block.check_structure().map_err(BlockProblem::Structure)?;
        Ok(block)
    }

    fn check_structure(&self) -> std::result::Result<(), String> {
        let level = self.header.level;
        if level >= MAX_LEVEL {
            return Err(format!("level {level} out of range"));
        }
        let n = self.nritems();
        let space = self.data.len().saturating_sub(HEADER_SIZE);
        if level == 0 {
            let table_end = n.saturating_mul(ITEM_SIZE);
            if table_end > space {
                return Err(format!("{n} items do not fit in a leaf"));
            }
            let mut prev: Option<Key> = None;
            for i in 0..n {
                let item = self.raw_item(i);
                let off = usize_of(item.offset.get());
                let size = usize_of(item.size.get());
                if off < table_end || off.checked_add(size).is_none_or(|e| e > space) {
                    return Err(format!("item {i} data [{off}, +{size}) outside the leaf data area"));
                }
                let key = Key::from_disk(&item.key);
                if prev.is_some_and(|p| p >= key) {
                    return Err(format!("item {i} key {key} not above the previous key"));
                }
                prev = Some(key);
            }
        } else {
            if n == 0 {
                return Err("node with no pointers".into());
            }
            if n.saturating_mul(KEY_PTR_SIZE) > space {
                return Err(format!("{n} pointers do not fit in a node"));
            }
            let mut prev: Option<Key> = None;
            for i in 0..n {
                let (key, ptr, _) = self.ptr(i);
                if ptr == 0 {
                    return Err(format!("pointer {i} is 0"));
                }
                if prev.is_some_and(|p| p >= key) {
                    return Err(format!("pointer {i} key {key} not above the previous key"));
                }
                prev = Some(key);
            }
        }
        Ok(())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    pub(crate) fn level(&self) -> u8 {
        self.header.level
    }

    pub fn is_leaf(&self) -> bool {
        self.header.level == 0
    }

    pub fn nritems(&self) -> usize {
        usize_of(self.header.nritems.get())
    }

    pub(crate) fn generation(&self) -> u64 {
        self.header.generation.get()
    }

    pub(crate) fn owner(&self) -> u64 {
        self.header.owner.get()
    }

    fn raw_item(&self, i: usize) -> Item {
        // In bounds for i < nritems: parse() checked nritems against the block size.
        let at = i.saturating_mul(ITEM_SIZE).saturating_add(HEADER_SIZE);
        Item::read_from_prefix(self.data.get(at..).unwrap_or_default()).map(|(v, _)| v).unwrap_or_else(|_| unreachable_item())
    }

    /// Key of item `i` (leaf) or pointer `i` (node). `i` must be < nritems.
    pub fn key(&self, i: usize) -> Key {
        if self.is_leaf() {
            Key::from_disk(&self.raw_item(i).key)
        } else {
            self.ptr(i).0
        }
    }

    /// Body of leaf item `i`.
    pub fn item_data(&self, i: usize) -> &[u8] {
        let item = self.raw_item(i);
        // In bounds: parse() checked every item's range against the leaf.
        let start = usize_of(item.offset.get()).saturating_add(HEADER_SIZE);
        start.checked_add(usize_of(item.size.get())).and_then(|end| self.data.get(start..end)).unwrap_or_default()
    }

    /// Offset and size of item `i` as stored (for dump-tree).
    pub fn item_location(&self, i: usize) -> (u32, u32) {
        let item = self.raw_item(i);
        (item.offset.get(), item.size.get())
    }

    /// Pointer `i` of a node: (key, child logical address, child generation).
    pub fn ptr(&self, i: usize) -> (Key, u64, u64) {
        let at = i.saturating_mul(KEY_PTR_SIZE).saturating_add(HEADER_SIZE);
        match KeyPtr::read_from_prefix(self.data.get(at..).unwrap_or_default()) {
            Ok((p, _)) => (Key::from_disk(&p.key), p.blockptr.get(), p.generation.get()),
            Err(_) => (Key::MAX, 0, 0),
        }
    }

    /// Index of the last key <= `key`, or None when every key is greater.
    pub fn slot_le(&self, key: &Key) -> Option<usize> {
        let n = self.nritems();
        // Binary search over the sorted keys checked in parse().
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            // OK: lo < hi <= nritems, far below usize::MAX.
            #[allow(clippy::arithmetic_side_effects)]
            let mid = lo + (hi - lo) / 2;
            if self.key(mid) <= *key {
                lo = mid.saturating_add(1);
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }
}

fn unreachable_item() -> Item {
    Item::new_zeroed()
}

use zerocopy::FromZeros;

/// Helper for callers turning a problem into an error with location.
pub(crate) fn problem_error(logical: u64, tree: Option<u64>, problems: &[(usize, BlockProblem)]) -> Error {
    let tree = tree.and_then(crate::format::types::tree_name).map(|n| format!(" ({n})")).unwrap_or_default();
    let what = problems.iter().map(|(m, p)| format!("copy {}: {p}", m.saturating_add(1))).collect::<Vec<_>>().join("; ");
    let at = format!("tree block {logical}{tree}");
    if !problems.is_empty() && problems.iter().all(|(_, p)| matches!(p, BlockProblem::Untrusted(_))) {
        return Error::Untrusted { at, what: format!("no copy on a current device: {what}") };
    }
    Error::corrupt(CorruptKind::Unreadable, at, if what.is_empty() { "no readable copy".into() } else { what })
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;
    use crate::format::*;

    /// A leaf at 65536 (generation 3, tree 5) through the tree layer's one serializer.
    pub(crate) fn leaf_with(items: &[(Key, &[u8])], nodesize: usize) -> Vec<u8> {
        let fmt = crate::tree::encode::BlockFormat::new(nodesize as u32, CsumType::Crc32c, [7; 16], [0; 16]).unwrap();
        crate::tree::encode::leaf_bytes(&fmt, 65536, 3, 5, items.iter().map(|(k, b)| (*k, *b))).unwrap()
    }

    #[test]
    fn parse_and_lookup() {
        let a = Key::new(256, INODE_ITEM_KEY, 0);
        let b = Key::new(257, INODE_ITEM_KEY, 0);
        let buf = leaf_with(&[(a, b"aa"), (b, b"bbb")], 4096);
        let blk = TreeBlock::parse(65536, buf, CsumType::Crc32c, &[7; 16], Expect::default()).unwrap();
        assert_eq!(blk.nritems(), 2);
        assert_eq!(blk.item_data(1), b"bbb");
        assert_eq!(blk.slot_le(&Key::new(256, 5, 0)), Some(0));
        assert_eq!(blk.slot_le(&Key::new(1, 0, 0)), None);
        assert_eq!(blk.slot_le(&Key::MAX), Some(1));
    }

    #[test]
    fn rejects_bad_blocks() {
        let a = Key::new(256, INODE_ITEM_KEY, 0);
        let buf = leaf_with(&[(a, b"aa")], 4096);
        let mut bad = buf.clone();
        bad[200] ^= 1;
        assert_eq!(TreeBlock::parse(65536, bad, CsumType::Crc32c, &[7; 16], Expect::default()).unwrap_err(), BlockProblem::Csum);
        assert!(matches!(
            TreeBlock::parse(4096, buf.clone(), CsumType::Crc32c, &[7; 16], Expect::default()).unwrap_err(),
            BlockProblem::Bytenr(65536)
        ));
        assert_eq!(TreeBlock::parse(65536, buf.clone(), CsumType::Crc32c, &[8; 16], Expect::default()).unwrap_err(), BlockProblem::Fsid);
        // Item offset pointing outside the leaf, checksum made valid again.
        let mut out = buf;
        let at = HEADER_SIZE + 17;
        out[at..at + 4].copy_from_slice(&5000u32.to_le_bytes());
        let c = CsumType::Crc32c.compute(&out[32..]);
        out[..32].copy_from_slice(&c);
        assert!(matches!(
            TreeBlock::parse(65536, out, CsumType::Crc32c, &[7; 16], Expect::default()).unwrap_err(),
            BlockProblem::Structure(_)
        ));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes with a valid checksum either parse into a block whose
            /// accessors stay in bounds, or are refused; never a panic.
            #[test]
            fn arbitrary_blocks_never_panic(mut body in proptest::collection::vec(any::<u8>(), 4096), nritems in 0u32..200, level in 0u8..10) {
                body[32..48].copy_from_slice(&[7; 16]);
                body[48..56].copy_from_slice(&65536u64.to_le_bytes());
                body[96..100].copy_from_slice(&nritems.to_le_bytes());
                body[100] = level;
                let c = CsumType::Crc32c.compute(&body[32..]);
                body[..32].copy_from_slice(&c);
                if let Ok(b) = TreeBlock::parse(65536, body, CsumType::Crc32c, &[7; 16], Expect::default()) {
                    for i in 0..b.nritems() {
                        let _ = b.key(i);
                        if b.is_leaf() {
                            let _ = b.item_data(i);
                        } else {
                            let _ = b.ptr(i);
                        }
                    }
                    let _ = b.slot_le(&Key::new(256, 1, 0));
                }
            }

            /// Every item decoder refuses or accepts arbitrary bodies without panicking.
            #[test]
            fn item_decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), ty in any::<u8>()) {
                use crate::format::items::*;
                let key = Key::new(256, ty, 0);
                let _ = parse_chunk(&data);
                let _ = parse_inode_refs(key, &data);
                let _ = parse_inode_extrefs(&data);
                let _ = parse_dir_items(&data);
                let _ = parse_file_extent(&data);
                let _ = parse_root_item(&data);
                let _ = parse_root_ref(&data);
                let _ = parse_extent_item(Key::new(1 << 20, EXTENT_ITEM_KEY, 4096), &data);
                let _ = parse_extent_item(Key::new(1 << 20, METADATA_ITEM_KEY, 0), &data);
                let _ = parse_keyed_ref(key, &data);
                let _ = parse_u64_array(&data, "x");
                let _ = parse_dev_extent(&data);
                let _ = parse_block_group(&data);
                let _ = parse_csum_item(&data, CsumType::Sha256).map(|c| c.count());
                let _ = crate::format::superblock::parse_super(&data);
            }
        }
    }
}
