//! Typed views of raw on-disk values: keys, profiles, file types, names of
//! item types and trees. Unknown raw values are reported, never cast blindly.

use super::ondisk::*;

/// A key in CPU order. Ordering is (objectid, type, offset), as in every btrfs tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key {
    pub objectid: u64,
    pub item_type: u8,
    pub offset: u64,
}

impl Key {
    pub const MIN: Key = Key { objectid: 0, item_type: 0, offset: 0 };
    pub const MAX: Key = Key { objectid: u64::MAX, item_type: u8::MAX, offset: u64::MAX };

    pub const fn new(objectid: u64, item_type: u8, offset: u64) -> Self {
        Key { objectid, item_type, offset }
    }

    pub fn from_disk(k: &DiskKey) -> Self {
        Key { objectid: k.objectid.get(), item_type: k.item_type, offset: k.offset.get() }
    }

    pub fn to_disk(self) -> DiskKey {
        DiskKey::new(self.objectid, self.item_type, self.offset)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({} {} {})", objectid_name(self.objectid, self.item_type), item_type_name(self.item_type), offset_display(*self))
    }
}

fn offset_display(k: Key) -> String {
    if k.offset == u64::MAX {
        "-1".into()
    } else if matches!(k.item_type, UUID_KEY_SUBVOL | UUID_KEY_RECEIVED_SUBVOL) {
        format!("{:#018x}", k.offset)
    } else {
        k.offset.to_string()
    }
}

/// A block group's RAID profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    Single,
    Dup,
    Raid0,
    Raid1,
    Raid1C3,
    Raid1C4,
    Raid10,
    Raid5,
    Raid6,
}

impl Profile {
    pub const ALL: [Profile; 9] = [
        Profile::Single,
        Profile::Dup,
        Profile::Raid0,
        Profile::Raid1,
        Profile::Raid1C3,
        Profile::Raid1C4,
        Profile::Raid10,
        Profile::Raid5,
        Profile::Raid6,
    ];

    /// Decode the profile bits of a chunk or block group type; more than one
    /// profile bit set is an error (`None`).
    pub fn from_flags(flags: u64) -> Option<Self> {
        let bits = flags & BLOCK_GROUP_PROFILE_MASK;
        Some(match bits {
            0 => Profile::Single,
            BLOCK_GROUP_DUP => Profile::Dup,
            BLOCK_GROUP_RAID0 => Profile::Raid0,
            BLOCK_GROUP_RAID1 => Profile::Raid1,
            BLOCK_GROUP_RAID1C3 => Profile::Raid1C3,
            BLOCK_GROUP_RAID1C4 => Profile::Raid1C4,
            BLOCK_GROUP_RAID10 => Profile::Raid10,
            BLOCK_GROUP_RAID5 => Profile::Raid5,
            BLOCK_GROUP_RAID6 => Profile::Raid6,
            _ => return None,
        })
    }

    pub fn flag(self) -> u64 {
        match self {
            Profile::Single => 0,
            Profile::Dup => BLOCK_GROUP_DUP,
            Profile::Raid0 => BLOCK_GROUP_RAID0,
            Profile::Raid1 => BLOCK_GROUP_RAID1,
            Profile::Raid1C3 => BLOCK_GROUP_RAID1C3,
            Profile::Raid1C4 => BLOCK_GROUP_RAID1C4,
            Profile::Raid10 => BLOCK_GROUP_RAID10,
            Profile::Raid5 => BLOCK_GROUP_RAID5,
            Profile::Raid6 => BLOCK_GROUP_RAID6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Single => "single",
            Profile::Dup => "dup",
            Profile::Raid0 => "raid0",
            Profile::Raid1 => "raid1",
            Profile::Raid1C3 => "raid1c3",
            Profile::Raid1C4 => "raid1c4",
            Profile::Raid10 => "raid10",
            Profile::Raid5 => "raid5",
            Profile::Raid6 => "raid6",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Profile::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(s))
    }

    /// The profile as a type flags string spells it: `single`, `DUP`, `RAID1`...
    pub fn flags_name(self) -> String {
        match self {
            Profile::Single => "single".into(),
            p => p.name().to_ascii_uppercase(),
        }
    }

    /// How many copies of each byte the profile keeps.
    pub fn copies(self) -> usize {
        match self {
            Profile::Single | Profile::Raid0 | Profile::Raid5 => 1,
            Profile::Dup | Profile::Raid1 | Profile::Raid10 | Profile::Raid6 => 2,
            Profile::Raid1C3 => 3,
            Profile::Raid1C4 => 4,
        }
    }

    /// Fewest devices a chunk of this profile can be made on.
    pub fn min_devices(self) -> usize {
        match self {
            Profile::Single | Profile::Dup => 1,
            Profile::Raid0 | Profile::Raid1 | Profile::Raid5 => 2,
            Profile::Raid1C3 | Profile::Raid6 => 3,
            Profile::Raid1C4 | Profile::Raid10 => 4,
        }
    }
}

/// How the kernel's chunk allocator lays a profile out (its `btrfs_raid_array`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaidAttr {
    /// Stripes a chunk puts on each device it uses (DUP: 2).
    pub dev_stripes: usize,
    /// Most devices one chunk spans; 0 = as many as have space.
    pub devs_max: usize,
    pub devs_min: usize,
    /// The device count is rounded down to a multiple of this.
    pub devs_increment: usize,
    /// Copies of each byte.
    pub ncopies: usize,
    pub sub_stripes: u16,
}

impl Profile {
    /// The kernel's allocation attributes; `None` for RAID5/6, which btrs
    /// does not allocate.
    pub fn raid_attr(self) -> Option<RaidAttr> {
        let a = |dev_stripes, devs_max, devs_min, devs_increment, ncopies, sub_stripes| RaidAttr {
            dev_stripes,
            devs_max,
            devs_min,
            devs_increment,
            ncopies,
            sub_stripes,
        };
        Some(match self {
            Profile::Single => a(1, 1, 1, 1, 1, 1),
            Profile::Dup => a(2, 1, 1, 1, 2, 1),
            Profile::Raid0 => a(1, 0, 1, 1, 1, 1),
            Profile::Raid1 => a(1, 2, 2, 2, 2, 1),
            Profile::Raid1C3 => a(1, 3, 3, 3, 3, 1),
            Profile::Raid1C4 => a(1, 4, 4, 4, 4, 1),
            Profile::Raid10 => a(1, 0, 2, 2, 2, 2),
            Profile::Raid5 | Profile::Raid6 => return None,
        })
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a directory entry or inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    Regular,
    Directory,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    Symlink,
}

impl FileType {
    /// From the FT_* byte of a dir item; `None` for unknown or xattr types.
    pub fn from_dir_type(t: u8) -> Option<Self> {
        Some(match t & !FT_ENCRYPTED {
            FT_REG_FILE => FileType::Regular,
            FT_DIR => FileType::Directory,
            FT_CHRDEV => FileType::CharDevice,
            FT_BLKDEV => FileType::BlockDevice,
            FT_FIFO => FileType::Fifo,
            FT_SOCK => FileType::Socket,
            FT_SYMLINK => FileType::Symlink,
            _ => return None,
        })
    }

    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & S_IFMT {
            S_IFREG => FileType::Regular,
            S_IFDIR => FileType::Directory,
            S_IFCHR => FileType::CharDevice,
            S_IFBLK => FileType::BlockDevice,
            S_IFIFO => FileType::Fifo,
            S_IFSOCK => FileType::Socket,
            S_IFLNK => FileType::Symlink,
            _ => return None,
        })
    }

    pub fn dir_type(self) -> u8 {
        match self {
            FileType::Regular => FT_REG_FILE,
            FileType::Directory => FT_DIR,
            FileType::CharDevice => FT_CHRDEV,
            FileType::BlockDevice => FT_BLKDEV,
            FileType::Fifo => FT_FIFO,
            FileType::Socket => FT_SOCK,
            FileType::Symlink => FT_SYMLINK,
        }
    }

    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Regular => S_IFREG,
            FileType::Directory => S_IFDIR,
            FileType::CharDevice => S_IFCHR,
            FileType::BlockDevice => S_IFBLK,
            FileType::Fifo => S_IFIFO,
            FileType::Socket => S_IFSOCK,
            FileType::Symlink => S_IFLNK,
        }
    }

    /// The character `ls -l` shows.
    pub fn ls_char(self) -> char {
        match self {
            FileType::Regular => '-',
            FileType::Directory => 'd',
            FileType::CharDevice => 'c',
            FileType::BlockDevice => 'b',
            FileType::Fifo => 'p',
            FileType::Socket => 's',
            FileType::Symlink => 'l',
        }
    }
}

/// Name of an item type as btrfs-progs prints it.
pub fn item_type_name(t: u8) -> String {
    let s = match t {
        INODE_ITEM_KEY => "INODE_ITEM",
        INODE_REF_KEY => "INODE_REF",
        INODE_EXTREF_KEY => "INODE_EXTREF",
        XATTR_ITEM_KEY => "XATTR_ITEM",
        VERITY_DESC_ITEM_KEY => "VERITY_DESC_ITEM",
        VERITY_MERKLE_ITEM_KEY => "VERITY_MERKLE_ITEM",
        ORPHAN_ITEM_KEY => "ORPHAN_ITEM",
        DIR_LOG_ITEM_KEY => "DIR_LOG_ITEM",
        DIR_LOG_INDEX_KEY => "DIR_LOG_INDEX",
        DIR_ITEM_KEY => "DIR_ITEM",
        DIR_INDEX_KEY => "DIR_INDEX",
        EXTENT_DATA_KEY => "EXTENT_DATA",
        EXTENT_CSUM_KEY => "EXTENT_CSUM",
        ROOT_ITEM_KEY => "ROOT_ITEM",
        ROOT_BACKREF_KEY => "ROOT_BACKREF",
        ROOT_REF_KEY => "ROOT_REF",
        EXTENT_ITEM_KEY => "EXTENT_ITEM",
        METADATA_ITEM_KEY => "METADATA_ITEM",
        EXTENT_OWNER_REF_KEY => "EXTENT_OWNER_REF",
        TREE_BLOCK_REF_KEY => "TREE_BLOCK_REF",
        EXTENT_DATA_REF_KEY => "EXTENT_DATA_REF",
        SHARED_BLOCK_REF_KEY => "SHARED_BLOCK_REF",
        SHARED_DATA_REF_KEY => "SHARED_DATA_REF",
        BLOCK_GROUP_ITEM_KEY => "BLOCK_GROUP_ITEM",
        FREE_SPACE_INFO_KEY => "FREE_SPACE_INFO",
        FREE_SPACE_EXTENT_KEY => "FREE_SPACE_EXTENT",
        FREE_SPACE_BITMAP_KEY => "FREE_SPACE_BITMAP",
        DEV_EXTENT_KEY => "DEV_EXTENT",
        DEV_ITEM_KEY => "DEV_ITEM",
        CHUNK_ITEM_KEY => "CHUNK_ITEM",
        RAID_STRIPE_KEY => "RAID_STRIPE",
        QGROUP_STATUS_KEY => "QGROUP_STATUS",
        QGROUP_INFO_KEY => "QGROUP_INFO",
        QGROUP_LIMIT_KEY => "QGROUP_LIMIT",
        QGROUP_RELATION_KEY => "QGROUP_RELATION",
        TEMPORARY_ITEM_KEY => "TEMPORARY_ITEM",
        PERSISTENT_ITEM_KEY => "PERSISTENT_ITEM",
        DEV_REPLACE_KEY => "DEV_REPLACE",
        UUID_KEY_SUBVOL => "UUID_KEY_SUBVOL",
        UUID_KEY_RECEIVED_SUBVOL => "UUID_KEY_RECEIVED_SUBVOL",
        STRING_ITEM_KEY => "STRING_ITEM",
        _ => return format!("UNKNOWN.{t}"),
    };
    s.to_string()
}

/// Name of a well-known object id (trees and special objects), else the number.
pub fn objectid_name(id: u64, item_type: u8) -> String {
    // Object ids below 256 name trees only in keys where that reading makes sense;
    // in a dev tree or chunk tree the numbers mean something else.
    if item_type == DEV_EXTENT_KEY || item_type == CHUNK_ITEM_KEY && id == FIRST_CHUNK_TREE_OBJECTID {
        return if item_type == CHUNK_ITEM_KEY { "FIRST_CHUNK_TREE".into() } else { id.to_string() };
    }
    if item_type == DEV_ITEM_KEY && id == DEV_ITEMS_OBJECTID {
        return "DEV_ITEMS".into();
    }
    if item_type == PERSISTENT_ITEM_KEY && id == DEV_STATS_OBJECTID {
        return "DEV_STATS".into();
    }
    if matches!(item_type, UUID_KEY_SUBVOL | UUID_KEY_RECEIVED_SUBVOL) {
        return format!("{id:#018x}");
    }
    tree_name(id).map(str::to_string).unwrap_or_else(|| id.to_string())
}

/// A well-known object id (a tree or a special object) and the names it
/// goes by: btrs's own, and the two spellings of btrfs-progs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectidNames {
    pub id: u64,
    /// btrs's name: [`tree_name`], [`objectid_name`], messages.
    pub name: &'static str,
    /// btrfs-progs' `print_objectid()` spelling, where it is not `name`.
    pub progs_name: Option<&'static str>,
    /// The word btrfs-progs' dump-tree prints before `tree key (...)`;
    /// `None` for the ids it calls `file`.
    pub tree_label: Option<&'static str>,
}

impl ObjectidNames {
    /// The name as btrfs-progs' `print_objectid()` spells it.
    pub fn progs(&self) -> &'static str {
        self.progs_name.unwrap_or(self.name)
    }
}

const fn names(id: u64, name: &'static str, progs_name: Option<&'static str>, tree_label: Option<&'static str>) -> ObjectidNames {
    ObjectidNames { id, name, progs_name, tree_label }
}

/// Every well-known object id with its names, declared once.
pub const OBJECTID_NAMES: [ObjectidNames; 22] = [
    names(ROOT_TREE_OBJECTID, "ROOT_TREE", None, Some("root")),
    names(EXTENT_TREE_OBJECTID, "EXTENT_TREE", None, Some("extent")),
    names(CHUNK_TREE_OBJECTID, "CHUNK_TREE", None, Some("chunk")),
    names(DEV_TREE_OBJECTID, "DEV_TREE", None, Some("device")),
    names(FS_TREE_OBJECTID, "FS_TREE", None, Some("fs")),
    names(ROOT_TREE_DIR_OBJECTID, "ROOT_TREE_DIR", None, Some("directory")),
    names(CSUM_TREE_OBJECTID, "CSUM_TREE", None, Some("checksum")),
    names(QUOTA_TREE_OBJECTID, "QUOTA_TREE", None, Some("quota")),
    names(UUID_TREE_OBJECTID, "UUID_TREE", None, Some("uuid")),
    names(FREE_SPACE_TREE_OBJECTID, "FREE_SPACE_TREE", None, Some("free space")),
    names(BLOCK_GROUP_TREE_OBJECTID, "BLOCK_GROUP_TREE", None, Some("block group")),
    names(RAID_STRIPE_TREE_OBJECTID, "RAID_STRIPE_TREE", None, Some("raid stripe")),
    names(BALANCE_OBJECTID, "BALANCE", None, None),
    names(ORPHAN_OBJECTID, "ORPHAN", None, Some("orphan")),
    names(TREE_LOG_OBJECTID, "TREE_LOG", None, Some("log")),
    names(TREE_LOG_FIXUP_OBJECTID, "TREE_LOG_FIXUP", Some("LOG_FIXUP"), Some("log fixup")),
    names(TREE_RELOC_OBJECTID, "TREE_RELOC", None, Some("reloc")),
    names(DATA_RELOC_TREE_OBJECTID, "DATA_RELOC_TREE", None, Some("data reloc")),
    names(EXTENT_CSUM_OBJECTID, "EXTENT_CSUM", None, Some("extent checksum")),
    names(FREE_SPACE_OBJECTID, "FREE_SPACE", None, None),
    names(FREE_INO_OBJECTID, "FREE_INO", None, None),
    names(MULTIPLE_OBJECTIDS, "MULTIPLE", None, Some("multiple")),
];

/// The names of a well-known object id.
pub fn objectid_names(id: u64) -> Option<&'static ObjectidNames> {
    OBJECTID_NAMES.iter().find(|n| n.id == id)
}

/// Name of a tree by its object id (the owner field of tree blocks).
pub fn tree_name(id: u64) -> Option<&'static str> {
    objectid_names(id).map(|n| n.name)
}

/// Parse a tree name as `--tree` accepts it: a number, or a name such as
/// `root`, `extent`, `chunk`, `dev`, `fs`, `csum`, `uuid`, `free-space`,
/// `data-reloc`, `block-group`, `quota`, `raid-stripe`.
pub fn parse_tree_id(s: &str) -> Option<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    if let Ok(n) = s.parse::<i64>() {
        return Some(super::objectid_of(n));
    }
    // As btrfs-progs: BTRFS_ROOT_TREE_OBJECTID, ROOT_TREE, root, in any case.
    let norm = s.to_ascii_lowercase().replace(['_', '-'], "");
    let norm = norm.strip_prefix("btrfs").unwrap_or(&norm);
    let norm = norm.strip_suffix("objectid").unwrap_or(norm);
    let norm = norm.strip_suffix("tree").unwrap_or(norm);
    Some(match norm {
        "root" => ROOT_TREE_OBJECTID,
        "extent" => EXTENT_TREE_OBJECTID,
        "chunk" => CHUNK_TREE_OBJECTID,
        "dev" | "device" => DEV_TREE_OBJECTID,
        "fs" => FS_TREE_OBJECTID,
        "csum" | "checksum" => CSUM_TREE_OBJECTID,
        "quota" => QUOTA_TREE_OBJECTID,
        "uuid" => UUID_TREE_OBJECTID,
        "freespace" | "fst" => FREE_SPACE_TREE_OBJECTID,
        "blockgroup" | "bgt" => BLOCK_GROUP_TREE_OBJECTID,
        "raidstripe" => RAID_STRIPE_TREE_OBJECTID,
        "datareloc" => DATA_RELOC_TREE_OBJECTID,
        "log" | "treelog" => TREE_LOG_OBJECTID,
        "treelogfixup" => TREE_LOG_FIXUP_OBJECTID,
        "treereloc" => TREE_RELOC_OBJECTID,
        _ => return None,
    })
}

/// The type bits of a chunk or block group and their names, in bit order.
pub const BLOCK_GROUP_TYPE_NAMES: [(u64, &str); 3] =
    [(BLOCK_GROUP_DATA, "DATA"), (BLOCK_GROUP_SYSTEM, "SYSTEM"), (BLOCK_GROUP_METADATA, "METADATA")];

/// The name of one block group type bit.
pub fn block_group_type_name(bit: u64) -> Option<&'static str> {
    BLOCK_GROUP_TYPE_NAMES.iter().find(|(b, _)| *b == bit).map(|(_, n)| *n)
}

/// Human form of chunk / block group type flags, like btrfs-progs: `DATA|RAID1`.
pub fn block_group_flags_string(flags: u64) -> String {
    let mut parts = Vec::new();
    for (bit, name) in BLOCK_GROUP_TYPE_NAMES {
        if flags & bit != 0 {
            parts.push(name.to_string());
        }
    }
    match Profile::from_flags(flags) {
        Some(p) => parts.push(p.flags_name()),
        None => parts.push(format!("PROFILES({:#x})", flags & BLOCK_GROUP_PROFILE_MASK)),
    }
    let unknown = flags & !(BLOCK_GROUP_TYPE_MASK | BLOCK_GROUP_PROFILE_MASK);
    if unknown != 0 {
        parts.push(format!("UNKNOWN({unknown:#x})"));
    }
    parts.join("|")
}

/// Format a UUID as the usual 8-4-4-4-12 lowercase hex string.
pub fn uuid_string(u: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*u).hyphenated().to_string()
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;

    #[test]
    fn key_order() {
        let a = Key::new(256, INODE_ITEM_KEY, 0);
        let b = Key::new(256, INODE_REF_KEY, 0);
        let c = Key::new(257, 0, 0);
        assert!(a < b && b < c);
        assert_eq!(Key::from_disk(&a.to_disk()), a);
    }

    #[test]
    fn profiles() {
        for p in Profile::ALL {
            assert_eq!(Profile::from_flags(p.flag() | BLOCK_GROUP_DATA), Some(p));
            assert_eq!(Profile::from_name(p.name()), Some(p));
        }
        assert_eq!(Profile::from_flags(BLOCK_GROUP_RAID1 | BLOCK_GROUP_DUP), None);
        assert_eq!(block_group_flags_string(BLOCK_GROUP_DATA | BLOCK_GROUP_RAID1), "DATA|RAID1");
        assert_eq!(block_group_flags_string(BLOCK_GROUP_METADATA), "METADATA|single");
    }

    #[test]
    fn objectid_names_are_declared_once() {
        for (i, n) in OBJECTID_NAMES.iter().enumerate() {
            assert!(OBJECTID_NAMES[..i].iter().all(|m| m.id != n.id), "{} twice", n.name);
        }
        assert_eq!(tree_name(TREE_LOG_FIXUP_OBJECTID), Some("TREE_LOG_FIXUP"));
        assert_eq!(objectid_names(TREE_LOG_FIXUP_OBJECTID).map(|n| n.progs()), Some("LOG_FIXUP"));
        assert_eq!(objectid_names(FS_TREE_OBJECTID).map(|n| n.progs()), Some("FS_TREE"));
        assert_eq!(tree_name(256), None);
    }

    #[test]
    fn tree_names() {
        assert_eq!(parse_tree_id("free-space"), Some(FREE_SPACE_TREE_OBJECTID));
        assert_eq!(parse_tree_id("data-reloc"), Some(DATA_RELOC_TREE_OBJECTID));
        // btrfs-progs' spellings.
        assert_eq!(parse_tree_id("BTRFS_ROOT_TREE_OBJECTID"), Some(ROOT_TREE_OBJECTID));
        assert_eq!(parse_tree_id("tree_log_fixup"), Some(TREE_LOG_FIXUP_OBJECTID));
        assert_eq!(parse_tree_id("TREE_RELOC"), Some(TREE_RELOC_OBJECTID));
        assert_eq!(parse_tree_id("DATA_RELOC_TREE"), Some(DATA_RELOC_TREE_OBJECTID));
        assert_eq!(parse_tree_id("tree"), None);
        assert_eq!(parse_tree_id("256"), Some(256));
        assert_eq!(parse_tree_id("-9"), Some(DATA_RELOC_TREE_OBJECTID));
        assert_eq!(parse_tree_id("nonsense"), None);
    }
}
