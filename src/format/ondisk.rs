//! Raw on-disk structures and constants: the equivalent of the kernel's
//! `include/uapi/linux/btrfs_tree.h` plus the superblock layout.
//!
//! Everything here is a plain `#[repr(C, packed)]` struct of little-endian
//! integers, read straight from image bytes with zerocopy. Values that the
//! image decides (profiles, checksum types, item types) stay raw integers here;
//! `format::types` turns them into enums and rejects unknown values.

use super::objectid_of;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

macro_rules! ondisk {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? } = $size:expr;) => {
        $(#[$m])*
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
        #[repr(C, packed)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        const _: () = assert!(core::mem::size_of::<$name>() == $size);
    };
}

pub const BTRFS_MAGIC: [u8; 8] = *b"_BHRfS_M";
/// Superblock copies live at these byte offsets on every device.
pub const SUPER_INFO_OFFSET: u64 = 64 * 1024;
pub const SUPER_MIRROR_OFFSETS: [u64; 3] = [64 * 1024, 64 * 1024 * 1024, 256 * 1024 * 1024 * 1024];
pub const SUPER_INFO_SIZE: usize = 4096;
pub const CSUM_SIZE: usize = 32;
pub const FSID_SIZE: usize = 16;
pub const UUID_SIZE: usize = 16;
pub const LABEL_SIZE: usize = 256;
pub const SYSTEM_CHUNK_ARRAY_SIZE: usize = 2048;
pub const NUM_BACKUP_ROOTS: usize = 4;
/// Levels are 0..MAX_LEVEL-1; a header claiming more is corrupt.
pub const MAX_LEVEL: u8 = 8;
pub const NAME_LEN: usize = 255;
/// The kernel refuses xattr values larger than this (XATTR_SIZE_MAX).
pub const XATTR_SIZE_MAX: usize = 65536;
pub const STRIPE_LEN: u64 = 64 * 1024;
pub const MAX_COMPRESSED_RAM: u64 = 128 * 1024;
/// The first 1 MiB of every device is never allocated to chunks.
pub const DEVICE_RESERVED: u64 = 1024 * 1024;

// ---- superblock flags ----
pub const SUPER_FLAG_WRITTEN: u64 = 1 << 0;
pub const SUPER_FLAG_RELOC: u64 = 1 << 1;
pub const SUPER_FLAG_SEEDING: u64 = 1 << 32;
pub const SUPER_FLAG_METADUMP: u64 = 1 << 33;
pub const SUPER_FLAG_METADUMP_V2: u64 = 1 << 34;
pub const SUPER_FLAG_CHANGING_FSID: u64 = 1 << 35;
pub const SUPER_FLAG_CHANGING_FSID_V2: u64 = 1 << 36;

// ---- header flags ----
pub const HEADER_FLAG_WRITTEN: u64 = 1 << 0;
pub const HEADER_FLAG_RELOC: u64 = 1 << 1;
/// Backref revision lives in the top byte of the header flags.
pub const BACKREF_REV_SHIFT: u32 = 56;
pub const MIXED_BACKREF_REV: u64 = 1;

// ---- feature flags ----
pub const COMPAT_RO_FREE_SPACE_TREE: u64 = 1 << 0;
pub const COMPAT_RO_FREE_SPACE_TREE_VALID: u64 = 1 << 1;
pub const COMPAT_RO_VERITY: u64 = 1 << 2;
pub const COMPAT_RO_BLOCK_GROUP_TREE: u64 = 1 << 3;

pub const INCOMPAT_MIXED_BACKREF: u64 = 1 << 0;
pub const INCOMPAT_DEFAULT_SUBVOL: u64 = 1 << 1;
pub const INCOMPAT_MIXED_GROUPS: u64 = 1 << 2;
pub const INCOMPAT_COMPRESS_LZO: u64 = 1 << 3;
pub const INCOMPAT_COMPRESS_ZSTD: u64 = 1 << 4;
pub const INCOMPAT_BIG_METADATA: u64 = 1 << 5;
pub const INCOMPAT_EXTENDED_IREF: u64 = 1 << 6;
pub const INCOMPAT_RAID56: u64 = 1 << 7;
pub const INCOMPAT_SKINNY_METADATA: u64 = 1 << 8;
pub const INCOMPAT_NO_HOLES: u64 = 1 << 9;
pub const INCOMPAT_METADATA_UUID: u64 = 1 << 10;
pub const INCOMPAT_RAID1C34: u64 = 1 << 11;
pub const INCOMPAT_ZONED: u64 = 1 << 12;
pub const INCOMPAT_EXTENT_TREE_V2: u64 = 1 << 13;
pub const INCOMPAT_RAID_STRIPE_TREE: u64 = 1 << 14;
pub const INCOMPAT_SIMPLE_QUOTA: u64 = 1 << 16;

/// Incompat bits whose on-disk meaning btrs fully understands for reading.
pub const INCOMPAT_SUPPORTED: u64 = INCOMPAT_MIXED_BACKREF
    | INCOMPAT_DEFAULT_SUBVOL
    | INCOMPAT_MIXED_GROUPS
    | INCOMPAT_COMPRESS_LZO
    | INCOMPAT_COMPRESS_ZSTD
    | INCOMPAT_BIG_METADATA
    | INCOMPAT_EXTENDED_IREF
    | INCOMPAT_RAID56
    | INCOMPAT_SKINNY_METADATA
    | INCOMPAT_NO_HOLES
    | INCOMPAT_METADATA_UUID
    | INCOMPAT_RAID1C34
    | INCOMPAT_SIMPLE_QUOTA;

// ---- block group / chunk type flags ----
pub const BLOCK_GROUP_DATA: u64 = 1 << 0;
pub const BLOCK_GROUP_SYSTEM: u64 = 1 << 1;
pub const BLOCK_GROUP_METADATA: u64 = 1 << 2;
pub const BLOCK_GROUP_RAID0: u64 = 1 << 3;
pub const BLOCK_GROUP_RAID1: u64 = 1 << 4;
pub const BLOCK_GROUP_DUP: u64 = 1 << 5;
pub const BLOCK_GROUP_RAID10: u64 = 1 << 6;
pub const BLOCK_GROUP_RAID5: u64 = 1 << 7;
pub const BLOCK_GROUP_RAID6: u64 = 1 << 8;
pub const BLOCK_GROUP_RAID1C3: u64 = 1 << 9;
pub const BLOCK_GROUP_RAID1C4: u64 = 1 << 10;
pub const BLOCK_GROUP_TYPE_MASK: u64 = BLOCK_GROUP_DATA | BLOCK_GROUP_SYSTEM | BLOCK_GROUP_METADATA;
pub const BLOCK_GROUP_PROFILE_MASK: u64 = BLOCK_GROUP_RAID0
    | BLOCK_GROUP_RAID1
    | BLOCK_GROUP_DUP
    | BLOCK_GROUP_RAID10
    | BLOCK_GROUP_RAID5
    | BLOCK_GROUP_RAID6
    | BLOCK_GROUP_RAID1C3
    | BLOCK_GROUP_RAID1C4;
/// Only used in balance args and the "avail" fields; never in a chunk item.
pub const AVAIL_ALLOC_BIT_SINGLE: u64 = 1 << 48;

// ---- tree object ids ----
pub const ROOT_TREE_OBJECTID: u64 = 1;
pub const EXTENT_TREE_OBJECTID: u64 = 2;
pub const CHUNK_TREE_OBJECTID: u64 = 3;
pub const DEV_TREE_OBJECTID: u64 = 4;
pub const FS_TREE_OBJECTID: u64 = 5;
pub const ROOT_TREE_DIR_OBJECTID: u64 = 6;
pub const CSUM_TREE_OBJECTID: u64 = 7;
pub const QUOTA_TREE_OBJECTID: u64 = 8;
pub const UUID_TREE_OBJECTID: u64 = 9;
pub const FREE_SPACE_TREE_OBJECTID: u64 = 10;
pub const BLOCK_GROUP_TREE_OBJECTID: u64 = 11;
pub const RAID_STRIPE_TREE_OBJECTID: u64 = 12;
pub const DEV_STATS_OBJECTID: u64 = 0;
pub const BALANCE_OBJECTID: u64 = objectid_of(-4);
pub const ORPHAN_OBJECTID: u64 = objectid_of(-5);
pub const TREE_LOG_OBJECTID: u64 = objectid_of(-6);
pub const TREE_LOG_FIXUP_OBJECTID: u64 = objectid_of(-7);
pub const TREE_RELOC_OBJECTID: u64 = objectid_of(-8);
pub const DATA_RELOC_TREE_OBJECTID: u64 = objectid_of(-9);
pub const EXTENT_CSUM_OBJECTID: u64 = objectid_of(-10);
pub const FREE_SPACE_OBJECTID: u64 = objectid_of(-11);
pub const FREE_INO_OBJECTID: u64 = objectid_of(-12);
pub const MULTIPLE_OBJECTIDS: u64 = objectid_of(-255);
pub const FIRST_FREE_OBJECTID: u64 = 256;
pub const LAST_FREE_OBJECTID: u64 = objectid_of(-256);
pub const FIRST_CHUNK_TREE_OBJECTID: u64 = 256;
pub const DEV_ITEMS_OBJECTID: u64 = 1;
/// The kernel shows a subvolume entry whose subvolume is not linked there
/// (e.g. a nested subvolume inside a snapshot) as an empty directory with this inode number.
pub const EMPTY_SUBVOL_DIR_OBJECTID: u64 = 2;

// ---- item key types ----
pub const INODE_ITEM_KEY: u8 = 1;
pub const INODE_REF_KEY: u8 = 12;
pub const INODE_EXTREF_KEY: u8 = 13;
pub const XATTR_ITEM_KEY: u8 = 24;
pub const VERITY_DESC_ITEM_KEY: u8 = 36;
pub const VERITY_MERKLE_ITEM_KEY: u8 = 37;
pub const ORPHAN_ITEM_KEY: u8 = 48;
pub const DIR_LOG_ITEM_KEY: u8 = 60;
pub const DIR_LOG_INDEX_KEY: u8 = 72;
pub const DIR_ITEM_KEY: u8 = 84;
pub const DIR_INDEX_KEY: u8 = 96;
pub const EXTENT_DATA_KEY: u8 = 108;
pub const EXTENT_CSUM_KEY: u8 = 128;
pub const ROOT_ITEM_KEY: u8 = 132;
pub const ROOT_BACKREF_KEY: u8 = 144;
pub const ROOT_REF_KEY: u8 = 156;
pub const EXTENT_ITEM_KEY: u8 = 168;
pub const METADATA_ITEM_KEY: u8 = 169;
pub const EXTENT_OWNER_REF_KEY: u8 = 172;
pub const TREE_BLOCK_REF_KEY: u8 = 176;
pub const EXTENT_DATA_REF_KEY: u8 = 178;
pub const SHARED_BLOCK_REF_KEY: u8 = 182;
pub const SHARED_DATA_REF_KEY: u8 = 184;
pub const BLOCK_GROUP_ITEM_KEY: u8 = 192;
pub const FREE_SPACE_INFO_KEY: u8 = 198;
pub const FREE_SPACE_EXTENT_KEY: u8 = 199;
pub const FREE_SPACE_BITMAP_KEY: u8 = 200;
pub const DEV_EXTENT_KEY: u8 = 204;
pub const DEV_ITEM_KEY: u8 = 216;
pub const CHUNK_ITEM_KEY: u8 = 228;
pub const RAID_STRIPE_KEY: u8 = 230;
pub const QGROUP_STATUS_KEY: u8 = 240;
pub const QGROUP_INFO_KEY: u8 = 242;
pub const QGROUP_LIMIT_KEY: u8 = 244;
pub const QGROUP_RELATION_KEY: u8 = 246;
/// Also known as BALANCE_ITEM_KEY.
pub const TEMPORARY_ITEM_KEY: u8 = 248;
/// Also known as DEV_STATS_KEY.
pub const PERSISTENT_ITEM_KEY: u8 = 249;
pub const DEV_REPLACE_KEY: u8 = 250;
pub const UUID_KEY_SUBVOL: u8 = 251;
pub const UUID_KEY_RECEIVED_SUBVOL: u8 = 252;
pub const STRING_ITEM_KEY: u8 = 253;

// ---- extent item flags ----
pub const EXTENT_FLAG_DATA: u64 = 1 << 0;
pub const EXTENT_FLAG_TREE_BLOCK: u64 = 1 << 1;
pub const BLOCK_FLAG_FULL_BACKREF: u64 = 1 << 8;

// ---- file extent types ----
pub const FILE_EXTENT_INLINE: u8 = 0;
pub const FILE_EXTENT_REG: u8 = 1;
pub const FILE_EXTENT_PREALLOC: u8 = 2;

// ---- compression ----
pub const COMPRESS_NONE: u8 = 0;
pub const COMPRESS_ZLIB: u8 = 1;
pub const COMPRESS_LZO: u8 = 2;
pub const COMPRESS_ZSTD: u8 = 3;

// ---- dir item file types (FT_*) ----
pub const FT_UNKNOWN: u8 = 0;
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHRDEV: u8 = 3;
pub const FT_BLKDEV: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;
pub const FT_XATTR: u8 = 8;
/// Upper bits of the type byte carry fscrypt state in newer kernels.
pub const FT_ENCRYPTED: u8 = 0x80;

// ---- inode flags ----
pub const INODE_NODATASUM: u64 = 1 << 0;
pub const INODE_NODATACOW: u64 = 1 << 1;
pub const INODE_READONLY: u64 = 1 << 2;
pub const INODE_NOCOMPRESS: u64 = 1 << 3;
pub const INODE_PREALLOC: u64 = 1 << 4;
pub const INODE_SYNC: u64 = 1 << 5;
pub const INODE_IMMUTABLE: u64 = 1 << 6;
pub const INODE_APPEND: u64 = 1 << 7;
pub const INODE_NODUMP: u64 = 1 << 8;
pub const INODE_NOATIME: u64 = 1 << 9;
pub const INODE_DIRSYNC: u64 = 1 << 10;
pub const INODE_COMPRESS: u64 = 1 << 11;
pub const INODE_ROOT_ITEM_INIT: u64 = 1 << 31;

// ---- root item flags ----
pub const ROOT_SUBVOL_RDONLY: u64 = 1 << 0;
pub const ROOT_SUBVOL_DEAD: u64 = 1 << 48;

// ---- free space info flags ----
pub const FREE_SPACE_USING_BITMAPS: u32 = 1 << 0;

// ---- csum types ----
pub const CSUM_TYPE_CRC32: u16 = 0;
pub const CSUM_TYPE_XXHASH: u16 = 1;
pub const CSUM_TYPE_SHA256: u16 = 2;
pub const CSUM_TYPE_BLAKE2: u16 = 3;

/// Mode bits (S_IF*), as stored in the inode item.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_ISUID: u32 = 0o4000;
pub const S_ISGID: u32 = 0o2000;
pub const S_IXGRP: u32 = 0o0010;

ondisk! {
    /// `struct btrfs_disk_key`.
    pub struct DiskKey {
        pub objectid: U64,
        pub item_type: u8,
        pub offset: U64,
    } = 17;
}

ondisk! {
    /// `struct btrfs_dev_item`, embedded in the superblock and in the chunk tree.
    pub struct DevItem {
        pub devid: U64,
        pub total_bytes: U64,
        pub bytes_used: U64,
        pub io_align: U32,
        pub io_width: U32,
        pub sector_size: U32,
        pub dev_type: U64,
        pub generation: U64,
        pub start_offset: U64,
        pub dev_group: U32,
        pub seek_speed: u8,
        pub bandwidth: u8,
        pub uuid: [u8; UUID_SIZE],
        pub fsid: [u8; FSID_SIZE],
    } = 98;
}

ondisk! {
    /// `struct btrfs_root_backup`: one of the four rotating backup root sets.
    pub struct RootBackup {
        pub tree_root: U64,
        pub tree_root_gen: U64,
        pub chunk_root: U64,
        pub chunk_root_gen: U64,
        pub extent_root: U64,
        pub extent_root_gen: U64,
        pub fs_root: U64,
        pub fs_root_gen: U64,
        pub dev_root: U64,
        pub dev_root_gen: U64,
        pub csum_root: U64,
        pub csum_root_gen: U64,
        pub total_bytes: U64,
        pub bytes_used: U64,
        pub num_devices: U64,
        pub unused_64: [U64; 4],
        pub tree_root_level: u8,
        pub chunk_root_level: u8,
        pub extent_root_level: u8,
        pub fs_root_level: u8,
        pub dev_root_level: u8,
        pub csum_root_level: u8,
        pub unused_8: [u8; 10],
    } = 168;
}

ondisk! {
    /// `struct btrfs_super_block`, 4096 bytes.
    pub struct SuperBlock {
        pub csum: [u8; CSUM_SIZE],
        pub fsid: [u8; FSID_SIZE],
        pub bytenr: U64,
        pub flags: U64,
        pub magic: [u8; 8],
        pub generation: U64,
        pub root: U64,
        pub chunk_root: U64,
        pub log_root: U64,
        pub unused_log_root_transid: U64,
        pub total_bytes: U64,
        pub bytes_used: U64,
        pub root_dir_objectid: U64,
        pub num_devices: U64,
        pub sectorsize: U32,
        pub nodesize: U32,
        pub unused_leafsize: U32,
        pub stripesize: U32,
        pub sys_chunk_array_size: U32,
        pub chunk_root_generation: U64,
        pub compat_flags: U64,
        pub compat_ro_flags: U64,
        pub incompat_flags: U64,
        pub csum_type: U16,
        pub root_level: u8,
        pub chunk_root_level: u8,
        pub log_root_level: u8,
        pub dev_item: DevItem,
        pub label: [u8; LABEL_SIZE],
        pub cache_generation: U64,
        pub uuid_tree_generation: U64,
        pub metadata_uuid: [u8; FSID_SIZE],
        pub nr_global_roots: U64,
        pub reserved: [U64; 27],
        pub sys_chunk_array: [u8; SYSTEM_CHUNK_ARRAY_SIZE],
        pub super_roots: [RootBackup; NUM_BACKUP_ROOTS],
        pub padding: [u8; 565],
    } = 4096;
}

ondisk! {
    /// `struct btrfs_header`, at the start of every tree block.
    pub struct Header {
        pub csum: [u8; CSUM_SIZE],
        pub fsid: [u8; FSID_SIZE],
        pub bytenr: U64,
        pub flags: U64,
        pub chunk_tree_uuid: [u8; UUID_SIZE],
        pub generation: U64,
        pub owner: U64,
        pub nritems: U32,
        pub level: u8,
    } = 101;
}

ondisk! {
    /// `struct btrfs_item`: a leaf's item header; `offset` is relative to the end of the header.
    pub struct Item {
        pub key: DiskKey,
        pub offset: U32,
        pub size: U32,
    } = 25;
}

ondisk! {
    /// `struct btrfs_key_ptr`: a node's child pointer.
    pub struct KeyPtr {
        pub key: DiskKey,
        pub blockptr: U64,
        pub generation: U64,
    } = 33;
}

ondisk! {
    /// `struct btrfs_stripe`.
    pub struct Stripe {
        pub devid: U64,
        pub offset: U64,
        pub dev_uuid: [u8; UUID_SIZE],
    } = 32;
}

ondisk! {
    /// `struct btrfs_chunk` without its stripes; `num_stripes` `Stripe`s follow.
    pub struct Chunk {
        pub length: U64,
        pub owner: U64,
        pub stripe_len: U64,
        pub chunk_type: U64,
        pub io_align: U32,
        pub io_width: U32,
        pub sector_size: U32,
        pub num_stripes: U16,
        pub sub_stripes: U16,
    } = 48;
}

ondisk! {
    /// `struct btrfs_timespec`.
    pub struct Timespec {
        pub sec: U64,
        pub nsec: U32,
    } = 12;
}

ondisk! {
    /// `struct btrfs_inode_item`.
    pub struct InodeItem {
        pub generation: U64,
        pub transid: U64,
        pub size: U64,
        pub nbytes: U64,
        pub block_group: U64,
        pub nlink: U32,
        pub uid: U32,
        pub gid: U32,
        pub mode: U32,
        pub rdev: U64,
        pub flags: U64,
        pub sequence: U64,
        pub reserved: [U64; 4],
        pub atime: Timespec,
        pub ctime: Timespec,
        pub mtime: Timespec,
        pub otime: Timespec,
    } = 160;
}

ondisk! {
    /// `struct btrfs_inode_ref`; the name follows.
    pub struct InodeRef {
        pub index: U64,
        pub name_len: U16,
    } = 10;
}

ondisk! {
    /// `struct btrfs_inode_extref`; the name follows.
    pub struct InodeExtref {
        pub parent_objectid: U64,
        pub index: U64,
        pub name_len: U16,
    } = 18;
}

ondisk! {
    /// `struct btrfs_dir_item`; name then data (xattr value) follow.
    pub struct DirItem {
        pub location: DiskKey,
        pub transid: U64,
        pub data_len: U16,
        pub name_len: U16,
        pub dir_type: u8,
    } = 30;
}

ondisk! {
    /// The fixed part of `struct btrfs_file_extent_item`; inline data follows it directly.
    pub struct FileExtentHeader {
        pub generation: U64,
        pub ram_bytes: U64,
        pub compression: u8,
        pub encryption: u8,
        pub other_encoding: U16,
        pub extent_type: u8,
    } = 21;
}

ondisk! {
    /// The part of a regular/prealloc file extent item after `FileExtentHeader`.
    pub struct FileExtentBody {
        pub disk_bytenr: U64,
        pub disk_num_bytes: U64,
        pub offset: U64,
        pub num_bytes: U64,
    } = 32;
}

/// Offset of inline data in a file extent item.
pub const FILE_EXTENT_INLINE_DATA_START: usize = core::mem::size_of::<FileExtentHeader>();

ondisk! {
    /// `struct btrfs_root_item` in its full (v2) size. Old filesystems may store
    /// only the first 239 bytes; the remainder then reads as zero.
    pub struct RootItem {
        pub inode: InodeItem,
        pub generation: U64,
        pub root_dirid: U64,
        pub bytenr: U64,
        pub byte_limit: U64,
        pub bytes_used: U64,
        pub last_snapshot: U64,
        pub flags: U64,
        pub refs: U32,
        pub drop_progress: DiskKey,
        pub drop_level: u8,
        pub level: u8,
        pub generation_v2: U64,
        pub uuid: [u8; UUID_SIZE],
        pub parent_uuid: [u8; UUID_SIZE],
        pub received_uuid: [u8; UUID_SIZE],
        pub ctransid: U64,
        pub otransid: U64,
        pub stransid: U64,
        pub rtransid: U64,
        pub ctime: Timespec,
        pub otime: Timespec,
        pub stime: Timespec,
        pub rtime: Timespec,
        pub reserved: [U64; 8],
    } = 439;
}
/// Size of a root item written before the v2 fields existed.
pub const ROOT_ITEM_V1_SIZE: usize = 239;

ondisk! {
    /// `struct btrfs_root_ref`, used by ROOT_REF and ROOT_BACKREF; the name follows.
    pub struct RootRef {
        pub dirid: U64,
        pub sequence: U64,
        pub name_len: U16,
    } = 18;
}

ondisk! {
    /// `struct btrfs_extent_item`; inline refs follow.
    pub struct ExtentItem {
        pub refs: U64,
        pub generation: U64,
        pub flags: U64,
    } = 24;
}

ondisk! {
    /// `struct btrfs_tree_block_info`, after the extent item of a non-skinny tree block.
    pub struct TreeBlockInfo {
        pub key: DiskKey,
        pub level: u8,
    } = 18;
}

ondisk! {
    /// `struct btrfs_extent_inline_ref` without its payload.
    pub struct ExtentInlineRef {
        pub ref_type: u8,
        pub offset: U64,
    } = 9;
}

ondisk! {
    /// `struct btrfs_extent_data_ref`.
    pub struct ExtentDataRef {
        pub root: U64,
        pub objectid: U64,
        pub offset: U64,
        pub count: U32,
    } = 28;
}

ondisk! {
    /// `struct btrfs_shared_data_ref`.
    pub struct SharedDataRef {
        pub count: U32,
    } = 4;
}

ondisk! {
    /// `struct btrfs_extent_owner_ref` (simple quotas).
    pub struct ExtentOwnerRef {
        pub root_id: U64,
    } = 8;
}

ondisk! {
    /// Version-0 extent ref (`struct btrfs_extent_ref_v0`), only in very old filesystems.
    pub struct ExtentRefV0 {
        pub root: U64,
        pub generation: U64,
        pub objectid: U64,
        pub count: U32,
    } = 28;
}

ondisk! {
    /// `struct btrfs_block_group_item`.
    pub struct BlockGroupItem {
        pub used: U64,
        pub chunk_objectid: U64,
        pub flags: U64,
    } = 24;
}

ondisk! {
    /// `struct btrfs_dev_extent`.
    pub struct DevExtent {
        pub chunk_tree: U64,
        pub chunk_objectid: U64,
        pub chunk_offset: U64,
        pub length: U64,
        pub chunk_tree_uuid: [u8; UUID_SIZE],
    } = 48;
}

ondisk! {
    /// `struct btrfs_free_space_info`.
    pub struct FreeSpaceInfo {
        pub extent_count: U32,
        pub flags: U32,
    } = 8;
}

/// `btrfs_qgroup_status_item.flags`: accounting is on / a rescan runs /
/// the counts are known to be wrong until a rescan / simple quotas.
pub const QGROUP_STATUS_FLAG_ON: u64 = 1 << 0;
pub const QGROUP_STATUS_FLAG_RESCAN: u64 = 1 << 1;
pub const QGROUP_STATUS_FLAG_INCONSISTENT: u64 = 1 << 2;
pub const QGROUP_STATUS_FLAG_SIMPLE_MODE: u64 = 1 << 3;

ondisk! {
    /// `struct btrfs_qgroup_status_item`.
    pub struct QgroupStatusItem {
        pub version: U64,
        pub generation: U64,
        pub flags: U64,
        pub rescan: U64,
        pub enable_gen: U64,
    } = 40;
}

ondisk! {
    /// `struct btrfs_qgroup_info_item`.
    pub struct QgroupInfoItem {
        pub generation: U64,
        pub rfer: U64,
        pub rfer_cmpr: U64,
        pub excl: U64,
        pub excl_cmpr: U64,
    } = 40;
}

ondisk! {
    /// `struct btrfs_qgroup_limit_item`.
    pub struct QgroupLimitItem {
        pub flags: U64,
        pub max_rfer: U64,
        pub max_excl: U64,
        pub rsv_rfer: U64,
        pub rsv_excl: U64,
    } = 40;
}

ondisk! {
    /// `struct btrfs_dev_replace_item`.
    pub struct DevReplaceItem {
        pub src_devid: U64,
        pub cursor_left: U64,
        pub cursor_right: U64,
        pub cont_reading_from_srcdev_mode: U64,
        pub replace_state: U64,
        pub time_started: U64,
        pub time_stopped: U64,
        pub num_write_errors: U64,
        pub num_uncorrectable_read_errors: U64,
    } = 72;
}

ondisk! {
    /// `struct btrfs_disk_balance_args`.
    pub struct BalanceArgs {
        pub profiles: U64,
        pub usage: U64,
        pub devid: U64,
        pub pstart: U64,
        pub pend: U64,
        pub vstart: U64,
        pub vend: U64,
        pub target: U64,
        pub flags: U64,
        pub limit: U64,
        pub stripes_min: U32,
        pub stripes_max: U32,
        pub unused: [U64; 6],
    } = 136;
}

ondisk! {
    /// `struct btrfs_balance_item`.
    pub struct BalanceItem {
        pub flags: U64,
        pub data: BalanceArgs,
        pub meta: BalanceArgs,
        pub sys: BalanceArgs,
        pub unused: [U64; 4],
    } = 448;
}

ondisk! {
    /// `struct btrfs_verity_descriptor_item`.
    pub struct VerityDescriptorItem {
        pub size: U64,
        pub reserved: [U64; 2],
        pub encryption: u8,
    } = 25;
}

/// Number of u64 counters in a DEV_STATS item (write, read, flush, corruption, generation errors).
pub const DEV_STAT_VALUES_MAX: usize = 5;

impl DiskKey {
    pub fn new(objectid: u64, item_type: u8, offset: u64) -> Self {
        DiskKey { objectid: objectid.into(), item_type, offset: offset.into() }
    }
}

impl Timespec {
    pub fn new(sec: u64, nsec: u32) -> Self {
        Timespec { sec: sec.into(), nsec: nsec.into() }
    }
}
