//! Typed decoding of item bodies. Every function takes the item's bytes as
//! stored in a leaf and returns owned, typed values or a `Corrupt` error naming
//! what was short or out of range. Nothing here panics on any input.

use zerocopy::FromBytes;

use super::ondisk::*;
use super::types::Key;
use crate::error::{CorruptKind, Error, Result};

/// Read a fixed-size struct from the front of `data`, or say what was short.
pub fn read_prefix<T: FromBytes>(data: &[u8], what: &str) -> Result<(T, usize)> {
    let size = std::mem::size_of::<T>();
    match T::read_from_prefix(data) {
        Ok((v, _)) => Ok((v, size)),
        Err(_) => Err(Error::corrupt(CorruptKind::ItemSize, what, format!("item too short: {} bytes, need {size}", data.len()))),
    }
}

/// A cursor over an item's bytes: every read is bounds-checked and names
/// what was short, so the parsers below do no arithmetic of their own.
pub struct ItemCursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> ItemCursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        ItemCursor { data, pos: 0 }
    }

    /// Whether every byte was read.
    pub fn is_done(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Bytes read so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The next `len` bytes.
    pub fn bytes(&mut self, len: usize, what: &str) -> Result<&'a [u8]> {
        let pos = self.pos;
        let out = pos.checked_add(len).and_then(|end| self.data.get(pos..end)).ok_or_else(|| {
            Error::corrupt(CorruptKind::ItemSize, what, format!("{len} bytes at {pos} run past item end {}", self.data.len()))
        })?;
        self.pos = pos.saturating_add(len);
        Ok(out)
    }

    /// The next fixed-size struct.
    pub fn read<T: FromBytes>(&mut self, what: &str) -> Result<T> {
        let (v, used) = read_prefix::<T>(self.data.get(self.pos..).unwrap_or_default(), what)?;
        self.pos = self.pos.saturating_add(used);
        Ok(v)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.data.get(self.pos..).unwrap_or_default();
        self.pos = self.data.len();
        r
    }
}

/// A chunk item with its stripes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub length: u64,
    pub owner: u64,
    pub stripe_len: u64,
    pub chunk_type: u64,
    pub io_align: u32,
    pub io_width: u32,
    pub sector_size: u32,
    pub sub_stripes: u16,
    pub stripes: Vec<StripeInfo>,
}

impl ChunkInfo {
    /// Whether two chunk items put the same logical bytes in the same places: length,
    /// type, stripe length and every stripe (device, offset, device uuid), and
    /// sub_stripes where the profile reads it (RAID10). owner, io_align, io_width,
    /// sector_size, and sub_stripes of other profiles, steer no read or write.
    /// (btrfs-image -r can rewrite a chunk-tree copy's sub_stripes and leave the
    /// superblock's as it was; the kernel and btrfs check take such an image.)
    pub fn same_mapping(&self, other: &ChunkInfo) -> bool {
        let raid10 = self.chunk_type & BLOCK_GROUP_RAID10 != 0;
        self.length == other.length
            && self.chunk_type == other.chunk_type
            && self.stripe_len == other.stripe_len
            && self.stripes == other.stripes
            && (!raid10 || self.sub_stripes == other.sub_stripes)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeInfo {
    pub devid: u64,
    pub offset: u64,
    pub dev_uuid: [u8; 16],
}

/// Decode a chunk item; returns it and the number of bytes it occupies.
pub fn parse_chunk(data: &[u8]) -> Result<(ChunkInfo, usize)> {
    let mut cur = ItemCursor::new(data);
    let c = cur.read::<Chunk>("chunk item")?;
    let n = usize::from(c.num_stripes.get());
    if n == 0 {
        return Err(Error::corrupt(CorruptKind::ChunkMap, "chunk item", "num_stripes is 0"));
    }
    let mut stripes = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        let s = cur.read::<Stripe>("chunk item stripes")?;
        stripes.push(StripeInfo { devid: s.devid.get(), offset: s.offset.get(), dev_uuid: s.dev_uuid });
    }
    let pos = cur.pos();
    Ok((
        ChunkInfo {
            length: c.length.get(),
            owner: c.owner.get(),
            stripe_len: c.stripe_len.get(),
            chunk_type: c.chunk_type.get(),
            io_align: c.io_align.get(),
            io_width: c.io_width.get(),
            sector_size: c.sector_size.get(),
            sub_stripes: c.sub_stripes.get(),
            stripes,
        },
        pos,
    ))
}

/// One name in an INODE_REF item (several may be packed in one item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeRefEntry {
    /// Parent directory: the key offset for INODE_REF, stored for INODE_EXTREF.
    pub parent: u64,
    pub index: u64,
    pub name: Vec<u8>,
}

pub fn parse_inode_refs(key: Key, data: &[u8]) -> Result<Vec<InodeRefEntry>> {
    let mut out = Vec::new();
    let mut cur = ItemCursor::new(data);
    while !cur.is_done() {
        let r = cur.read::<InodeRef>("inode ref")?;
        let name = cur.bytes(usize::from(r.name_len.get()), "inode ref name")?;
        check_name(name, "inode ref")?;
        out.push(InodeRefEntry { parent: key.offset, index: r.index.get(), name: name.to_vec() });
    }
    Ok(out)
}

pub fn parse_inode_extrefs(data: &[u8]) -> Result<Vec<InodeRefEntry>> {
    let mut out = Vec::new();
    let mut cur = ItemCursor::new(data);
    while !cur.is_done() {
        let r = cur.read::<InodeExtref>("inode extref")?;
        let name = cur.bytes(usize::from(r.name_len.get()), "inode extref name")?;
        check_name(name, "inode extref")?;
        out.push(InodeRefEntry { parent: r.parent_objectid.get(), index: r.index.get(), name: name.to_vec() });
    }
    Ok(out)
}

pub(super) fn check_name(name: &[u8], what: &str) -> Result<()> {
    if name.is_empty() || name.len() > NAME_LEN {
        return Err(Error::corrupt(CorruptKind::ItemValue, what, format!("name length {} out of 1..=255", name.len())));
    }
    Ok(())
}

/// One entry of a DIR_ITEM / DIR_INDEX / XATTR_ITEM (several may share an item
/// when their names hash alike).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub location: Key,
    pub transid: u64,
    pub dir_type: u8,
    pub name: Vec<u8>,
    /// The xattr value for XATTR_ITEM; empty for directory entries.
    pub data: Vec<u8>,
}

pub fn parse_dir_items(data: &[u8]) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    let mut cur = ItemCursor::new(data);
    while !cur.is_done() {
        let d = cur.read::<DirItem>("dir item")?;
        let name_len = usize::from(d.name_len.get());
        let data_len = usize::from(d.data_len.get());
        let is_xattr = d.dir_type == FT_XATTR;
        if name_len == 0 || (!is_xattr && name_len > NAME_LEN) || name_len > XATTR_SIZE_MAX {
            return Err(Error::corrupt(CorruptKind::ItemValue, "dir item", format!("name length {name_len} out of range")));
        }
        if !is_xattr && data_len != 0 {
            return Err(Error::corrupt(CorruptKind::ItemValue, "dir item", format!("data_len {data_len} on a non-xattr entry")));
        }
        if data_len > XATTR_SIZE_MAX {
            return Err(Error::corrupt(CorruptKind::ItemSize, "dir item", format!("xattr value length {data_len} too large")));
        }
        let name = cur.bytes(name_len, "dir item name")?;
        let value = cur.bytes(data_len, "dir item data")?;
        out.push(DirEntry {
            location: Key::from_disk(&d.location),
            transid: d.transid.get(),
            dir_type: d.dir_type,
            name: name.to_vec(),
            data: value.to_vec(),
        });
    }
    Ok(out)
}

/// The name hash btrfs uses for DIR_ITEM and XATTR_ITEM key offsets:
/// crc32c seeded with `~1`, without the final inversion.
pub fn name_hash(name: &[u8]) -> u64 {
    // crc32c::crc32c_append inverts on entry and exit; undo both to get the
    // kernel's raw crc32c(seed = ~1) value.
    let seed: u32 = !1u32;
    u64::from(!crc32c::crc32c_append(!seed, name))
}

/// The hash used for INODE_EXTREF key offsets: crc32c of the name seeded with the parent inode.
pub fn extref_hash(parent: u64, name: &[u8]) -> u64 {
    // The kernel passes the parent as the u32 seed: its low 32 bits.
    let seed = u32::try_from(parent & u64::from(u32::MAX)).unwrap_or(0);
    u64::from(!crc32c::crc32c_append(!seed, name))
}

/// A decoded EXTENT_DATA item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileExtent {
    pub generation: u64,
    /// Bytes of uncompressed data this extent item describes (inline), or the
    /// uncompressed size of the whole on-disk extent (regular/prealloc).
    pub ram_bytes: u64,
    pub compression: u8,
    pub encryption: u8,
    pub other_encoding: u16,
    pub kind: FileExtentKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileExtentKind {
    Inline { data: Vec<u8> },
    Regular { prealloc: bool, disk_bytenr: u64, disk_num_bytes: u64, offset: u64, num_bytes: u64 },
}

impl FileExtent {
    /// Bytes of the file this item covers (inline: ram_bytes).
    pub fn file_len(&self) -> u64 {
        match &self.kind {
            FileExtentKind::Inline { .. } => self.ram_bytes,
            FileExtentKind::Regular { num_bytes, .. } => *num_bytes,
        }
    }
}

pub fn parse_file_extent(data: &[u8]) -> Result<FileExtent> {
    let mut cur = ItemCursor::new(data);
    let h = cur.read::<FileExtentHeader>("file extent")?;
    let kind = match h.extent_type {
        FILE_EXTENT_INLINE => FileExtentKind::Inline { data: cur.rest().to_vec() },
        FILE_EXTENT_REG | FILE_EXTENT_PREALLOC => {
            let b = cur.read::<FileExtentBody>("file extent body")?;
            if !cur.is_done() {
                return Err(Error::corrupt(
                    CorruptKind::ItemSize,
                    "file extent",
                    format!("regular extent item size {} is not 53", data.len()),
                ));
            }
            FileExtentKind::Regular {
                prealloc: h.extent_type == FILE_EXTENT_PREALLOC,
                disk_bytenr: b.disk_bytenr.get(),
                disk_num_bytes: b.disk_num_bytes.get(),
                offset: b.offset.get(),
                num_bytes: b.num_bytes.get(),
            }
        }
        t => return Err(Error::corrupt(CorruptKind::ItemValue, "file extent", format!("unknown extent type {t}"))),
    };
    Ok(FileExtent {
        generation: h.generation.get(),
        ram_bytes: h.ram_bytes.get(),
        compression: h.compression,
        encryption: h.encryption,
        other_encoding: h.other_encoding.get(),
        kind,
    })
}

/// Decode a root item, accepting the short pre-v2 layout (the missing tail reads as zeros).
pub fn parse_root_item(data: &[u8]) -> Result<RootItem> {
    if data.len() < ROOT_ITEM_V1_SIZE {
        return Err(Error::corrupt(CorruptKind::ItemSize, "root item", format!("size {} below {ROOT_ITEM_V1_SIZE}", data.len())));
    }
    let mut buf = [0u8; std::mem::size_of::<RootItem>()];
    for (b, d) in buf.iter_mut().zip(data) {
        *b = *d;
    }
    Ok(read_prefix::<RootItem>(&buf, "root item")?.0)
}

/// A QGROUP_STATUS item; one shorter than the full item (kernels before
/// 6.7 wrote 32 bytes, without enable_gen) reads with the rest zero.
pub fn parse_qgroup_status(data: &[u8]) -> Result<QgroupStatusItem> {
    let mut buf = [0u8; std::mem::size_of::<QgroupStatusItem>()];
    for (b, d) in buf.iter_mut().zip(data) {
        *b = *d;
    }
    Ok(read_prefix::<QgroupStatusItem>(&buf, "qgroup status")?.0)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootRefEntry {
    pub dirid: u64,
    pub sequence: u64,
    pub name: Vec<u8>,
}

pub fn parse_root_ref(data: &[u8]) -> Result<RootRefEntry> {
    let mut cur = ItemCursor::new(data);
    let r = cur.read::<RootRef>("root ref")?;
    let name = cur.bytes(usize::from(r.name_len.get()), "root ref name")?;
    check_name(name, "root ref")?;
    Ok(RootRefEntry { dirid: r.dirid.get(), sequence: r.sequence.get(), name: name.to_vec() })
}

/// One back reference inside an extent item (or a standalone ref item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtentRef {
    TreeBlock { root: u64 },
    SharedBlock { parent: u64 },
    Data { root: u64, objectid: u64, offset: u64, count: u32 },
    SharedData { parent: u64, count: u32 },
    Owner { root: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentInfo {
    pub refs: u64,
    pub generation: u64,
    pub flags: u64,
    /// For a non-skinny tree block: its first key and level.
    pub tree_block: Option<(Key, u8)>,
    pub inline_refs: Vec<ExtentRef>,
}

impl ExtentRef {
    /// The (type, sequence) the kernel's tree-checker orders inline refs by:
    /// types ascending and, within one type, the sequence (parent / root /
    /// data-ref hash) descending — lookup_inline_extent_backref walks them
    /// that way and stops at the first smaller one. Keyed refs sit at this
    /// key (type, offset).
    pub fn order(&self) -> (u8, u64) {
        match *self {
            ExtentRef::Owner { root } => (EXTENT_OWNER_REF_KEY, root),
            ExtentRef::TreeBlock { root } => (TREE_BLOCK_REF_KEY, root),
            ExtentRef::Data { root, objectid, offset, .. } => (EXTENT_DATA_REF_KEY, extent_data_ref_hash(root, objectid, offset)),
            ExtentRef::SharedBlock { parent } => (SHARED_BLOCK_REF_KEY, parent),
            ExtentRef::SharedData { parent, .. } => (SHARED_DATA_REF_KEY, parent),
        }
    }

    /// How many references this one counts for.
    pub fn count(&self) -> u64 {
        match *self {
            ExtentRef::Data { count, .. } | ExtentRef::SharedData { count, .. } => u64::from(count),
            ExtentRef::Owner { .. } => 0,
            _ => 1,
        }
    }
}

/// Decode an EXTENT_ITEM or METADATA_ITEM with its inline refs. `v0` items
/// (from filesystems older than 2.6.31's format change) are rejected as incompatible.
pub fn parse_extent_item(key: Key, data: &[u8]) -> Result<ExtentInfo> {
    if data.len() < std::mem::size_of::<ExtentItem>() {
        return Err(Error::Incompatible(format!("extent item {key} of size {} (v0 extent refs)", data.len())));
    }
    let mut cur = ItemCursor::new(data);
    let e = cur.read::<ExtentItem>("extent item")?;
    let flags = e.flags.get();
    let mut tree_block = None;
    if flags & EXTENT_FLAG_TREE_BLOCK != 0 && key.item_type == EXTENT_ITEM_KEY {
        let info = cur.read::<TreeBlockInfo>("extent tree block info")?;
        tree_block = Some((Key::from_disk(&info.key), info.level));
    }
    let mut inline_refs = Vec::new();
    while !cur.is_done() {
        let ty = cur.read::<u8>("inline ref type")?;
        let r = match ty {
            TREE_BLOCK_REF_KEY | SHARED_BLOCK_REF_KEY | EXTENT_OWNER_REF_KEY => {
                let v = cur.read::<zerocopy::little_endian::U64>("inline ref")?;
                match ty {
                    TREE_BLOCK_REF_KEY => ExtentRef::TreeBlock { root: v.get() },
                    SHARED_BLOCK_REF_KEY => ExtentRef::SharedBlock { parent: v.get() },
                    _ => ExtentRef::Owner { root: v.get() },
                }
            }
            EXTENT_DATA_REF_KEY => {
                let d = cur.read::<ExtentDataRef>("inline data ref")?;
                ExtentRef::Data { root: d.root.get(), objectid: d.objectid.get(), offset: d.offset.get(), count: d.count.get() }
            }
            SHARED_DATA_REF_KEY => {
                let p = cur.read::<zerocopy::little_endian::U64>("inline shared data ref")?;
                let c = cur.read::<SharedDataRef>("inline shared data ref")?;
                ExtentRef::SharedData { parent: p.get(), count: c.count.get() }
            }
            t => return Err(Error::corrupt(CorruptKind::ItemValue, format!("extent item {key}"), format!("unknown inline ref type {t}"))),
        };
        inline_refs.push(r);
    }
    Ok(ExtentInfo { refs: e.refs.get(), generation: e.generation.get(), flags, tree_block, inline_refs })
}

/// Decode a standalone (keyed) back reference item.
pub fn parse_keyed_ref(key: Key, data: &[u8]) -> Result<ExtentRef> {
    Ok(match key.item_type {
        TREE_BLOCK_REF_KEY => ExtentRef::TreeBlock { root: key.offset },
        SHARED_BLOCK_REF_KEY => ExtentRef::SharedBlock { parent: key.offset },
        EXTENT_DATA_REF_KEY => {
            let (d, _) = read_prefix::<ExtentDataRef>(data, "extent data ref")?;
            ExtentRef::Data { root: d.root.get(), objectid: d.objectid.get(), offset: d.offset.get(), count: d.count.get() }
        }
        SHARED_DATA_REF_KEY => {
            let (c, _) = read_prefix::<SharedDataRef>(data, "shared data ref")?;
            ExtentRef::SharedData { parent: key.offset, count: c.count.get() }
        }
        EXTENT_OWNER_REF_KEY => {
            let (o, _) = read_prefix::<ExtentOwnerRef>(data, "extent owner ref")?;
            ExtentRef::Owner { root: o.root_id.get() }
        }
        t => return Err(Error::corrupt(CorruptKind::ExtentRefs, format!("{key}"), format!("item type {t} is not a back reference"))),
    })
}

/// The hash btrfs uses for EXTENT_DATA_REF key offsets.
pub fn extent_data_ref_hash(root: u64, objectid: u64, offset: u64) -> u64 {
    // The kernel's crc32c(seed, ..) has no pre/post inversion; crc32c_append has both.
    let raw = |seed: u32, data: &[u8]| !crc32c::crc32c_append(!seed, data);
    let high = raw(!0, &root.to_le_bytes());
    let low = raw(raw(!0, &objectid.to_le_bytes()), &offset.to_le_bytes());
    (u64::from(high) << 31) ^ u64::from(low)
}

/// Decode a little-endian u64 array item (dev stats, uuid tree entries).
/// The uuid tree's key for `uuid` (UUID_KEY_SUBVOL or
/// UUID_KEY_RECEIVED_SUBVOL): its two halves, little-endian, as objectid
/// and offset.
pub fn uuid_key(uuid: &[u8; 16], kind: u8) -> Key {
    let (lo, hi) = uuid.split_at(8);
    let half = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    Key::new(half(lo), kind, half(hi))
}

pub fn parse_u64_array(data: &[u8], what: &str) -> Result<Vec<u64>> {
    if data.len() % 8 != 0 {
        return Err(Error::corrupt(CorruptKind::ItemSize, what, format!("size {} is not a multiple of 8", data.len())));
    }
    Ok(data.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
}

/// A DEV_EXTENT item: which chunk a device range belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevExtentInfo {
    pub chunk_tree: u64,
    pub chunk_objectid: u64,
    pub chunk_offset: u64,
    pub length: u64,
    pub chunk_tree_uuid: [u8; 16],
}

impl DevExtentInfo {
    /// The dev extent of `length` bytes of the chunk at logical
    /// `chunk_offset`, in the one chunk tree every filesystem has.
    pub fn of_chunk(chunk_offset: u64, length: u64, chunk_tree_uuid: [u8; 16]) -> Self {
        DevExtentInfo { chunk_tree: CHUNK_TREE_OBJECTID, chunk_objectid: FIRST_CHUNK_TREE_OBJECTID, chunk_offset, length, chunk_tree_uuid }
    }
}

pub fn parse_dev_extent(data: &[u8]) -> Result<DevExtentInfo> {
    let (d, _) = read_prefix::<DevExtent>(data, "dev extent")?;
    Ok(DevExtentInfo {
        chunk_tree: d.chunk_tree.get(),
        chunk_objectid: d.chunk_objectid.get(),
        chunk_offset: d.chunk_offset.get(),
        length: d.length.get(),
        chunk_tree_uuid: d.chunk_tree_uuid,
    })
}

/// A BLOCK_GROUP_ITEM: bytes used in the group, its chunk and its type and profile bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockGroupInfo {
    pub used: u64,
    pub chunk_objectid: u64,
    pub flags: u64,
}

pub fn parse_block_group(data: &[u8]) -> Result<BlockGroupInfo> {
    let (b, _) = read_prefix::<BlockGroupItem>(data, "block group item")?;
    Ok(BlockGroupInfo { used: b.used.get(), chunk_objectid: b.chunk_objectid.get(), flags: b.flags.get() })
}

/// The checksums of an EXTENT_CSUM item, one per sector from the key
/// offset on; the kernel refuses a body that is not a whole number of them.
pub fn parse_csum_item(data: &[u8], csum: super::CsumType) -> Result<std::slice::ChunksExact<'_, u8>> {
    let size = csum.size();
    if data.len().checked_rem(size) != Some(0) {
        return Err(Error::corrupt(CorruptKind::ItemSize, "csum item", format!("{} bytes, not a multiple of {size}", data.len())));
    }
    Ok(data.chunks_exact(size))
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn same_mapping_ignores_only_fields_that_steer_no_io() {
        let stripe = |devid, offset| StripeInfo { devid, offset, dev_uuid: [devid as u8; 16] };
        let base = ChunkInfo {
            length: 8 << 20,
            owner: 2,
            stripe_len: 65536,
            chunk_type: BLOCK_GROUP_SYSTEM | BLOCK_GROUP_DUP,
            io_align: 65536,
            io_width: 65536,
            sector_size: 4096,
            sub_stripes: 1,
            stripes: vec![stripe(1, 22020096), stripe(1, 30408704)],
        };
        // What btrfs-image -r's chunk-tree fixup leaves: sub_stripes 0 on a DUP chunk.
        let restored = ChunkInfo { sub_stripes: 0, io_align: 4096, io_width: 4096, owner: 7, ..base.clone() };
        assert!(base.same_mapping(&restored) && restored.same_mapping(&base));
        let moved = ChunkInfo { stripes: vec![stripe(1, 22020096), stripe(1, 38797312)], ..base.clone() };
        let other_dev = ChunkInfo { stripes: vec![stripe(1, 22020096), stripe(2, 30408704)], ..base.clone() };
        let one_copy = ChunkInfo { stripes: vec![stripe(1, 22020096)], ..base.clone() };
        let longer = ChunkInfo { length: 16 << 20, ..base.clone() };
        let single = ChunkInfo { chunk_type: BLOCK_GROUP_SYSTEM, ..base.clone() };
        let wider = ChunkInfo { stripe_len: 131072, ..base.clone() };
        for (what, c) in
            [("moved", moved), ("other_dev", other_dev), ("one_copy", one_copy), ("longer", longer), ("single", single), ("wider", wider)]
        {
            assert!(!base.same_mapping(&c) && !c.same_mapping(&base), "{what} was taken as the same mapping");
        }
        // RAID10 reads sub_stripes: there a different count is a different mapping.
        let raid10 = ChunkInfo {
            chunk_type: BLOCK_GROUP_SYSTEM | BLOCK_GROUP_RAID10,
            sub_stripes: 2,
            stripes: (1..=4).map(|d| stripe(d, 1 << 20)).collect(),
            ..base.clone()
        };
        assert!(raid10.same_mapping(&raid10.clone()));
        assert!(!raid10.same_mapping(&ChunkInfo { sub_stripes: 1, ..raid10.clone() }));
    }

    #[test]
    fn extref_hash_matches_kernel() {
        // From an image the kernel (6.18) filled with 400 links of one file in
        // directory 265: item (264 INODE_EXTREF 14326043) holds this name.
        assert_eq!(extref_hash(265, b"a-rather-long-hard-link-name-number-0329"), 14326043);
    }

    #[test]
    fn name_hash_matches_kernel() {
        // Values from a real dump-tree: DIR_ITEM of "default" in the root tree dir
        // has offset 2378154706.
        assert_eq!(name_hash(b"default"), 2378154706);
    }

    #[test]
    fn dir_items_round_trip_and_reject() {
        let d = DirItem {
            location: DiskKey::new(257, INODE_ITEM_KEY, 0),
            transid: 7.into(),
            data_len: 0.into(),
            name_len: 3.into(),
            dir_type: FT_REG_FILE,
        };
        let mut bytes = d.as_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let two = [bytes.clone(), bytes.clone()].concat();
        let v = parse_dir_items(&two).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].name, b"abc");
        assert_eq!(v[0].location, Key::new(257, INODE_ITEM_KEY, 0));
        // Name runs past the end.
        assert!(parse_dir_items(&bytes[..bytes.len() - 1]).is_err());
        // Truncated header.
        assert!(parse_dir_items(&bytes[..10]).is_err());
    }

    #[test]
    fn file_extent_kinds() {
        let h = FileExtentHeader {
            generation: 5.into(),
            ram_bytes: 3.into(),
            compression: 0,
            encryption: 0,
            other_encoding: 0.into(),
            extent_type: FILE_EXTENT_INLINE,
        };
        let mut b = h.as_bytes().to_vec();
        b.extend_from_slice(b"xyz");
        let fe = parse_file_extent(&b).unwrap();
        assert_eq!(fe.kind, FileExtentKind::Inline { data: b"xyz".to_vec() });
        let mut bad = h;
        bad.extent_type = 9;
        assert!(parse_file_extent(bad.as_bytes()).is_err());
        let mut reg = h;
        reg.extent_type = FILE_EXTENT_REG;
        assert!(parse_file_extent(reg.as_bytes()).is_err(), "regular extent without body");
    }

    #[test]
    fn extent_item_inline_refs() {
        let e = ExtentItem { refs: 1.into(), generation: 9.into(), flags: EXTENT_FLAG_DATA.into() };
        let mut b = e.as_bytes().to_vec();
        b.push(EXTENT_DATA_REF_KEY);
        b.extend_from_slice(ExtentDataRef { root: 5.into(), objectid: 257.into(), offset: 0.into(), count: 1.into() }.as_bytes());
        let info = parse_extent_item(Key::new(1 << 20, EXTENT_ITEM_KEY, 4096), &b).unwrap();
        assert_eq!(info.inline_refs, vec![ExtentRef::Data { root: 5, objectid: 257, offset: 0, count: 1 }]);
        b.push(99);
        assert!(parse_extent_item(Key::new(1 << 20, EXTENT_ITEM_KEY, 4096), &b).is_err());
    }

    #[test]
    fn chunk_zero_stripes_rejected() {
        let c = Chunk {
            length: 1.into(),
            owner: 2.into(),
            stripe_len: STRIPE_LEN.into(),
            chunk_type: 1.into(),
            io_align: 4096.into(),
            io_width: 4096.into(),
            sector_size: 4096.into(),
            num_stripes: 0.into(),
            sub_stripes: 1.into(),
        };
        assert!(parse_chunk(c.as_bytes()).is_err());
        let mut c2 = c;
        c2.num_stripes = 2.into();
        assert!(parse_chunk(c2.as_bytes()).is_err(), "stripes missing");
    }
}
