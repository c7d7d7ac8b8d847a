//! Typed encoding of item bodies: the inverse of [`super::items`] (and of
//! the superblock's system chunk array and backup roots). Each encoder takes
//! the typed values its parser returns and lays out the bytes a leaf stores;
//! every item type has a round-trip property test below against its parser.
//!
//! Where a parser refuses what the kernel refuses (a name of 0 or more than
//! 255 bytes, data on a directory entry, a chunk without stripes, a length
//! its 16-bit field cannot hold, ...), the encoder refuses those values with
//! an `Invalid` error rather than write an item no reader takes. Callers
//! check names and sizes against the kernel's limits before they get here
//! (`format::limits`), so these refusals are a last guard, not a user check.
//!
//! A file of its own, apart from the decoders in items.rs, so that both stay
//! readable with their tests (items.rs would pass 1,000 lines otherwise).

use zerocopy::IntoBytes;

use super::items::*;
use super::ondisk::*;
use super::types::Key;
use super::CsumType;
use crate::error::{Error, Result};

fn refuse(what: &str, why: String) -> Error {
    Error::Invalid(format!("cannot encode {what}: {why}"))
}

/// A length as the u16 field that holds it.
fn len16(len: usize, what: &str) -> Result<u16> {
    u16::try_from(len).map_err(|_| refuse(what, format!("length {len} does not fit its 16-bit field")))
}

/// A name as INODE_REF, INODE_EXTREF, ROOT_REF and directory entries hold
/// it: 1..=255 bytes (what the parsers check).
fn name16(name: &[u8], what: &str) -> Result<u16> {
    check_name(name, what).map_err(|_| refuse(what, format!("name length {} out of 1..=255", name.len())))?;
    len16(name.len(), what)
}

// ---- directory entries and xattrs ----

/// Append one DIR_ITEM / DIR_INDEX / XATTR_ITEM entry: header, name, then
/// the xattr value (empty for a directory entry).
fn put_dir_item(e: &DirEntry, out: &mut Vec<u8>) -> Result<()> {
    const WHAT: &str = "dir item";
    let is_xattr = e.dir_type == FT_XATTR;
    let n = e.name.len();
    if n == 0 || (!is_xattr && n > NAME_LEN) || n > XATTR_SIZE_MAX {
        return Err(refuse(WHAT, format!("name length {n} out of range")));
    }
    if !is_xattr && !e.data.is_empty() {
        return Err(refuse(WHAT, format!("{} bytes of data on a non-xattr entry", e.data.len())));
    }
    if e.data.len() > XATTR_SIZE_MAX {
        return Err(refuse(WHAT, format!("xattr value length {} too large", e.data.len())));
    }
    let d = DirItem {
        location: e.location.to_disk(),
        transid: e.transid.into(),
        data_len: len16(e.data.len(), WHAT)?.into(),
        name_len: len16(n, WHAT)?.into(),
        dir_type: e.dir_type,
    };
    out.extend_from_slice(d.as_bytes());
    out.extend_from_slice(&e.name);
    out.extend_from_slice(&e.data);
    Ok(())
}

/// One directory entry or xattr: the body of a DIR_INDEX item, or of a
/// DIR_ITEM / XATTR_ITEM no other name shares (inverse of [`parse_dir_items`]).
pub fn dir_item(e: &DirEntry) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    put_dir_item(e, &mut out)?;
    Ok(out)
}

/// The body of a DIR_ITEM or XATTR_ITEM holding `entries`, whose names hash alike.
pub fn dir_items(entries: &[DirEntry]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for e in entries {
        put_dir_item(e, &mut out)?;
    }
    Ok(out)
}

// ---- inode back references ----

/// The body of an INODE_REF item holding `refs` (their `parent` is the key
/// offset, not stored; inverse of [`parse_inode_refs`]).
pub fn inode_refs(refs: &[InodeRefEntry]) -> Result<Vec<u8>> {
    for r in refs {
        name16(&r.name, "inode ref")?;
    }
    Ok(encode_inode_refs(refs))
}

/// The body of an INODE_EXTREF item holding `refs` (several only when their
/// (parent, name) hashes collide; inverse of [`parse_inode_extrefs`]).
pub fn inode_extrefs(refs: &[InodeRefEntry]) -> Result<Vec<u8>> {
    for r in refs {
        name16(&r.name, "inode extref")?;
    }
    Ok(encode_inode_extrefs(refs))
}

/// [`inode_refs`] without the name check, a name over 65535 bytes stored
/// with a length of 65535.
fn encode_inode_refs(refs: &[InodeRefEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in refs {
        out.extend_from_slice(InodeRef { index: r.index.into(), name_len: name_len_saturating(&r.name).into() }.as_bytes());
        out.extend_from_slice(&r.name);
    }
    out
}

/// [`inode_extrefs`] without the name check (see [`encode_inode_refs`]).
fn encode_inode_extrefs(refs: &[InodeRefEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in refs {
        out.extend_from_slice(
            InodeExtref { parent_objectid: r.parent.into(), index: r.index.into(), name_len: name_len_saturating(&r.name).into() }
                .as_bytes(),
        );
        out.extend_from_slice(&r.name);
    }
    out
}

fn name_len_saturating(name: &[u8]) -> u16 {
    u16::try_from(name.len()).unwrap_or(u16::MAX)
}

// ---- file extents ----

/// An EXTENT_DATA item: header, then the inline data or the regular /
/// prealloc extent's body (inverse of [`parse_file_extent`]).
pub fn file_extent(fe: &FileExtent) -> Vec<u8> {
    let extent_type = match fe.kind {
        FileExtentKind::Inline { .. } => FILE_EXTENT_INLINE,
        FileExtentKind::Regular { prealloc: false, .. } => FILE_EXTENT_REG,
        FileExtentKind::Regular { prealloc: true, .. } => FILE_EXTENT_PREALLOC,
    };
    let mut out = FileExtentHeader {
        generation: fe.generation.into(),
        ram_bytes: fe.ram_bytes.into(),
        compression: fe.compression,
        encryption: fe.encryption,
        other_encoding: fe.other_encoding.into(),
        extent_type,
    }
    .as_bytes()
    .to_vec();
    match &fe.kind {
        FileExtentKind::Inline { data } => out.extend_from_slice(data),
        FileExtentKind::Regular { disk_bytenr, disk_num_bytes, offset, num_bytes, .. } => out.extend_from_slice(
            FileExtentBody {
                disk_bytenr: (*disk_bytenr).into(),
                disk_num_bytes: (*disk_num_bytes).into(),
                offset: (*offset).into(),
                num_bytes: (*num_bytes).into(),
            }
            .as_bytes(),
        ),
    }
    out
}

// ---- roots ----

/// The two sizes of a ROOT_ITEM the kernel reads: the full one, and the
/// one written before the v2 fields (generation_v2 on) existed; and any
/// other length an item was found with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootItemSize {
    V1,
    Full,
    /// The first `n` bytes of the full item (all of it when `n` is more).
    /// The tree checker refuses such items, but the parser reads one (the
    /// missing fields zero) and a rewrite keeps the length it had.
    Stored(usize),
}

impl RootItemSize {
    /// The size an item of `len` stored bytes keeps when rewritten: the same
    /// length, up to the full item's.
    pub fn of_len(len: usize) -> Self {
        if len == ROOT_ITEM_V1_SIZE {
            RootItemSize::V1
        } else if len >= std::mem::size_of::<RootItem>() {
            RootItemSize::Full
        } else {
            RootItemSize::Stored(len)
        }
    }
}

/// A ROOT_ITEM body (inverse of [`parse_root_item`]); a v1 item drops the v2 fields.
pub fn root_item(r: &RootItem, size: RootItemSize) -> Vec<u8> {
    let bytes = r.as_bytes();
    let len = match size {
        RootItemSize::Full => bytes.len(),
        RootItemSize::V1 => ROOT_ITEM_V1_SIZE,
        RootItemSize::Stored(n) => n,
    };
    bytes.get(..len).unwrap_or(bytes).to_vec()
}

/// A ROOT_REF or ROOT_BACKREF body (inverse of [`parse_root_ref`]).
pub fn root_ref(r: &RootRefEntry) -> Result<Vec<u8>> {
    let name_len = name16(&r.name, "root ref")?;
    let mut out = RootRef { dirid: r.dirid.into(), sequence: r.sequence.into(), name_len: name_len.into() }.as_bytes().to_vec();
    out.extend_from_slice(&r.name);
    Ok(out)
}

// ---- chunks, devices, block groups ----

/// A CHUNK_ITEM body with its stripes (inverse of [`parse_chunk`]).
pub fn chunk_item(c: &ChunkInfo) -> Result<Vec<u8>> {
    if c.stripes.is_empty() {
        return Err(refuse("chunk item", "no stripes".into()));
    }
    u16::try_from(c.stripes.len()).map_err(|_| refuse("chunk item", format!("{} stripes", c.stripes.len())))?;
    Ok(c.to_bytes())
}

impl ChunkInfo {
    /// [`chunk_item`] without its checks, more than 65535 stripes counted as
    /// 65535.
    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Chunk {
            length: self.length.into(),
            owner: self.owner.into(),
            stripe_len: self.stripe_len.into(),
            chunk_type: self.chunk_type.into(),
            io_align: self.io_align.into(),
            io_width: self.io_width.into(),
            sector_size: self.sector_size.into(),
            num_stripes: u16::try_from(self.stripes.len()).unwrap_or(u16::MAX).into(),
            sub_stripes: self.sub_stripes.into(),
        }
        .as_bytes()
        .to_vec();
        for s in &self.stripes {
            v.extend_from_slice(Stripe { devid: s.devid.into(), offset: s.offset.into(), dev_uuid: s.dev_uuid }.as_bytes());
        }
        v
    }
}

/// The superblock's system chunk array: each chunk's key, then its chunk
/// item (inverse of `SuperBlock::sys_chunks`). Keys must be CHUNK_ITEM keys;
/// the array must fit the superblock's 2048 bytes.
pub fn sys_chunk_array(chunks: &[(Key, ChunkInfo)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (key, chunk) in chunks {
        if key.item_type != CHUNK_ITEM_KEY {
            return Err(refuse("system chunk array", format!("key {key} is not a CHUNK_ITEM key")));
        }
        out.extend_from_slice(key.to_disk().as_bytes());
        out.extend_from_slice(&chunk_item(chunk)?);
    }
    if out.len() > SYSTEM_CHUNK_ARRAY_SIZE {
        return Err(Error::Unsupported("system chunk array overflow".into()));
    }
    Ok(out)
}

/// A DEV_EXTENT body (inverse of [`parse_dev_extent`]).
pub fn dev_extent(d: &DevExtentInfo) -> Vec<u8> {
    DevExtent {
        chunk_tree: d.chunk_tree.into(),
        chunk_objectid: d.chunk_objectid.into(),
        chunk_offset: d.chunk_offset.into(),
        length: d.length.into(),
        chunk_tree_uuid: d.chunk_tree_uuid,
    }
    .as_bytes()
    .to_vec()
}

/// A BLOCK_GROUP_ITEM body (inverse of [`parse_block_group`]).
pub fn block_group_item(b: &BlockGroupInfo) -> Vec<u8> {
    BlockGroupItem { used: b.used.into(), chunk_objectid: b.chunk_objectid.into(), flags: b.flags.into() }.as_bytes().to_vec()
}

/// A DEV_ITEM body (read back with `read_prefix::<DevItem>`).
pub fn dev_item(d: &DevItem) -> Vec<u8> {
    d.as_bytes().to_vec()
}

/// An INODE_ITEM body (read back with `read_prefix::<InodeItem>`).
pub fn inode_item(i: &InodeItem) -> Vec<u8> {
    i.as_bytes().to_vec()
}

/// A FREE_SPACE_INFO body (read back with `read_prefix::<FreeSpaceInfo>`).
pub fn free_space_info(extent_count: u32, flags: u32) -> Vec<u8> {
    FreeSpaceInfo { extent_count: extent_count.into(), flags: flags.into() }.as_bytes().to_vec()
}

/// A QGROUP_STATUS item body at the length the stored item had (32 bytes
/// as kernels before 6.7 wrote it, without enable_gen), at most the full
/// item (inverse of [`parse_qgroup_status`]).
pub fn qgroup_status_item(s: &QgroupStatusItem, stored_len: usize) -> Vec<u8> {
    let bytes = s.as_bytes();
    bytes.get(..stored_len).unwrap_or(bytes).to_vec()
}

/// A QGROUP_INFO item of a new qgroup: generation, then referenced and
/// exclusive bytes (plain and compressed), all zero.
pub fn qgroup_info(generation: u64) -> Vec<u8> {
    u64_array(&[generation, 0, 0, 0, 0])
}

/// A QGROUP_LIMIT item without limits: flags, max referenced, max
/// exclusive, reserved referenced and exclusive, all zero.
pub fn qgroup_limit() -> Vec<u8> {
    u64_array(&[0; 5])
}

/// A little-endian u64 array: a UUID_KEY_* item's subvolume ids, a
/// DEV_STATS item's counters (inverse of [`parse_u64_array`]).
pub fn u64_array(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

// ---- extents and their back references ----

/// An EXTENT_ITEM or METADATA_ITEM body with its inline refs, put in the
/// order the kernel requires (inverse of [`parse_extent_item`]). Tree block
/// info (a non-skinny tree block) only goes with the TREE_BLOCK flag, which
/// is what tells a reader it is there.
pub fn extent_item(e: &ExtentInfo) -> Result<Vec<u8>> {
    if e.tree_block.is_some() && e.flags & EXTENT_FLAG_TREE_BLOCK == 0 {
        return Err(refuse("extent item", format!("tree block info with flags {:#x}", e.flags)));
    }
    Ok(e.to_bytes())
}

impl ExtentInfo {
    /// [`extent_item`] without its check.
    fn to_bytes(&self) -> Vec<u8> {
        let mut v = ExtentItem { refs: self.refs.into(), generation: self.generation.into(), flags: self.flags.into() }.as_bytes().to_vec();
        if let Some((key, level)) = self.tree_block {
            v.extend_from_slice(TreeBlockInfo { key: key.to_disk(), level }.as_bytes());
        }
        let mut refs = self.inline_refs.clone();
        refs.sort_by(|a, b| {
            let (a, b) = (a.order(), b.order());
            a.0.cmp(&b.0).then(b.1.cmp(&a.1))
        });
        for r in &refs {
            v.push(r.order().0);
            match *r {
                ExtentRef::Owner { root: x } | ExtentRef::TreeBlock { root: x } | ExtentRef::SharedBlock { parent: x } => {
                    v.extend_from_slice(&x.to_le_bytes())
                }
                ExtentRef::Data { root, objectid, offset, count } => v.extend_from_slice(
                    ExtentDataRef { root: root.into(), objectid: objectid.into(), offset: offset.into(), count: count.into() }.as_bytes(),
                ),
                ExtentRef::SharedData { parent, count } => {
                    v.extend_from_slice(&parent.to_le_bytes());
                    v.extend_from_slice(SharedDataRef { count: count.into() }.as_bytes());
                }
            }
        }
        v
    }
}

/// A back reference of the extent at `bytenr` as a keyed item of its own:
/// its key and body (inverse of [`parse_keyed_ref`]). Owner refs exist only
/// inline.
pub fn keyed_ref(bytenr: u64, r: &ExtentRef) -> Result<(Key, Vec<u8>)> {
    let (item_type, offset) = r.order();
    let body = match *r {
        ExtentRef::TreeBlock { .. } | ExtentRef::SharedBlock { .. } => Vec::new(),
        ExtentRef::Data { root, objectid, offset, count } => {
            ExtentDataRef { root: root.into(), objectid: objectid.into(), offset: offset.into(), count: count.into() }.as_bytes().to_vec()
        }
        ExtentRef::SharedData { count, .. } => SharedDataRef { count: count.into() }.as_bytes().to_vec(),
        ExtentRef::Owner { .. } => return Err(refuse("keyed back reference", "an owner ref is only ever inline".into())),
    };
    Ok((Key::new(bytenr, item_type, offset), body))
}

// ---- checksums ----

/// An EXTENT_CSUM body: the checksums of consecutive sectors, `csum.size()`
/// bytes each, back to back (inverse of [`parse_csum_item`]). Takes the
/// bytes as they were gathered and hands them back once checked.
pub fn csum_item(sums: Vec<u8>, csum: CsumType) -> Result<Vec<u8>> {
    if sums.len().checked_rem(csum.size()) != Some(0) {
        return Err(refuse("csum item", format!("{} bytes of {} checksums", sums.len(), csum.name())));
    }
    Ok(sums)
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use zerocopy::FromBytes;

    fn key() -> impl Strategy<Value = Key> {
        (any::<u64>(), any::<u8>(), any::<u64>()).prop_map(|(o, t, f)| Key::new(o, t, f))
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 1..=NAME_LEN)
    }

    /// Any bytes read as a fixed-size struct.
    fn fixed<T: FromBytes + std::fmt::Debug>() -> impl Strategy<Value = T> {
        vec(any::<u8>(), std::mem::size_of::<T>()).prop_map(|b| T::read_from_bytes(&b).unwrap())
    }

    fn dir_entry() -> impl Strategy<Value = DirEntry> {
        let entry = (key(), any::<u64>(), prop_oneof![0u8..=FT_SYMLINK, Just(FT_DIR | FT_ENCRYPTED)], name())
            .prop_map(|(location, transid, dir_type, name)| DirEntry { location, transid, dir_type, name, data: Vec::new() });
        let xattr = (any::<u64>(), vec(any::<u8>(), 1..=300), vec(any::<u8>(), 0..=2000)).prop_map(|(transid, name, data)| DirEntry {
            location: Key::MIN,
            transid,
            dir_type: FT_XATTR,
            name,
            data,
        });
        prop_oneof![entry, xattr]
    }

    fn inode_ref(parent: impl Strategy<Value = u64>) -> impl Strategy<Value = InodeRefEntry> {
        (parent, any::<u64>(), name()).prop_map(|(parent, index, name)| InodeRefEntry { parent, index, name })
    }

    fn extent_ref() -> impl Strategy<Value = ExtentRef> {
        prop_oneof![
            any::<u64>().prop_map(|root| ExtentRef::TreeBlock { root }),
            any::<u64>().prop_map(|parent| ExtentRef::SharedBlock { parent }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(root, objectid, offset, count)| ExtentRef::Data {
                root,
                objectid,
                offset,
                count
            }),
            (any::<u64>(), any::<u32>()).prop_map(|(parent, count)| ExtentRef::SharedData { parent, count }),
            any::<u64>().prop_map(|root| ExtentRef::Owner { root }),
        ]
    }

    fn chunk() -> impl Strategy<Value = ChunkInfo> {
        let stripe =
            (any::<u64>(), any::<u64>(), any::<[u8; 16]>()).prop_map(|(devid, offset, dev_uuid)| StripeInfo { devid, offset, dev_uuid });
        (any::<[u64; 4]>(), any::<[u32; 3]>(), any::<u16>(), vec(stripe, 1..=8)).prop_map(|(l, w, sub_stripes, stripes)| ChunkInfo {
            length: l[0],
            owner: l[1],
            stripe_len: l[2],
            chunk_type: l[3],
            io_align: w[0],
            io_width: w[1],
            sector_size: w[2],
            sub_stripes,
            stripes,
        })
    }

    proptest! {
        #[test]
        fn dir_items_round_trip(entries in vec(dir_entry(), 1..4)) {
            let one = dir_item(&entries[0]).unwrap();
            prop_assert_eq!(parse_dir_items(&one).unwrap(), vec![entries[0].clone()]);
            prop_assert_eq!(parse_dir_items(&dir_items(&entries).unwrap()).unwrap(), entries);
        }

        /// What the parser refuses, the encoder refuses too.
        #[test]
        fn dir_items_refused_as_parsed(mut e in dir_entry(), long in vec(any::<u8>(), NAME_LEN + 1..NAME_LEN + 50), data in vec(any::<u8>(), 1..10)) {
            if e.dir_type == FT_XATTR {
                e.name.clear();
            } else if data.len() % 2 == 0 {
                e.name = long;
            } else {
                e.data = data;
            }
            prop_assert!(dir_item(&e).is_err());
        }

        #[test]
        fn inode_refs_round_trip(parent in any::<u64>(), refs in vec(inode_ref(Just(0u64)), 1..4), ext in vec(inode_ref(any::<u64>()), 1..4)) {
            let refs: Vec<InodeRefEntry> = refs.into_iter().map(|r| InodeRefEntry { parent, ..r }).collect();
            let key = Key::new(257, INODE_REF_KEY, parent);
            prop_assert_eq!(parse_inode_refs(key, &inode_refs(&refs).unwrap()).unwrap(), refs.clone());
            prop_assert_eq!(inode_refs(&refs).unwrap(), encode_inode_refs(&refs));
            prop_assert_eq!(parse_inode_extrefs(&inode_extrefs(&ext).unwrap()).unwrap(), ext.clone());
            prop_assert_eq!(inode_extrefs(&ext).unwrap(), encode_inode_extrefs(&ext));
        }

        #[test]
        fn inode_refs_refuse_bad_names(mut r in inode_ref(any::<u64>()), long in vec(any::<u8>(), NAME_LEN + 1..NAME_LEN + 50), empty in any::<bool>()) {
            r.name = if empty { Vec::new() } else { long };
            prop_assert!(inode_refs(std::slice::from_ref(&r)).is_err());
            prop_assert!(inode_extrefs(std::slice::from_ref(&r)).is_err());
        }

        #[test]
        fn file_extents_round_trip(
            h in (any::<u64>(), any::<u64>(), any::<u8>(), any::<u8>(), any::<u16>()),
            inline in vec(any::<u8>(), 0..300),
            reg in (any::<bool>(), any::<[u64; 4]>()),
            is_inline in any::<bool>(),
        ) {
            let kind = if is_inline {
                FileExtentKind::Inline { data: inline }
            } else {
                let (prealloc, r) = reg;
                FileExtentKind::Regular { prealloc, disk_bytenr: r[0], disk_num_bytes: r[1], offset: r[2], num_bytes: r[3] }
            };
            let fe = FileExtent { generation: h.0, ram_bytes: h.1, compression: h.2, encryption: h.3, other_encoding: h.4, kind };
            prop_assert_eq!(parse_file_extent(&file_extent(&fe)).unwrap(), fe);
        }

        #[test]
        fn root_items_round_trip(r in fixed::<RootItem>()) {
            let full = root_item(&r, RootItemSize::Full);
            prop_assert_eq!(full.len(), std::mem::size_of::<RootItem>());
            let back = parse_root_item(&full).unwrap();
            prop_assert_eq!(back.as_bytes(), r.as_bytes());
            let v1 = root_item(&r, RootItemSize::V1);
            prop_assert_eq!(v1.len(), ROOT_ITEM_V1_SIZE);
            prop_assert_eq!(RootItemSize::of_len(v1.len()), RootItemSize::V1);
            prop_assert_eq!(RootItemSize::of_len(full.len()), RootItemSize::Full);
            let back = parse_root_item(&v1).unwrap();
            prop_assert_eq!(&back.as_bytes()[..ROOT_ITEM_V1_SIZE], &r.as_bytes()[..ROOT_ITEM_V1_SIZE]);
            prop_assert!(back.as_bytes()[ROOT_ITEM_V1_SIZE..].iter().all(|&b| b == 0));
            prop_assert_eq!(root_item(&back, RootItemSize::V1), v1);
        }

        /// A root item of any stored length is rewritten at that length
        /// (at most the full item's): the bytes it had, with the new values.
        #[test]
        fn root_items_keep_their_stored_length(r in fixed::<RootItem>(), len in 0usize..600) {
            let full = std::mem::size_of::<RootItem>();
            let bytes = root_item(&r, RootItemSize::of_len(len));
            prop_assert_eq!(&bytes[..], &r.as_bytes()[..len.min(full)]);
            if len >= ROOT_ITEM_V1_SIZE {
                let back = parse_root_item(&bytes).unwrap();
                prop_assert_eq!(&back.as_bytes()[..bytes.len()], &bytes[..]);
                prop_assert!(back.as_bytes()[bytes.len()..].iter().all(|&b| b == 0));
                prop_assert_eq!(root_item(&back, RootItemSize::of_len(len)), bytes);
            }
        }

        /// A qgroup status item round-trips at its stored length: the full
        /// 40 bytes, or the 32 without enable_gen (read back with it zero).
        #[test]
        fn qgroup_status_round_trip(s in fixed::<QgroupStatusItem>(), len in 0usize..60) {
            let full = std::mem::size_of::<QgroupStatusItem>();
            let bytes = qgroup_status_item(&s, len);
            prop_assert_eq!(&bytes[..], &s.as_bytes()[..len.min(full)]);
            let back = parse_qgroup_status(&bytes).unwrap();
            prop_assert_eq!(&back.as_bytes()[..bytes.len()], &bytes[..]);
            prop_assert!(back.as_bytes()[bytes.len()..].iter().all(|&b| b == 0));
            prop_assert_eq!(qgroup_status_item(&back, len), bytes);
            let whole = parse_qgroup_status(&qgroup_status_item(&s, full)).unwrap();
            prop_assert_eq!(whole.as_bytes(), s.as_bytes());
        }

        #[test]
        fn root_refs_round_trip(dirid in any::<u64>(), sequence in any::<u64>(), name in name()) {
            let r = RootRefEntry { dirid, sequence, name };
            prop_assert_eq!(parse_root_ref(&root_ref(&r).unwrap()).unwrap(), r.clone());
            let empty = RootRefEntry { name: Vec::new(), ..r.clone() };
            prop_assert!(root_ref(&empty).is_err());
            let long = RootRefEntry { name: vec![b'x'; NAME_LEN + 1], ..r };
            prop_assert!(root_ref(&long).is_err());
        }

        #[test]
        fn chunk_items_round_trip(c in chunk()) {
            let bytes = chunk_item(&c).unwrap();
            prop_assert_eq!(parse_chunk(&bytes).unwrap(), (c.clone(), bytes.len()));
            let none = ChunkInfo { stripes: Vec::new(), ..c };
            prop_assert!(chunk_item(&none).is_err());
        }

        #[test]
        fn sys_chunk_arrays_round_trip(chunks in vec((any::<u64>(), any::<u64>(), chunk()), 0..5)) {
            let chunks: Vec<(Key, ChunkInfo)> = chunks.into_iter().map(|(o, f, c)| (Key::new(o, CHUNK_ITEM_KEY, f), c)).collect();
            let bytes = sys_chunk_array(&chunks).unwrap();
            let mut sb = <SuperBlock as zerocopy::FromZeros>::new_zeroed();
            sb.sys_chunk_array[..bytes.len()].copy_from_slice(&bytes);
            sb.sys_chunk_array_size = (bytes.len() as u32).into();
            prop_assert_eq!(sb.sys_chunks().unwrap(), chunks.clone());
            if let Some((k, _)) = chunks.first() {
                let mut bad = chunks.clone();
                bad[0].0 = Key::new(k.objectid, DEV_ITEM_KEY, k.offset);
                prop_assert!(sys_chunk_array(&bad).is_err());
            }
        }

        #[test]
        fn dev_extents_round_trip(v in any::<[u64; 4]>(), uuid in any::<[u8; 16]>()) {
            let d = DevExtentInfo { chunk_tree: v[0], chunk_objectid: v[1], chunk_offset: v[2], length: v[3], chunk_tree_uuid: uuid };
            prop_assert_eq!(parse_dev_extent(&dev_extent(&d)).unwrap(), d);
        }

        #[test]
        fn block_groups_round_trip(v in any::<[u64; 3]>()) {
            let b = BlockGroupInfo { used: v[0], chunk_objectid: v[1], flags: v[2] };
            prop_assert_eq!(parse_block_group(&block_group_item(&b)).unwrap(), b);
        }

        #[test]
        fn fixed_items_round_trip(d in fixed::<DevItem>(), i in fixed::<InodeItem>(), count in any::<u32>(), flags in any::<u32>()) {
            let (d2, _) = read_prefix::<DevItem>(&dev_item(&d), "dev item").unwrap();
            prop_assert_eq!(d2.as_bytes(), d.as_bytes());
            let (i2, _) = read_prefix::<InodeItem>(&inode_item(&i), "inode item").unwrap();
            prop_assert_eq!(i2.as_bytes(), i.as_bytes());
            let (f, _) = read_prefix::<FreeSpaceInfo>(&free_space_info(count, flags), "free space info").unwrap();
            prop_assert_eq!((f.extent_count.get(), f.flags.get()), (count, flags));
        }

        #[test]
        fn u64_arrays_round_trip(v in vec(any::<u64>(), 0..10)) {
            prop_assert_eq!(parse_u64_array(&u64_array(&v), "x").unwrap(), v);
        }


        /// Extent items re-encode to what they decode from, refs in the
        /// kernel's order (types ascending, within a type the sequence
        /// descending) whatever order they came in.
        #[test]
        fn extent_items_round_trip(
            refs in vec(extent_ref(), 0..6),
            head in any::<[u64; 2]>(),
            tree in proptest::option::of((key(), any::<u8>())),
            metadata in any::<bool>(),
        ) {
            let (flags, key) = match (tree, metadata) {
                (Some(_), _) => (EXTENT_FLAG_TREE_BLOCK, Key::new(1 << 20, EXTENT_ITEM_KEY, 16384)),
                (None, true) => (EXTENT_FLAG_TREE_BLOCK | BLOCK_FLAG_FULL_BACKREF, Key::new(1 << 20, METADATA_ITEM_KEY, 0)),
                (None, false) => (EXTENT_FLAG_DATA, Key::new(1 << 20, EXTENT_ITEM_KEY, 4096)),
            };
            let e = ExtentInfo { refs: head[0], generation: head[1], flags, tree_block: tree, inline_refs: refs };
            let bytes = extent_item(&e).unwrap();
            let back = parse_extent_item(key, &bytes).unwrap();
            let order: Vec<(u8, u64)> = back.inline_refs.iter().map(|r| r.order()).collect();
            prop_assert!(order.windows(2).all(|w| w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1 >= w[1].1)), "{:?}", order);
            let mut want = e.inline_refs.clone();
            let mut got = back.inline_refs.clone();
            want.sort_by_key(|r| format!("{r:?}"));
            got.sort_by_key(|r| format!("{r:?}"));
            prop_assert_eq!(got, want);
            prop_assert_eq!((back.refs, back.generation, back.flags, back.tree_block), (e.refs, e.generation, e.flags, e.tree_block));
            prop_assert_eq!(extent_item(&back).unwrap(), bytes);
            if tree.is_some() {
                let data = ExtentInfo { flags: EXTENT_FLAG_DATA, ..e };
                prop_assert!(extent_item(&data).is_err());
            }
        }

        #[test]
        fn keyed_refs_round_trip(bytenr in any::<u64>(), r in extent_ref()) {
            match keyed_ref(bytenr, &r) {
                Ok((key, body)) => {
                    prop_assert_eq!(key.objectid, bytenr);
                    prop_assert_eq!(parse_keyed_ref(key, &body).unwrap(), r);
                }
                Err(_) => {
                    let owner = matches!(r, ExtentRef::Owner { .. });
                    prop_assert!(owner);
                }
            }
        }

        #[test]
        fn csum_items_round_trip(sums in vec(any::<u8>(), 0..200), kind in 0usize..4) {
            let csum = CsumType::ALL[kind];
            let n = sums.len() / csum.size() * csum.size();
            let whole = sums[..n].to_vec();
            let body = csum_item(whole.clone(), csum).unwrap();
            let back: Vec<u8> = parse_csum_item(&body, csum).unwrap().flatten().copied().collect();
            prop_assert_eq!(back, whole);
            prop_assert_eq!(parse_csum_item(&body, csum).unwrap().count(), n / csum.size());
            if n != sums.len() {
                prop_assert!(csum_item(sums.clone(), csum).is_err());
                prop_assert!(parse_csum_item(&sums, csum).is_err());
            }
        }
    }

    /// The example the kernel's ordering rule was first written down from.
    #[test]
    fn extent_item_sorts_refs() {
        let data = ExtentInfo {
            refs: 5,
            generation: 9,
            flags: EXTENT_FLAG_DATA,
            tree_block: None,
            inline_refs: vec![
                ExtentRef::SharedData { parent: 4096, count: 1 },
                ExtentRef::Data { root: 5, objectid: 257, offset: 0, count: 2 },
                ExtentRef::Data { root: 5, objectid: 258, offset: 8192, count: 1 },
                ExtentRef::SharedData { parent: 1024, count: 1 },
            ],
        };
        let key = Key::new(1 << 20, EXTENT_ITEM_KEY, 4096);
        let back = parse_extent_item(key, &extent_item(&data).unwrap()).unwrap();
        let order: Vec<(u8, u64)> = back.inline_refs.iter().map(|r| r.order()).collect();
        assert!(order.windows(2).all(|w| w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1 > w[1].1)), "{order:?}");
        assert_eq!(order.iter().filter(|o| o.0 == SHARED_DATA_REF_KEY).map(|o| o.1).collect::<Vec<_>>(), vec![4096, 1024]);
        assert_eq!(back.inline_refs.iter().map(|r| r.count()).sum::<u64>(), 5);
        assert_eq!(extent_item(&back).unwrap(), extent_item(&data).unwrap());
    }
}
