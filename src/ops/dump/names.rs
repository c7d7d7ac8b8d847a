//! Names, keys and flags as btrfs-progs prints them. The names of
//! well-known object ids, block group bits and profiles come from
//! `format::types`, those of compression types from `format::compress`, which
//! declare them once; this file only spells them the progs way.

use crate::format::compress::Compression;
use crate::format::ondisk::*;
use crate::format::types::{block_group_type_name, item_type_name, objectid_names};
use crate::format::{Key, Profile};

/// `print_objectid()` of btrfs-progs.
pub(super) fn objectid_str(id: u64, item_type: u8) -> String {
    match item_type {
        PERSISTENT_ITEM_KEY => {
            return if id == DEV_STATS_OBJECTID { "DEV_STATS".into() } else { id.to_string() };
        }
        DEV_EXTENT_KEY => return id.to_string(),
        QGROUP_RELATION_KEY => return qgroup_str(id),
        UUID_KEY_SUBVOL | UUID_KEY_RECEIVED_SUBVOL => return format!("0x{id:016x}"),
        _ => {}
    }
    let s = match id {
        ROOT_TREE_OBJECTID if item_type == DEV_ITEM_KEY => "DEV_ITEMS",
        u64::MAX => "-1",
        FIRST_CHUNK_TREE_OBJECTID if item_type == CHUNK_ITEM_KEY => "FIRST_CHUNK_TREE",
        _ => match objectid_names(id) {
            Some(n) => n.progs(),
            None => return id.to_string(),
        },
    };
    s.to_string()
}

fn qgroup_str(v: u64) -> String {
    format!("{}/{}", v >> 48, v & ((1u64 << 48) - 1))
}

/// `print_key_type()` of btrfs-progs.
pub(super) fn type_str(objectid: u64, t: u8) -> String {
    match t {
        0 if objectid == FREE_SPACE_OBJECTID => "UNTYPED".into(),
        120 => "CSUM_ITEM".into(),
        180 => "EXTENT_REF_V0".into(),
        _ => item_type_name(t),
    }
}

/// `btrfs_print_key()` of btrfs-progs: `key (OBJECTID TYPE OFFSET)`.
pub(crate) fn key_str(k: &Key) -> String {
    let off = match k.item_type {
        QGROUP_RELATION_KEY | QGROUP_INFO_KEY | QGROUP_LIMIT_KEY => qgroup_str(k.offset),
        UUID_KEY_SUBVOL | UUID_KEY_RECEIVED_SUBVOL => format!("0x{:016x}", k.offset),
        ROOT_ITEM_KEY if k.objectid == TREE_RELOC_OBJECTID => objectid_str(k.offset, k.item_type),
        ROOT_ITEM_KEY => k.offset.to_string(),
        _ if k.offset == u64::MAX => "-1".into(),
        _ => k.offset.to_string(),
    };
    format!("key ({} {} {})", objectid_str(k.objectid, k.item_type), type_str(k.objectid, k.item_type), off)
}

/// Block group / chunk type flags: `DATA|METADATA|single`, `SYSTEM|DUP`.
/// btrfs-progs lists the type bits as data, metadata, system (not in bit
/// order) and spells an unknown profile `UNKNOWN.0x...`.
pub(super) fn bg_flags_str(flags: u64) -> String {
    let mut parts = Vec::new();
    for bit in [BLOCK_GROUP_DATA, BLOCK_GROUP_METADATA, BLOCK_GROUP_SYSTEM] {
        if flags & bit != 0 {
            parts.extend(block_group_type_name(bit).map(str::to_string));
        }
    }
    match Profile::from_flags(flags) {
        Some(p) => parts.push(p.flags_name()),
        None => parts.push(format!("UNKNOWN.{:#x}", flags & BLOCK_GROUP_PROFILE_MASK)),
    }
    parts.join("|")
}

/// Name of a tree as the `TREE tree key (...)` lines of dump-tree print it.
pub(super) fn tree_label(id: u64) -> &'static str {
    objectid_names(id).and_then(|n| n.tree_label).unwrap_or("file")
}

/// The `compression` byte of a file extent: the name the kernel gives it.
pub(super) fn compress_str(c: u8) -> String {
    match Compression::from_raw(c) {
        Ok(k) => k.name().to_string(),
        Err(_) => format!("UNKNOWN.{c}"),
    }
}

pub(super) fn inode_flags_str(flags: u64) -> String {
    let table = [
        (INODE_NODATASUM, "NODATASUM"),
        (INODE_NODATACOW, "NODATACOW"),
        (INODE_READONLY, "READONLY"),
        (INODE_NOCOMPRESS, "NOCOMPRESS"),
        (INODE_PREALLOC, "PREALLOC"),
        (INODE_SYNC, "SYNC"),
        (INODE_IMMUTABLE, "IMMUTABLE"),
        (INODE_APPEND, "APPEND"),
        (INODE_NODUMP, "NODUMP"),
        (INODE_NOATIME, "NOATIME"),
        (INODE_DIRSYNC, "DIRSYNC"),
        (INODE_COMPRESS, "COMPRESS"),
    ];
    let names: Vec<&str> = table.iter().filter(|(b, _)| flags & b != 0).map(|(_, n)| *n).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join("|")
    }
}

pub(super) fn extent_flags_str(flags: u64) -> String {
    let mut s = String::new();
    if flags & EXTENT_FLAG_DATA != 0 {
        s.push_str("DATA");
    }
    if flags & EXTENT_FLAG_TREE_BLOCK != 0 {
        if !s.is_empty() {
            s.push('|');
        }
        s.push_str("TREE_BLOCK");
    }
    if flags & BLOCK_FLAG_FULL_BACKREF != 0 {
        s.push_str("|FULL_BACKREF");
    }
    s
}

pub(super) fn dir_type_str(t: u8) -> String {
    match t {
        FT_REG_FILE => "FILE".into(),
        FT_DIR => "DIR".into(),
        FT_CHRDEV => "CHRDEV".into(),
        FT_BLKDEV => "BLKDEV".into(),
        FT_FIFO => "FIFO".into(),
        FT_SOCK => "SOCK".into(),
        FT_SYMLINK => "SYMLINK".into(),
        FT_XATTR => "XATTR".into(),
        _ => format!("DIR_ITEM.{t}"),
    }
}

pub(super) fn header_flags_str(flags: u64) -> String {
    let mut v = Vec::new();
    if flags & HEADER_FLAG_WRITTEN != 0 {
        v.push("WRITTEN");
    }
    if flags & HEADER_FLAG_RELOC != 0 {
        v.push("RELOC");
    }
    v.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_strings_match_btrfs_progs() {
        assert_eq!(key_str(&Key::new(FS_TREE_OBJECTID, ROOT_ITEM_KEY, u64::MAX)), "key (FS_TREE ROOT_ITEM 18446744073709551615)");
        assert_eq!(key_str(&Key::new(256, INODE_ITEM_KEY, u64::MAX)), "key (256 INODE_ITEM -1)");
        assert_eq!(key_str(&Key::new(1, DEV_ITEM_KEY, 1)), "key (DEV_ITEMS DEV_ITEM 1)");
        assert_eq!(key_str(&Key::new(256, CHUNK_ITEM_KEY, 1)), "key (FIRST_CHUNK_TREE CHUNK_ITEM 1)");
        assert_eq!(key_str(&Key::new(1, DEV_EXTENT_KEY, 1)), "key (1 DEV_EXTENT 1)");
        assert_eq!(key_str(&Key::new(0, PERSISTENT_ITEM_KEY, 1)), "key (DEV_STATS PERSISTENT_ITEM 1)");
        assert_eq!(key_str(&Key::new(0, QGROUP_INFO_KEY, 5)), "key (0 QGROUP_INFO 0/5)");
        assert_eq!(key_str(&Key::new(1 << 48, QGROUP_RELATION_KEY, 5)), "key (1/0 QGROUP_RELATION 0/5)");
        assert_eq!(key_str(&Key::new(FREE_SPACE_OBJECTID, 0, 5)), "key (FREE_SPACE UNTYPED 5)");
        assert_eq!(key_str(&Key::new(TREE_RELOC_OBJECTID, ROOT_ITEM_KEY, 5)), "key (TREE_RELOC ROOT_ITEM FS_TREE)");
        assert_eq!(
            key_str(&Key::new(0x944b889f0e5b3e9a, UUID_KEY_SUBVOL, 0x6a9c26937c98a696)),
            "key (0x944b889f0e5b3e9a UUID_KEY_SUBVOL 0x6a9c26937c98a696)"
        );
        assert_eq!(key_str(&Key::new(u64::MAX, 0, 0)), "key (-1 UNKNOWN.0 0)");
        assert_eq!(bg_flags_str(BLOCK_GROUP_DATA | BLOCK_GROUP_METADATA), "DATA|METADATA|single");
        assert_eq!(bg_flags_str(BLOCK_GROUP_SYSTEM | BLOCK_GROUP_DUP), "SYSTEM|DUP");
    }
}
