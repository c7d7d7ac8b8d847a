//! One file of the source tree as the walk reads it, from either source: a
//! host directory (`--rootdir`) or an archive (`--rootdir-tar`, see `tar`).

use std::sync::Arc;

use crate::format::FileType;

/// One file of the source tree as the walk reads it: what `lstat` says of a
/// host file, or what a tar header and its PAX records say of a member.
#[derive(Clone, Debug)]
pub(crate) struct SourceFile {
    /// File type and permission bits, as in st_mode.
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Device number as btrfs stores it (the kernel's MKDEV: major << 20 | minor).
    pub(crate) rdev: u64,
    pub(crate) size: u64,
    pub(crate) atime: (u64, u32),
    pub(crate) mtime: (u64, u32),
    pub(crate) ctime: (u64, u32),
    /// How many names the file has.
    pub(crate) nlink: u64,
    /// An identity all of its names share: names with one identity are hard
    /// links to one inode (host: st_dev and st_ino).
    pub(crate) id: (u64, u64),
    /// Where the file's bytes begin in the archive (0 for a host file).
    pub(crate) offset: u64,
    /// A sparse archive member's (file offset, length) data segments, stored
    /// one after the other from `offset`; None: all data, contiguous.
    pub(crate) sparse: Option<Arc<[(u64, u64)]>>,
    /// A host file's st_blocks (512-byte units allocated); None in an archive.
    pub(crate) blocks: Option<u64>,
}

impl SourceFile {
    pub(super) fn is_dir(&self) -> bool {
        FileType::from_mode(self.mode) == Some(FileType::Directory)
    }
}
