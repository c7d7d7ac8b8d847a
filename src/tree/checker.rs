//! The rules of the kernel's tree-checker (fs/btrfs/tree-checker.c) for one
//! tree block, written anew from those rules: key order, item offsets and
//! sizes, and per-item-type checks of leaves; level, pointer count, pointers
//! and key order of nodes.
//!
//! The kernel runs its checker on every block it reads and on every block it
//! writes. btrs runs this one on every tree block it seals (the COW engine's
//! commits and mkfs), so a bug that would produce an item the kernel rejects
//! fails the command before the superblock names the block, instead of
//! leaving an image that the kernel refuses to mount.
//!
//! A few rules are btrs's own, beyond the kernel's checker (each says
//! "btrs:"): directory entry and inode ref names of 1..=255 bytes without '/'
//! or NUL, inode sizes within the largest file size, exact sizes of items the
//! kernel reads without checking them. Images made by mkfs.btrfs and the
//! kernel pass them too (tests check both), so they never refuse a real image.

use zerocopy::FromBytes;

use super::block::{HEADER_SIZE, ITEM_SIZE, KEY_PTR_SIZE};
use crate::error::Error;
use crate::format::items::{extent_data_ref_hash, name_hash};
use crate::format::limits::{max_xattr_size, MAX_FILE_SIZE, MAX_NAME_LEN, MAX_XATTR_NAME_LEN};
use crate::format::*;

/// What the rules depend on besides the block: the filesystem's geometry and
/// features, and the generation that items may not be newer than (plus one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub nodesize: u32,
    pub sectorsize: u32,
    pub csum_size: usize,
    pub incompat: u64,
    /// The superblock generation: the last committed one for a block read,
    /// the one being committed for a block written.
    pub super_generation: u64,
}

/// The first rule a block breaks: which item (leaf slot or node pointer) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub(crate) slot: Option<usize>,
    pub(crate) key: Option<Key>,
    pub(crate) what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.slot, self.key) {
            (Some(s), Some(k)) => write!(f, "slot {s} key {k}: {}", self.what),
            (Some(s), None) => write!(f, "slot {s}: {}", self.what),
            _ => write!(f, "{}", self.what),
        }
    }
}

impl Violation {
    /// The error for a block btrs was about to write: a bug in btrs.
    pub(crate) fn into_error(self, owner: u64, logical: u64) -> Error {
        let tree = crate::format::types::tree_name(owner).map(str::to_string).unwrap_or_else(|| format!("tree {owner}"));
        Error::TreeCheck { tree, block: logical, what: self.to_string() }
    }
}

type Check = std::result::Result<(), Violation>;

fn bad(what: impl Into<String>) -> Violation {
    Violation { slot: None, key: None, what: what.into() }
}

fn read<T: FromBytes>(data: &[u8], at: usize) -> Option<T> {
    T::read_from_prefix(data.get(at..)?).ok().map(|(v, _)| v)
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    read::<zerocopy::little_endian::U64>(data, at).map(|v| v.get())
}

fn aligned(v: u64, to: u32) -> bool {
    v.checked_rem(u64::from(to)) == Some(0)
}

/// The kernel's is_fstree: the top subvolume, or a subvolume id (not a
/// qgroup id with a level, not one of the negative special trees).
pub(crate) fn is_fstree(id: u64) -> bool {
    // The kernel compares as signed: the negative special trees are below.
    let signed = i64::from_ne_bytes(id.to_ne_bytes());
    id == FS_TREE_OBJECTID || (signed >= 256 && id >> 48 == 0)
}

/// Check one tree block (leaf or node), as laid out on disk.
pub fn check_block(block: &[u8], rules: &Rules) -> Check {
    if block.len() != usize_of(rules.nodesize) {
        return Err(bad(format!("block of {} bytes, nodesize is {}", block.len(), rules.nodesize)));
    }
    let header = read::<Header>(block, 0).ok_or_else(|| bad("block shorter than a header"))?;
    if header.level == 0 {
        check_leaf(block, &header, rules)
    } else {
        check_node(block, &header, rules)
    }
}

fn check_node(block: &[u8], header: &Header, rules: &Rules) -> Check {
    let level = header.level;
    if level >= MAX_LEVEL {
        return Err(bad(format!("invalid level for node, have {level} expect [1, {}]", MAX_LEVEL.saturating_sub(1))));
    }
    let n = usize_of(header.nritems.get());
    let max = usize_of(rules.nodesize).saturating_sub(HEADER_SIZE).checked_div(KEY_PTR_SIZE).unwrap_or(0);
    if n == 0 || n > max {
        return Err(bad(format!("node with {n} pointers, expect [1, {max}]")));
    }
    let mut prev: Option<Key> = None;
    for slot in 0..n {
        // OK: slot < nritems <= what fits a 64 KiB node.
        #[allow(clippy::arithmetic_side_effects)]
        let p = read::<KeyPtr>(block, HEADER_SIZE + slot * KEY_PTR_SIZE).ok_or_else(|| bad("pointer past the block"))?;
        let key = Key::from_disk(&p.key);
        let at = |what: String| Violation { slot: Some(slot), key: Some(key), what };
        let ptr = p.blockptr.get();
        if ptr == 0 {
            return Err(at("null block pointer".into()));
        }
        if !aligned(ptr, rules.sectorsize) {
            return Err(at(format!("block pointer {ptr} not aligned to {}", rules.sectorsize)));
        }
        if let Some(pk) = prev {
            if pk >= key {
                return Err(at(format!("bad key order, previous {pk}")));
            }
        }
        prev = Some(key);
    }
    Ok(())
}

/// Leaf item `slot` as laid out: its key and body.
struct Slot<'a> {
    key: Key,
    data: &'a [u8],
}

fn check_leaf(block: &[u8], header: &Header, rules: &Rules) -> Check {
    let n = usize_of(header.nritems.get());
    let owner = header.owner.get();
    let flags = header.flags.get();
    if n == 0 {
        // Only a root can be an empty leaf; some trees may never be empty.
        if flags & HEADER_FLAG_RELOC == 0 {
            if matches!(owner, ROOT_TREE_OBJECTID | CHUNK_TREE_OBJECTID | DEV_TREE_OBJECTID | FS_TREE_OBJECTID | DATA_RELOC_TREE_OBJECTID) {
                return Err(bad(format!("tree {owner} must never be empty")));
            }
            if owner == 0 {
                return Err(bad("invalid owner, root 0 is not defined"));
            }
            if owner == EXTENT_TREE_OBJECTID && rules.incompat & INCOMPAT_EXTENT_TREE_V2 == 0 {
                return Err(bad(format!("tree {owner} must never be empty")));
            }
        }
        return Ok(());
    }
    let data_size = usize_of(rules.nodesize).saturating_sub(HEADER_SIZE);
    // Item data is checked only in blocks that reached disk, as the kernel does.
    let check_data = flags & HEADER_FLAG_WRITTEN != 0;
    let mut prev: Option<Slot> = None;
    let mut prev_offset = u64_of(data_size);
    for slot in 0..n {
        let header_at = slot.saturating_mul(ITEM_SIZE).saturating_add(HEADER_SIZE);
        let item = read::<Item>(block, header_at).ok_or_else(|| bad(format!("item header {slot} past the block")))?;
        let key = Key::from_disk(&item.key);
        let at = |what: String| Violation { slot: Some(slot), key: Some(key), what };
        // Keys above (0, 0, 0), strictly increasing.
        let pk = prev.as_ref().map_or(Key::MIN, |p| p.key);
        if pk >= key {
            return Err(at(format!("bad key order, previous {pk}")));
        }
        let (off, size) = (u64::from(item.offset.get()), u64::from(item.size.get()));
        // Two u32s: no overflow in u64.
        let end = off.saturating_add(size);
        // Bodies packed from the end of the leaf downwards, no gap, no overlap.
        if end != prev_offset {
            return Err(at(format!("unexpected item end, have {end} expect {prev_offset}")));
        }
        if end > u64_of(data_size) {
            return Err(at(format!("item end {end} outside the leaf data ({data_size})")));
        }
        if off < u64_of(slot.saturating_add(1).saturating_mul(ITEM_SIZE)) {
            return Err(at(format!("item data at {off} overlaps the item headers")));
        }
        let range = usize::try_from(off)
            .ok()
            .zip(usize::try_from(end).ok())
            .map(|(o, e)| o.saturating_add(HEADER_SIZE)..e.saturating_add(HEADER_SIZE));
        let data = range.and_then(|r| block.get(r)).ok_or_else(|| at("item data past the block".into()))?;
        let cur = Slot { key, data };
        if check_data {
            check_item(&cur, prev.as_ref(), owner, rules).map_err(|v| Violation { slot: Some(slot), key: Some(key), ..v })?;
        }
        prev = Some(cur);
        prev_offset = off;
    }
    Ok(())
}

fn check_item(cur: &Slot, prev: Option<&Slot>, owner: u64, rules: &Rules) -> Check {
    match cur.key.item_type {
        EXTENT_DATA_KEY => check_file_extent(cur, prev, owner, rules),
        EXTENT_CSUM_KEY => check_csum(cur, prev, rules),
        DIR_ITEM_KEY | DIR_INDEX_KEY | XATTR_ITEM_KEY => check_dir_item(cur, prev, owner, rules),
        INODE_REF_KEY => check_inode_ref(cur, prev, owner),
        INODE_EXTREF_KEY => check_inode_extref(cur),
        BLOCK_GROUP_ITEM_KEY => check_block_group(cur),
        CHUNK_ITEM_KEY => check_chunk(cur, rules),
        DEV_ITEM_KEY => check_dev_item(cur),
        DEV_EXTENT_KEY => check_dev_extent(cur, prev, rules),
        INODE_ITEM_KEY => check_inode_item(cur, rules),
        ROOT_ITEM_KEY => check_root_item(cur, rules),
        EXTENT_ITEM_KEY | METADATA_ITEM_KEY => check_extent_item(cur, prev, rules),
        TREE_BLOCK_REF_KEY | SHARED_DATA_REF_KEY | SHARED_BLOCK_REF_KEY => check_keyed_ref(cur, rules),
        EXTENT_DATA_REF_KEY => check_extent_data_ref(cur, rules),
        _ => Ok(()),
    }
}

/// In subvolume trees, an inode's items follow its INODE_ITEM in the same
/// leaf, or start the leaf: a different objectid before means a missing inode item.
fn check_prev_ino(cur: &Slot, prev: Option<&Slot>, owner: u64) -> Check {
    match prev {
        Some(p) if is_fstree(owner) && p.key.objectid != cur.key.objectid => {
            Err(bad(format!("invalid previous key objectid, have {} expect {}", p.key.objectid, cur.key.objectid)))
        }
        _ => Ok(()),
    }
}

/// Where a file extent item's range ends (inline: rounded up to a sector).
fn file_extent_end(key: Key, data: &[u8], sectorsize: u32) -> Option<u64> {
    let h = read::<FileExtentHeader>(data, 0)?;
    if h.extent_type == FILE_EXTENT_INLINE {
        // Wrapping like the kernel's u64 arithmetic; a wrapped end is then out of order.
        let ss = u64::from(sectorsize).max(1);
        #[allow(clippy::arithmetic_side_effects)]
        Some(key.offset.wrapping_add(h.ram_bytes.get()).wrapping_add(ss - 1) / ss * ss)
    } else {
        Some(key.offset.wrapping_add(read::<FileExtentBody>(data, FILE_EXTENT_INLINE_DATA_START)?.num_bytes.get()))
    }
}

fn check_file_extent(cur: &Slot, prev: Option<&Slot>, owner: u64, rules: &Rules) -> Check {
    let (key, size) = (cur.key, cur.data.len());
    let ss = rules.sectorsize;
    if !aligned(key.offset, ss) {
        return Err(bad(format!("unaligned file offset {}, should be aligned to {ss}", key.offset)));
    }
    check_prev_ino(cur, prev, owner)?;
    let h = read::<FileExtentHeader>(cur.data, 0)
        .ok_or_else(|| bad(format!("invalid item size {size}, expect at least {FILE_EXTENT_INLINE_DATA_START}")))?;
    if h.extent_type > FILE_EXTENT_PREALLOC {
        return Err(bad(format!("invalid file extent type {}", h.extent_type)));
    }
    if h.compression > COMPRESS_ZSTD {
        return Err(bad(format!("invalid compression {}", h.compression)));
    }
    if h.encryption != 0 {
        return Err(bad(format!("invalid encryption {}, expect 0", h.encryption)));
    }
    if h.extent_type == FILE_EXTENT_INLINE {
        if key.offset != 0 {
            return Err(bad(format!("inline extent at file offset {}, expect 0", key.offset)));
        }
        // A compressed inline extent has no size to compare with.
        if h.compression == COMPRESS_NONE && Some(u64_of(size)) != u64_of(FILE_EXTENT_INLINE_DATA_START).checked_add(h.ram_bytes.get()) {
            return Err(bad(format!("uncompressed inline extent of {size} bytes with ram_bytes {}", h.ram_bytes.get())));
        }
        return Ok(());
    }
    let body_end = FILE_EXTENT_INLINE_DATA_START.saturating_add(std::mem::size_of::<FileExtentBody>());
    if size != body_end {
        return Err(bad(format!("invalid item size {size} for a regular/prealloc extent, expect {body_end}")));
    }
    let b = read::<FileExtentBody>(cur.data, FILE_EXTENT_INLINE_DATA_START).ok_or_else(|| bad("short extent"))?;
    for (name, v) in [
        ("ram_bytes", h.ram_bytes.get()),
        ("disk_bytenr", b.disk_bytenr.get()),
        ("disk_num_bytes", b.disk_num_bytes.get()),
        ("offset", b.offset.get()),
        ("num_bytes", b.num_bytes.get()),
    ] {
        if !aligned(v, ss) {
            return Err(bad(format!("invalid {name} {v} for a file extent, should be aligned to {ss}")));
        }
    }
    if key.offset.checked_add(b.num_bytes.get()).is_none() {
        return Err(bad(format!("extent end overflow, file offset {} num_bytes {}", key.offset, b.num_bytes.get())));
    }
    if let Some(p) = prev.filter(|p| p.key.objectid == key.objectid && p.key.item_type == EXTENT_DATA_KEY) {
        if let Some(prev_end) = file_extent_end(p.key, p.data, ss) {
            if prev_end > key.offset {
                return Err(bad(format!("previous file extent ends at {prev_end}, past this one's start {}", key.offset)));
            }
        }
    }
    Ok(())
}

fn check_csum(cur: &Slot, prev: Option<&Slot>, rules: &Rules) -> Check {
    let key = cur.key;
    if key.objectid != EXTENT_CSUM_OBJECTID {
        return Err(bad(format!("invalid objectid {} for a csum item", key.objectid)));
    }
    if !aligned(key.offset, rules.sectorsize) {
        return Err(bad(format!("csum item offset {} not aligned to {}", key.offset, rules.sectorsize)));
    }
    if cur.data.len().checked_rem(rules.csum_size) != Some(0) {
        return Err(bad(format!("csum item of {} bytes, not a multiple of {}", cur.data.len(), rules.csum_size)));
    }
    if let Some(p) = prev.filter(|p| p.key.item_type == EXTENT_CSUM_KEY) {
        let sectors = u64_of(p.data.len().checked_div(rules.csum_size).unwrap_or(0));
        let prev_end = sectors.saturating_mul(u64::from(rules.sectorsize)).saturating_add(p.key.offset);
        if prev_end > key.offset {
            return Err(bad(format!("previous csum item ends at {prev_end}, past this one's start {}", key.offset)));
        }
    }
    Ok(())
}

/// An inode item's key, or a dir entry's location pointing at an inode.
fn check_inode_key(location: Key, item_type: u8) -> Check {
    if item_type == XATTR_ITEM_KEY {
        if location != Key::MIN {
            return Err(bad(format!("xattr location key {location}, expect (0 0 0)")));
        }
        return Ok(());
    }
    let id = location.objectid;
    if !(FIRST_FREE_OBJECTID..=LAST_FREE_OBJECTID).contains(&id) && id != ROOT_TREE_DIR_OBJECTID && id != FREE_INO_OBJECTID {
        return Err(bad(format!("invalid inode objectid {id}")));
    }
    if location.offset != 0 {
        return Err(bad(format!("invalid inode key offset {}, expect 0", location.offset)));
    }
    Ok(())
}

/// A root item's key, or a dir entry's location pointing at a subvolume.
fn check_root_key(k: Key, is_root_item: bool) -> Check {
    if k.objectid == 0 {
        return Err(bad("invalid root id 0"));
    }
    if !is_root_item && !is_fstree(k.objectid) {
        return Err(bad(format!("location key root {} is not a subvolume", k.objectid)));
    }
    if k.objectid == TREE_RELOC_OBJECTID && k.offset == 0 {
        return Err(bad("invalid root id 0 for a reloc tree"));
    }
    Ok(())
}

/// btrs: a name in a directory entry or inode ref: 1..=255 bytes, no '/' or NUL.
fn check_entry_name(name: &[u8]) -> Check {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(&b'/') || name.contains(&0) {
        return Err(bad(format!(
            "name {:?} of {} bytes: 1..={MAX_NAME_LEN} bytes without '/' or NUL",
            crate::name::Name(name),
            name.len()
        )));
    }
    Ok(())
}

fn check_dir_item(cur: &Slot, prev: Option<&Slot>, owner: u64, rules: &Rules) -> Check {
    let key = cur.key;
    check_prev_ino(cur, prev, owner)?;
    let size = cur.data.len();
    let mut pos = 0;
    while pos < size {
        let d = read::<DirItem>(cur.data, pos).ok_or_else(|| bad(format!("dir item header at {pos} crosses the item end {size}")))?;
        let location = Key::from_disk(&d.location);
        match location.item_type {
            ROOT_ITEM_KEY => check_root_key(location, false)?,
            INODE_ITEM_KEY | 0 => check_inode_key(location, key.item_type)?,
            t => return Err(bad(format!("invalid location key type {t}"))),
        }
        let ft = d.dir_type & !FT_ENCRYPTED;
        if ft > FT_XATTR {
            return Err(bad(format!("invalid dir item type {ft}")));
        }
        if key.item_type == XATTR_ITEM_KEY && ft != FT_XATTR {
            return Err(bad(format!("dir item type {ft} under an XATTR key")));
        }
        if ft == FT_XATTR && key.item_type != XATTR_ITEM_KEY {
            return Err(bad("xattr dir type under a non-XATTR key"));
        }
        let name_len = usize::from(d.name_len.get());
        let data_len = usize::from(d.data_len.get());
        let max_name = if ft == FT_XATTR { MAX_XATTR_NAME_LEN } else { MAX_NAME_LEN };
        if name_len > max_name {
            return Err(bad(format!("dir item name of {name_len} bytes, at most {max_name}")));
        }
        let max = max_xattr_size(rules.nodesize);
        if name_len.saturating_add(data_len) > max {
            return Err(bad(format!("dir item name and data of {} bytes, at most {max}", name_len.saturating_add(data_len))));
        }
        if data_len != 0 && ft != FT_XATTR {
            return Err(bad(format!("dir item with data of {data_len} bytes, expect 0")));
        }
        let start = pos.saturating_add(std::mem::size_of::<DirItem>());
        let total = std::mem::size_of::<DirItem>().saturating_add(name_len).saturating_add(data_len);
        let next = pos.saturating_add(total);
        if next > size {
            return Err(bad(format!("dir item data crosses the item end, have {next} boundary {size}")));
        }
        let name = cur.data.get(start..start.saturating_add(name_len)).ok_or_else(|| bad("dir item name past the item"))?;
        if key.item_type == DIR_ITEM_KEY || key.item_type == XATTR_ITEM_KEY {
            let h = name_hash(name);
            if key.offset != h {
                return Err(bad(format!("name hash {h:#x} does not match the key offset {:#x}", key.offset)));
            }
        }
        // btrs: names are never empty; entry names hold no '/' or NUL.
        if name.is_empty() {
            return Err(bad("dir item with an empty name"));
        }
        if ft != FT_XATTR {
            check_entry_name(name)?;
        }
        pos = next;
    }
    Ok(())
}

fn check_inode_ref(cur: &Slot, prev: Option<&Slot>, owner: u64) -> Check {
    check_prev_ino(cur, prev, owner)?;
    let hdr = std::mem::size_of::<InodeRef>();
    if cur.data.len() <= hdr {
        return Err(bad(format!("inode ref of {} bytes, expect more than {hdr}", cur.data.len())));
    }
    let mut pos = 0;
    while pos < cur.data.len() {
        let r = read::<InodeRef>(cur.data, pos).ok_or_else(|| bad(format!("inode ref header at {pos} overflows the item")))?;
        let start = pos.saturating_add(hdr);
        let end = start.saturating_add(usize::from(r.name_len.get()));
        let name = cur.data.get(start..end).ok_or_else(|| bad(format!("inode ref name at {start} overflows the item")))?;
        check_entry_name(name)?;
        pos = end;
    }
    Ok(())
}

fn check_inode_extref(cur: &Slot) -> Check {
    let hdr = std::mem::size_of::<InodeExtref>();
    let mut pos = 0;
    while pos < cur.data.len() {
        let r = read::<InodeExtref>(cur.data, pos).ok_or_else(|| bad(format!("inode extref header at {pos} overflows the item")))?;
        let start = pos.saturating_add(hdr);
        let end = start.saturating_add(usize::from(r.name_len.get()));
        let name = cur.data.get(start..end).ok_or_else(|| bad(format!("inode extref name at {start} overflows the item")))?;
        check_entry_name(name)?;
        pos = end;
    }
    Ok(())
}

fn check_block_group(cur: &Slot) -> Check {
    let key = cur.key;
    if key.offset == 0 {
        return Err(bad("block group of size 0"));
    }
    if cur.data.len() != std::mem::size_of::<BlockGroupItem>() {
        return Err(bad(format!("block group item of {} bytes, expect {}", cur.data.len(), std::mem::size_of::<BlockGroupItem>())));
    }
    let bg = read::<BlockGroupItem>(cur.data, 0).ok_or_else(|| bad("short block group item"))?;
    if bg.chunk_objectid.get() != FIRST_CHUNK_TREE_OBJECTID {
        return Err(bad(format!("block group chunk objectid {}, expect {FIRST_CHUNK_TREE_OBJECTID}", bg.chunk_objectid.get())));
    }
    if bg.used.get() > key.offset {
        return Err(bad(format!("block group used {} larger than its size {}", bg.used.get(), key.offset)));
    }
    let flags = bg.flags.get();
    if (flags & BLOCK_GROUP_PROFILE_MASK).count_ones() > 1 {
        return Err(bad(format!("block group profile flags {:#x} with more than one bit", flags & BLOCK_GROUP_PROFILE_MASK)));
    }
    let t = flags & BLOCK_GROUP_TYPE_MASK;
    if ![BLOCK_GROUP_DATA, BLOCK_GROUP_METADATA, BLOCK_GROUP_SYSTEM, BLOCK_GROUP_METADATA | BLOCK_GROUP_DATA].contains(&t) {
        return Err(bad(format!("invalid block group type {t:#x}")));
    }
    Ok(())
}

/// (ncopies, nparity) of a chunk's profile, picked as the kernel's
/// btrfs_bg_flags_to_raid_index does.
fn copies_parity(t: u64) -> (u16, u16) {
    if t & (BLOCK_GROUP_RAID10 | BLOCK_GROUP_RAID1 | BLOCK_GROUP_DUP) != 0 {
        (2, 0)
    } else if t & BLOCK_GROUP_RAID0 != 0 {
        (1, 0)
    } else if t & BLOCK_GROUP_RAID1C3 != 0 {
        (3, 0)
    } else if t & BLOCK_GROUP_RAID1C4 != 0 {
        (4, 0)
    } else if t & BLOCK_GROUP_RAID5 != 0 {
        (1, 1)
    } else if t & BLOCK_GROUP_RAID6 != 0 {
        (1, 2)
    } else {
        (1, 0)
    }
}

fn check_chunk(cur: &Slot, rules: &Rules) -> Check {
    let c = read::<Chunk>(cur.data, 0)
        .ok_or_else(|| bad(format!("chunk item of {} bytes, below {}", cur.data.len(), std::mem::size_of::<Chunk>())))?;
    let n = c.num_stripes.get();
    if n != 0 {
        let want = usize::from(n).saturating_mul(std::mem::size_of::<Stripe>()).saturating_add(std::mem::size_of::<Chunk>());
        if cur.data.len() != want {
            return Err(bad(format!("chunk item of {} bytes, expect {want} for {n} stripes", cur.data.len())));
        }
    }
    check_chunk_valid(&c, cur.key.offset, rules)
}

/// The kernel's btrfs_check_chunk_valid (also used on the superblock's system chunk array).
pub(crate) fn check_chunk_valid(c: &Chunk, logical: u64, rules: &Rules) -> Check {
    let (length, stripe_len, n, sub) = (c.length.get(), c.stripe_len.get(), c.num_stripes.get(), c.sub_stripes.get());
    let t = c.chunk_type.get();
    let (ncopies, nparity) = copies_parity(t);
    if n == 0 {
        return Err(bad("chunk with 0 stripes"));
    }
    if n < ncopies {
        return Err(bad(format!("chunk num_stripes {n} < ncopies {ncopies}")));
    }
    if nparity != 0 && n == nparity {
        return Err(bad(format!("chunk num_stripes {n} == nparity")));
    }
    if !aligned(logical, rules.sectorsize) {
        return Err(bad(format!("chunk logical {logical} not aligned to {}", rules.sectorsize)));
    }
    if c.sector_size.get() != rules.sectorsize {
        return Err(bad(format!("chunk sectorsize {}, expect {}", c.sector_size.get(), rules.sectorsize)));
    }
    if length == 0 || !aligned(length, rules.sectorsize) {
        return Err(bad(format!("invalid chunk length {length}")));
    }
    if logical.checked_add(length).is_none() {
        return Err(bad(format!("chunk start {logical} plus length {length} overflows")));
    }
    if stripe_len != STRIPE_LEN {
        return Err(bad(format!("invalid chunk stripe length {stripe_len}")));
    }
    if length >= u64::from(u32::MAX) << 16 {
        return Err(bad(format!("chunk length {length} too large")));
    }
    if t & !(BLOCK_GROUP_TYPE_MASK | BLOCK_GROUP_PROFILE_MASK) != 0 {
        return Err(bad(format!("unrecognized chunk type {t:#x}")));
    }
    let profile = t & BLOCK_GROUP_PROFILE_MASK;
    if profile.count_ones() > 1 {
        return Err(bad(format!("chunk profile flags {profile:#x}, expect 0 or 1 bit")));
    }
    if t & BLOCK_GROUP_TYPE_MASK == 0 {
        return Err(bad(format!("chunk type {t:#x} without a type bit")));
    }
    if t & BLOCK_GROUP_SYSTEM != 0 && t & (BLOCK_GROUP_METADATA | BLOCK_GROUP_DATA) != 0 {
        return Err(bad(format!("system chunk with data or metadata type {t:#x}")));
    }
    if rules.incompat & INCOMPAT_MIXED_GROUPS == 0 && t & BLOCK_GROUP_METADATA != 0 && t & BLOCK_GROUP_DATA != 0 {
        return Err(bad(format!("mixed chunk type {t:#x} in a non-mixed filesystem")));
    }
    let stripes_ok = match profile {
        BLOCK_GROUP_RAID10 => sub == 2,
        BLOCK_GROUP_RAID1 => n == 2,
        BLOCK_GROUP_RAID1C3 => n == 3,
        BLOCK_GROUP_RAID1C4 => n == 4,
        BLOCK_GROUP_RAID5 => n >= 2,
        BLOCK_GROUP_RAID6 => n >= 3,
        BLOCK_GROUP_DUP => n == 2,
        0 => n == 1,
        _ => true,
    };
    if !stripes_ok {
        return Err(bad(format!("invalid num_stripes:sub_stripes {n}:{sub} for profile {profile:#x}")));
    }
    Ok(())
}

fn check_dev_item(cur: &Slot) -> Check {
    if cur.key.objectid != DEV_ITEMS_OBJECTID {
        return Err(bad(format!("dev item objectid {}, expect {DEV_ITEMS_OBJECTID}", cur.key.objectid)));
    }
    if cur.data.len() != std::mem::size_of::<DevItem>() {
        return Err(bad(format!("dev item of {} bytes, expect {}", cur.data.len(), std::mem::size_of::<DevItem>())));
    }
    let d = read::<DevItem>(cur.data, 0).ok_or_else(|| bad("short dev item"))?;
    if d.devid.get() != cur.key.offset {
        return Err(bad(format!("devid {} does not match the key's {}", d.devid.get(), cur.key.offset)));
    }
    if d.bytes_used.get() > d.total_bytes.get() {
        return Err(bad(format!("dev bytes_used {} above total_bytes {}", d.bytes_used.get(), d.total_bytes.get())));
    }
    Ok(())
}

fn check_dev_extent(cur: &Slot, prev: Option<&Slot>, rules: &Rules) -> Check {
    // btrs: the exact size (the kernel reads the fields without checking it).
    if cur.data.len() != std::mem::size_of::<DevExtent>() {
        return Err(bad(format!("dev extent of {} bytes, expect {}", cur.data.len(), std::mem::size_of::<DevExtent>())));
    }
    let de = read::<DevExtent>(cur.data, 0).ok_or_else(|| bad("short dev extent"))?;
    if de.chunk_tree.get() != CHUNK_TREE_OBJECTID {
        return Err(bad(format!("dev extent chunk tree {}, expect {CHUNK_TREE_OBJECTID}", de.chunk_tree.get())));
    }
    if de.chunk_objectid.get() != FIRST_CHUNK_TREE_OBJECTID {
        return Err(bad(format!("dev extent chunk objectid {}, expect {FIRST_CHUNK_TREE_OBJECTID}", de.chunk_objectid.get())));
    }
    for (name, v) in [("key offset", cur.key.offset), ("chunk_offset", de.chunk_offset.get()), ("length", de.length.get())] {
        if !aligned(v, rules.sectorsize) {
            return Err(bad(format!("dev extent {name} {v} not aligned to {}", rules.sectorsize)));
        }
    }
    if let Some(p) = prev.filter(|p| p.key.objectid == cur.key.objectid && p.key.item_type == DEV_EXTENT_KEY) {
        if let Some(pd) = read::<DevExtent>(p.data, 0) {
            let prev_end = p.key.offset.wrapping_add(pd.length.get());
            if prev_end > cur.key.offset {
                return Err(bad(format!("dev extent overlaps the previous one ending at {prev_end}")));
            }
        }
    }
    Ok(())
}

const INODE_FLAG_MASK: u64 = INODE_NODATASUM
    | INODE_NODATACOW
    | INODE_READONLY
    | INODE_NOCOMPRESS
    | INODE_PREALLOC
    | INODE_SYNC
    | INODE_IMMUTABLE
    | INODE_APPEND
    | INODE_NODUMP
    | INODE_NOATIME
    | INODE_DIRSYNC
    | INODE_COMPRESS
    | INODE_ROOT_ITEM_INIT;
/// Read-only compat inode flags (upper 32 bits): fs-verity.
const INODE_RO_FLAG_MASK: u64 = 1 << 32;

fn check_inode_item(cur: &Slot, rules: &Rules) -> Check {
    check_inode_key(cur.key, INODE_ITEM_KEY)?;
    if cur.data.len() != std::mem::size_of::<InodeItem>() {
        return Err(bad(format!("inode item of {} bytes, expect {}", cur.data.len(), std::mem::size_of::<InodeItem>())));
    }
    let it = read::<InodeItem>(cur.data, 0).ok_or_else(|| bad("short inode item"))?;
    let limit = rules.super_generation.saturating_add(1);
    if it.generation.get() > limit {
        return Err(bad(format!("inode generation {} above {limit}", it.generation.get())));
    }
    if it.transid.get() > limit {
        return Err(bad(format!("inode transid {} above {limit}", it.transid.get())));
    }
    let mode = it.mode.get();
    if mode & !(S_IFMT | 0o7777) != 0 {
        return Err(bad(format!("unknown mode bits {:#o}", mode & !(S_IFMT | 0o7777))));
    }
    let fmt = mode & S_IFMT;
    if ![S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK].contains(&fmt) {
        return Err(bad(format!("invalid file type in mode {fmt:#o}")));
    }
    if fmt == S_IFDIR && it.nlink.get() > 1 {
        return Err(bad(format!("directory with nlink {}", it.nlink.get())));
    }
    let flags = it.flags.get();
    if flags & 0xffff_ffff & !INODE_FLAG_MASK != 0 {
        return Err(bad(format!("unknown inode flags {:#x}", flags & 0xffff_ffff & !INODE_FLAG_MASK)));
    }
    if flags & !0xffff_ffff & !INODE_RO_FLAG_MASK != 0 {
        return Err(bad(format!("unknown read-only compat inode flags {:#x}", flags >> 32)));
    }
    // btrs: no file is larger than the largest file size.
    if it.size.get() > MAX_FILE_SIZE {
        return Err(bad(format!("inode size {} past the largest file size {MAX_FILE_SIZE}", it.size.get())));
    }
    Ok(())
}

fn check_root_item(cur: &Slot, rules: &Rules) -> Check {
    check_root_key(cur.key, true)?;
    let size = cur.data.len();
    if size != std::mem::size_of::<RootItem>() && size != ROOT_ITEM_V1_SIZE {
        return Err(bad(format!("root item of {size} bytes, expect {} or {ROOT_ITEM_V1_SIZE}", std::mem::size_of::<RootItem>())));
    }
    // A legacy root item reads as zeros past its end.
    let mut buf = [0u8; std::mem::size_of::<RootItem>()];
    for (b, d) in buf.iter_mut().zip(cur.data) {
        *b = *d;
    }
    let ri = read::<RootItem>(&buf, 0).ok_or_else(|| bad("short root item"))?;
    let limit = rules.super_generation.saturating_add(1);
    for (name, g) in
        [("generation", ri.generation.get()), ("generation_v2", ri.generation_v2.get()), ("last_snapshot", ri.last_snapshot.get())]
    {
        if g > limit {
            return Err(bad(format!("root {name} {g} above {limit}")));
        }
    }
    if !aligned(ri.bytenr.get(), rules.sectorsize) {
        return Err(bad(format!("root bytenr {} not aligned to {}", ri.bytenr.get(), rules.sectorsize)));
    }
    if ri.level >= MAX_LEVEL || ri.drop_level >= MAX_LEVEL {
        return Err(bad(format!("root level {} / drop level {}, expect below {MAX_LEVEL}", ri.level, ri.drop_level)));
    }
    let valid = ROOT_SUBVOL_RDONLY | ROOT_SUBVOL_DEAD;
    if ri.flags.get() & !valid != 0 {
        return Err(bad(format!("invalid root flags {:#x}", ri.flags.get())));
    }
    Ok(())
}

fn check_extent_item(cur: &Slot, prev: Option<&Slot>, rules: &Rules) -> Check {
    let key = cur.key;
    let skinny = key.item_type == METADATA_ITEM_KEY;
    let ss = rules.sectorsize;
    if skinny && rules.incompat & INCOMPAT_SKINNY_METADATA == 0 {
        return Err(bad("METADATA_ITEM without the skinny-metadata feature"));
    }
    if !aligned(key.objectid, ss) {
        return Err(bad(format!("extent bytenr {} not aligned to {ss}", key.objectid)));
    }
    if skinny && key.offset >= u64::from(MAX_LEVEL) {
        return Err(bad(format!("invalid tree level {}", key.offset)));
    }
    let ei = read::<ExtentItem>(cur.data, 0)
        .ok_or_else(|| bad(format!("extent item of {} bytes, below {}", cur.data.len(), std::mem::size_of::<ExtentItem>())))?;
    let flags = ei.flags.get();
    let limit = rules.super_generation.saturating_add(1);
    if ei.generation.get() > limit {
        return Err(bad(format!("extent generation {} above {limit}", ei.generation.get())));
    }
    if (flags & (EXTENT_FLAG_DATA | EXTENT_FLAG_TREE_BLOCK)).count_ones() != 1 {
        return Err(bad(format!("extent flags {flags:#x}: exactly one of DATA and TREE_BLOCK")));
    }
    let tree_block = flags & EXTENT_FLAG_TREE_BLOCK != 0;
    if tree_block {
        if key.item_type == EXTENT_ITEM_KEY && key.offset != u64::from(rules.nodesize) {
            return Err(bad(format!("tree block extent length {}, expect {}", key.offset, rules.nodesize)));
        }
    } else {
        if key.item_type != EXTENT_ITEM_KEY {
            return Err(bad("data extent under a METADATA_ITEM key"));
        }
        if !aligned(key.offset, ss) {
            return Err(bad(format!("data extent length {} not aligned to {ss}", key.offset)));
        }
        if flags & BLOCK_FLAG_FULL_BACKREF != 0 {
            return Err(bad("data extent with FULL_BACKREF"));
        }
    }
    let mut pos = std::mem::size_of::<ExtentItem>();
    if tree_block && !skinny {
        let info = read::<TreeBlockInfo>(cur.data, pos).ok_or_else(|| bad("tree block info past the item"))?;
        if info.level >= MAX_LEVEL {
            return Err(bad(format!("tree block info level {}", info.level)));
        }
        pos = pos.saturating_add(std::mem::size_of::<TreeBlockInfo>());
    }
    let end = cur.data.len();
    let mut inline_refs: u64 = 0;
    let (mut last_type, mut last_seq) = (0u8, u64::MAX);
    while pos < end {
        if pos.saturating_add(std::mem::size_of::<ExtentInlineRef>()) > end {
            return Err(bad(format!("inline ref at {pos} overflows the extent item ({end})")));
        }
        let ty = cur.data.get(pos).copied().unwrap_or(0);
        let offset = u64_at(cur.data, pos.saturating_add(1)).unwrap_or(0);
        let ref_size = match ty {
            TREE_BLOCK_REF_KEY | SHARED_BLOCK_REF_KEY | EXTENT_OWNER_REF_KEY => 9,
            SHARED_DATA_REF_KEY => std::mem::size_of::<SharedDataRef>().saturating_add(9),
            EXTENT_DATA_REF_KEY => std::mem::size_of::<ExtentDataRef>().saturating_add(1),
            _ => return Err(bad(format!("unknown inline ref type {ty}"))),
        };
        if pos.saturating_add(ref_size) > end {
            return Err(bad(format!("inline ref of type {ty} at {pos} overflows the extent item ({end})")));
        }
        let seq = match ty {
            TREE_BLOCK_REF_KEY => {
                inline_refs = inline_refs.saturating_add(1);
                offset
            }
            SHARED_BLOCK_REF_KEY => {
                if !aligned(offset, ss) {
                    return Err(bad(format!("shared block ref parent {offset} not aligned to {ss}")));
                }
                inline_refs = inline_refs.saturating_add(1);
                offset
            }
            EXTENT_DATA_REF_KEY => {
                let d = read::<ExtentDataRef>(cur.data, pos.saturating_add(1)).ok_or_else(|| bad("short data ref"))?;
                if !aligned(d.offset.get(), ss) {
                    return Err(bad(format!("data ref offset {} not aligned to {ss}", d.offset.get())));
                }
                inline_refs = inline_refs.saturating_add(u64::from(d.count.get()));
                extent_data_ref_hash(d.root.get(), d.objectid.get(), d.offset.get())
            }
            SHARED_DATA_REF_KEY => {
                if !aligned(offset, ss) {
                    return Err(bad(format!("shared data ref parent {offset} not aligned to {ss}")));
                }
                let c = read::<SharedDataRef>(cur.data, pos.saturating_add(9)).ok_or_else(|| bad("short shared data ref"))?;
                inline_refs = inline_refs.saturating_add(u64::from(c.count.get()));
                offset
            }
            _ => {
                // Owner refs exist only with simple quotas.
                if rules.incompat & INCOMPAT_SIMPLE_QUOTA == 0 {
                    return Err(bad("extent owner ref without simple quotas"));
                }
                offset
            }
        };
        // Types ascending; within a type the sequence descending.
        if ty < last_type {
            return Err(bad(format!("inline ref out of order: type {ty} after type {last_type}")));
        }
        if ty > last_type {
            last_seq = u64::MAX;
        }
        if seq > last_seq {
            return Err(bad(format!("inline ref out of order: type {ty} sequence {seq:#x} after {last_seq:#x}")));
        }
        (last_type, last_seq) = (ty, seq);
        pos = pos.saturating_add(ref_size);
    }
    if pos != end {
        return Err(bad("padding after the inline refs"));
    }
    if inline_refs > ei.refs.get() {
        return Err(bad(format!("extent refs {} below its inline refs {inline_refs}", ei.refs.get())));
    }
    if let Some(p) = prev.filter(|p| p.key.item_type == EXTENT_ITEM_KEY || p.key.item_type == METADATA_ITEM_KEY) {
        let len = if p.key.item_type == METADATA_ITEM_KEY { u64::from(rules.nodesize) } else { p.key.offset };
        if p.key.objectid.wrapping_add(len) > key.objectid {
            return Err(bad(format!("previous extent {} overlaps this one", p.key)));
        }
    }
    Ok(())
}

fn check_keyed_ref(cur: &Slot, rules: &Rules) -> Check {
    let key = cur.key;
    let want = if key.item_type == SHARED_DATA_REF_KEY { std::mem::size_of::<SharedDataRef>() } else { 0 };
    if cur.data.len() != want {
        return Err(bad(format!("back reference of {} bytes, expect {want}", cur.data.len())));
    }
    if !aligned(key.objectid, rules.sectorsize) {
        return Err(bad(format!("back reference bytenr {} not aligned to {}", key.objectid, rules.sectorsize)));
    }
    if key.item_type != TREE_BLOCK_REF_KEY && !aligned(key.offset, rules.sectorsize) {
        return Err(bad(format!("back reference parent {} not aligned to {}", key.offset, rules.sectorsize)));
    }
    Ok(())
}

fn check_extent_data_ref(cur: &Slot, rules: &Rules) -> Check {
    let sz = std::mem::size_of::<ExtentDataRef>();
    if cur.data.len().checked_rem(sz) != Some(0) {
        return Err(bad(format!("extent data ref item of {} bytes, not a multiple of {sz}", cur.data.len())));
    }
    if !aligned(cur.key.objectid, rules.sectorsize) {
        return Err(bad(format!("extent data ref bytenr {} not aligned to {}", cur.key.objectid, rules.sectorsize)));
    }
    for at in (0..cur.data.len()).step_by(sz) {
        let d = read::<ExtentDataRef>(cur.data, at).ok_or_else(|| bad("short extent data ref"))?;
        if !aligned(d.offset.get(), rules.sectorsize) {
            return Err(bad(format!("extent data ref offset {} not aligned to {}", d.offset.get(), rules.sectorsize)));
        }
    }
    Ok(())
}
