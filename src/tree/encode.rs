//! The write half of [`super::block`]: the one serializer of tree blocks (the
//! write engine's edited blocks and mkfs's built trees both go through
//! [`leaf_bytes`] and [`node_bytes`]), with the header parameters every block
//! of one filesystem shares ([`BlockFormat`]).
//!
//! Layout as btrfs has it: item headers from the front, item bodies packed from
//! the end of the block downwards in item order (item 0's body ends at the very
//! end), key pointers from the front of a node; then the header, the checksum,
//! and the tree-checker rules when the format checks.

use zerocopy::IntoBytes;

use super::block::{HEADER_SIZE, ITEM_SIZE, KEY_PTR_SIZE};
use crate::error::{Error, Result};
use crate::format::{usize_of, CsumType, Header, Item, Key, KeyPtr, BACKREF_REV_SHIFT, CSUM_SIZE, HEADER_FLAG_WRITTEN, MIXED_BACKREF_REV};

/// Smallest and largest node sizes btrfs accepts (mkfs: sectorsize..=64 KiB).
const MIN_NODESIZE: u32 = 4096;
const MAX_NODESIZE: u32 = 64 * 1024;

/// What every tree block of one filesystem shares in its header, plus the
/// block size that bounds how much a block can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockFormat {
    pub(crate) nodesize: u32,
    pub(crate) csum: CsumType,
    /// The fsid written in headers: the superblock's metadata_uuid when the
    /// METADATA_UUID feature is set, else its fsid.
    pub(crate) fsid: [u8; 16],
    pub(crate) chunk_tree_uuid: [u8; 16],
    /// When set, every block is checked against the kernel's tree-checker
    /// rules as it is sealed (the write engine sets it; see [`BlockFormat::checked`]).
    pub(crate) check: Option<CheckParams>,
}

/// What the tree-checker rules need beyond [`BlockFormat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CheckParams {
    pub(crate) sectorsize: u32,
    pub(crate) incompat: u64,
}

impl BlockFormat {
    pub(crate) fn new(nodesize: u32, csum: CsumType, fsid: [u8; 16], chunk_tree_uuid: [u8; 16]) -> Result<Self> {
        if !(MIN_NODESIZE..=MAX_NODESIZE).contains(&nodesize) || !nodesize.is_power_of_two() {
            return Err(Error::Invalid(format!("nodesize {nodesize} is not a power of two in 4KiB..=64KiB")));
        }
        Ok(BlockFormat { nodesize, csum, fsid, chunk_tree_uuid, check: None })
    }

    /// The same format, checking every block it seals.
    pub(crate) fn checked(self, sectorsize: u32, incompat: u64) -> Self {
        BlockFormat { check: Some(CheckParams { sectorsize, incompat }), ..self }
    }

    /// Run the tree-checker rules on a sealed block, when this format checks.
    /// A block is written in the transaction of its generation, which the
    /// superblock then carries.
    pub(crate) fn check_sealed(&self, block: &[u8], logical: u64, generation: u64, owner: u64) -> Result<()> {
        let Some(c) = self.check else { return Ok(()) };
        let rules = super::checker::Rules {
            nodesize: self.nodesize,
            sectorsize: c.sectorsize,
            csum_size: self.csum.size(),
            incompat: c.incompat,
            super_generation: generation,
        };
        super::checker::check_block(block, &rules).map_err(|v| v.into_error(owner, logical))
    }

    /// Bytes after the header: item headers plus bodies (leaf) or key pointers (node).
    /// The kernel calls this BTRFS_LEAF_DATA_SIZE.
    pub(crate) fn leaf_data_size(&self) -> usize {
        usize_of(self.nodesize).saturating_sub(HEADER_SIZE)
    }

    /// Largest item body that fits in an otherwise empty leaf.
    pub(crate) fn max_item_data(&self) -> usize {
        self.leaf_data_size().saturating_sub(ITEM_SIZE)
    }

    /// Key pointers a node can hold (BTRFS_NODEPTRS_PER_BLOCK).
    pub(crate) fn max_node_ptrs(&self) -> usize {
        self.leaf_data_size().checked_div(KEY_PTR_SIZE).unwrap_or(0)
    }
}

/// One node pointer: the first key of the child, its address and the
/// generation it was written in (readers check the child against it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodePtr {
    pub(crate) key: Key,
    pub(crate) blockptr: u64,
    pub(crate) generation: u64,
}

/// Space one leaf item takes: its header plus its body.
pub(crate) fn leaf_item_size(body_len: usize) -> usize {
    body_len.saturating_add(ITEM_SIZE)
}

/// Copy `bytes` into `buf` at `at`; a range past the block is a write-path bug.
pub(crate) fn put(buf: &mut [u8], at: usize, bytes: &[u8]) -> Result<()> {
    let len = buf.len();
    at.checked_add(bytes.len())
        .and_then(|end| buf.get_mut(at..end))
        .ok_or_else(|| internal(format!("{} bytes at {at} past a block of {len}", bytes.len())))?
        .copy_from_slice(bytes);
    Ok(())
}

/// A size or offset inside a block as the on-disk u32.
fn u32_in_block(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| internal(format!("{v} does not fit a block")))
}

/// The one leaf serializer (the write engine's and mkfs's): item headers
/// from the front, bodies packed downwards from the end in item order, as
/// btrfs lays them out and the tree-checker insists on; then the header,
/// the checksum, and the tree-checker rules when `fmt` checks.
pub(crate) fn leaf_bytes<'a>(
    fmt: &BlockFormat,
    logical: u64,
    generation: u64,
    owner: u64,
    items: impl Iterator<Item = (Key, &'a [u8])>,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; usize_of(fmt.nodesize)];
    let mut data_end = fmt.leaf_data_size();
    let mut at = HEADER_SIZE;
    let mut n = 0usize;
    for (key, body) in items {
        data_end = data_end.checked_sub(body.len()).ok_or_else(|| internal(format!("leaf {logical} overflows")))?;
        let item = Item { key: key.to_disk(), offset: u32_in_block(data_end)?.into(), size: u32_in_block(body.len())?.into() };
        put(&mut buf, at, item.as_bytes())?;
        put(&mut buf, data_end.saturating_add(HEADER_SIZE), body)?;
        at = at.saturating_add(ITEM_SIZE);
        n = n.saturating_add(1);
    }
    if at.saturating_sub(HEADER_SIZE) > data_end {
        return Err(internal(format!("leaf {logical}: item headers run into item bodies")));
    }
    finish_block(&mut buf, fmt, logical, generation, owner, n, 0)?;
    fmt.check_sealed(&buf, logical, generation, owner)?;
    Ok(buf)
}

/// The one node serializer: key pointers from the front, header, checksum.
pub(crate) fn node_bytes(fmt: &BlockFormat, logical: u64, generation: u64, owner: u64, level: u8, ptrs: &[NodePtr]) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; usize_of(fmt.nodesize)];
    let mut at = HEADER_SIZE;
    for p in ptrs {
        let kp = KeyPtr { key: p.key.to_disk(), blockptr: p.blockptr.into(), generation: p.generation.into() };
        put(&mut buf, at, kp.as_bytes())?;
        at = at.saturating_add(KEY_PTR_SIZE);
    }
    finish_block(&mut buf, fmt, logical, generation, owner, ptrs.len(), level)?;
    fmt.check_sealed(&buf, logical, generation, owner)?;
    Ok(buf)
}

/// Write the header and then the checksum over everything after the csum field.
fn finish_block(buf: &mut [u8], fmt: &BlockFormat, logical: u64, generation: u64, owner: u64, nritems: usize, level: u8) -> Result<()> {
    let header = Header {
        csum: [0; CSUM_SIZE],
        fsid: fmt.fsid,
        bytenr: logical.into(),
        // WRITTEN marks a block that has reached disk; the backref revision in
        // the top byte says extent refs use the mixed-backref scheme (every
        // filesystem since 2.6.31; the kernel refuses older ones for writing).
        flags: (HEADER_FLAG_WRITTEN | (MIXED_BACKREF_REV << BACKREF_REV_SHIFT)).into(),
        chunk_tree_uuid: fmt.chunk_tree_uuid,
        generation: generation.into(),
        owner: owner.into(),
        nritems: u32_in_block(nritems)?.into(),
        level,
    };
    put(buf, 0, header.as_bytes())?;
    let csum = fmt.csum.compute(buf.get(CSUM_SIZE..).unwrap_or_default());
    put(buf, 0, &csum)
}

/// A broken promise inside the write path (not damage on disk).
pub(crate) fn internal(what: String) -> Error {
    Error::Internal(format!("tree write path: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodesizes_outside_4k_to_64k_or_not_a_power_of_two_are_refused() {
        for n in [0, 1000, 2048, 4095, 12288, 131072] {
            assert!(BlockFormat::new(n, CsumType::Crc32c, [0; 16], [0; 16]).is_err(), "{n}");
        }
        for n in [4096, 8192, 16384, 65536] {
            assert!(BlockFormat::new(n, CsumType::Crc32c, [0; 16], [0; 16]).is_ok(), "{n}");
        }
    }
}
