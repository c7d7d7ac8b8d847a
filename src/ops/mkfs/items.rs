//! The items mkfs makes up itself (root items, the root directory, chunk
//! items, ...) and the trees it writes.

use zerocopy::FromZeros;

use crate::error::Result;
use crate::format::encode::{self, RootItemSize};
use crate::format::items::{ChunkInfo, ExtentInfo, ExtentRef, InodeRefEntry, RootRefEntry};
use crate::format::ondisk::*;
use crate::format::Key;
use crate::tree::builder::TreeItem;
use crate::volumes::alloc::ChunkPlan;
use crate::volumes::chunks::MapEntry;

/// Everything mkfs writes belongs to this one transaction.
pub(super) const GENERATION: u64 = 1;

pub(super) fn key(o: u64, t: u8, off: u64) -> Key {
    Key::new(o, t, off)
}

pub(super) fn root_item(
    bytenr: u64,
    level: u8,
    bytes_used: u64,
    root_dirid: u64,
    uuid: [u8; 16],
    time: (u64, u32),
    nodesize: u32,
) -> Vec<u8> {
    encode::root_item(&new_root_item(bytenr, level, bytes_used, root_dirid, uuid, time, nodesize), RootItemSize::Full)
}

fn new_root_item(bytenr: u64, level: u8, bytes_used: u64, root_dirid: u64, uuid: [u8; 16], time: (u64, u32), nodesize: u32) -> RootItem {
    let mut r = RootItem::new_zeroed();
    // The embedded inode is what btrfs-progs and the kernel put there: a directory with one link.
    r.inode.generation = 1.into();
    r.inode.size = 3.into();
    r.inode.nlink = 1.into();
    r.inode.nbytes = (nodesize as u64).into();
    r.inode.mode = (S_IFDIR | 0o755).into();
    r.generation = GENERATION.into();
    r.root_dirid = root_dirid.into();
    r.bytenr = bytenr.into();
    r.bytes_used = bytes_used.into();
    r.refs = 1.into();
    r.level = level;
    r.generation_v2 = GENERATION.into();
    r.uuid = uuid;
    if uuid != [0; 16] {
        r.ctransid = GENERATION.into();
        r.otransid = GENERATION.into();
        r.ctime = Timespec::new(time.0, time.1);
        r.otime = Timespec::new(time.0, time.1);
    }
    r
}

/// The root item of a subvolume `--subvol` made: like the kernel's
/// create_subvol, its inode carries ROOT_ITEM_INIT (generation_v2 is valid),
/// and a read-only subvolume has ROOT_SUBVOL_RDONLY.
pub(super) fn subvol_root_item(tree: (u64, u8, u64), uuid: [u8; 16], readonly: bool, time: (u64, u32), nodesize: u32) -> Vec<u8> {
    let mut r = new_root_item(tree.0, tree.1, tree.2, FIRST_FREE_OBJECTID, uuid, time, nodesize);
    r.inode.flags = INODE_ROOT_ITEM_INIT.into();
    if readonly {
        r.flags = ROOT_SUBVOL_RDONLY.into();
    }
    encode::root_item(&r, RootItemSize::Full)
}

/// ROOT_REF / ROOT_BACKREF data: the directory and DIR_INDEX of the entry that
/// links a subvolume, and its name.
pub(super) fn root_ref(dirid: u64, index: u64, name: &[u8]) -> Result<Vec<u8>> {
    encode::root_ref(&RootRefEntry { dirid, sequence: index, name: name.to_vec() })
}

/// A UUID_KEY_SUBVOL item of the uuid tree: the uuid split into key halves.
pub(super) fn uuid_item(uuid: &[u8; 16], subvol: u64) -> TreeItem {
    TreeItem::new(crate::format::items::uuid_key(uuid, UUID_KEY_SUBVOL), encode::u64_array(&[subvol]))
}

pub(super) fn dir_inode(time: (u64, u32), otime: (u64, u32)) -> Vec<u8> {
    let mut i = InodeItem::new_zeroed();
    i.generation = GENERATION.into();
    i.transid = GENERATION.into();
    i.nlink = 1.into();
    i.mode = (S_IFDIR | 0o755).into();
    let t = Timespec::new(time.0, time.1);
    i.atime = t;
    i.ctime = t;
    i.mtime = t;
    i.otime = Timespec::new(otime.0, otime.1);
    encode::inode_item(&i)
}

/// An INODE_REF body: one name of an inode in directory `parent` (the key offset).
pub(super) fn inode_ref(parent: u64, index: u64, name: &[u8]) -> Result<Vec<u8>> {
    encode::inode_refs(&[InodeRefEntry { parent, index, name: name.to_vec() }])
}

/// The chunk as its CHUNK_ITEM says it: stripes with their devices' uuids.
pub(super) fn chunk_info(c: &ChunkPlan, dev_uuids: &[[u8; 16]], sectorsize: u32) -> ChunkInfo {
    c.info(|devid| dev_uuids.get((devid - 1) as usize).copied().unwrap_or([0; 16]), sectorsize)
}

/// The chunk as mkfs's own chunk map uses it to write the images.
pub(super) fn map_entry(c: &ChunkPlan) -> MapEntry {
    MapEntry { logical: c.logical, profile: c.profile, chunk: c.info(|_| [0; 16], 4096) }
}

/// The skinny METADATA_ITEM of a tree block of tree `owner`.
pub(super) fn metadata_extent_item(owner: u64) -> Result<Vec<u8>> {
    encode::extent_item(&ExtentInfo {
        refs: 1,
        generation: GENERATION,
        flags: EXTENT_FLAG_TREE_BLOCK,
        tree_block: None,
        inline_refs: vec![ExtentRef::TreeBlock { root: owner }],
    })
}

/// The trees mkfs writes, in the order their blocks are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum TreeId {
    Chunk,
    Root,
    Extent,
    Dev,
    /// A subvolume tree: 5 (the top level) or one `--subvol` made.
    Fs(u64),
    Csum,
    Uuid,
    DataReloc,
    FreeSpace,
    BlockGroup,
}

impl TreeId {
    pub(super) fn objectid(self) -> u64 {
        match self {
            TreeId::Chunk => CHUNK_TREE_OBJECTID,
            TreeId::Root => ROOT_TREE_OBJECTID,
            TreeId::Extent => EXTENT_TREE_OBJECTID,
            TreeId::Dev => DEV_TREE_OBJECTID,
            TreeId::Fs(id) => id,
            TreeId::Csum => CSUM_TREE_OBJECTID,
            TreeId::Uuid => UUID_TREE_OBJECTID,
            TreeId::DataReloc => DATA_RELOC_TREE_OBJECTID,
            TreeId::FreeSpace => FREE_SPACE_TREE_OBJECTID,
            TreeId::BlockGroup => BLOCK_GROUP_TREE_OBJECTID,
        }
    }
}
