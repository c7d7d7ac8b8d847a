//! Typed inodes.

// Bytes here come from images and users: every sum, index and cast is
// checked, or allowed where it cannot fail with the reason beside it.
#![warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]

use crate::error::{CorruptKind, Error, Result};
use crate::format::items::read_prefix;
use crate::format::{FileType, InodeItem};

/// An inode is named by its subvolume (tree id) and its number in that tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeId {
    pub subvol: u64,
    pub ino: u64,
}

impl std::fmt::Display for InodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.subvol, self.ino)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Timespec {
    pub(crate) sec: i64,
    pub(crate) nsec: u32,
}

impl Timespec {
    /// Nanoseconds beyond one second cannot be represented on a host; clamp them.
    fn from_disk(t: &crate::format::Timespec) -> Self {
        // The on-disk seconds are a two's-complement i64 in a u64 field.
        Timespec { sec: i64::from_ne_bytes(t.sec.get().to_ne_bytes()), nsec: t.nsec.get().min(999_999_999) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub(crate) id: InodeId,
    pub file_type: FileType,
    /// Full st_mode (type and permission bits).
    pub mode: u32,
    pub size: u64,
    pub(crate) nbytes: u64,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub(crate) rdev: u64,
    pub flags: u64,
    pub(crate) generation: u64,
    pub(crate) transid: u64,
    pub(crate) sequence: u64,
    pub(crate) atime: Timespec,
    pub(crate) ctime: Timespec,
    pub(crate) mtime: Timespec,
    pub(crate) otime: Timespec,
}

impl Inode {
    pub fn parse(id: InodeId, data: &[u8]) -> Result<Inode> {
        let (i, _) = read_prefix::<InodeItem>(data, "inode item")?;
        let mode = i.mode.get();
        let file_type = FileType::from_mode(mode).ok_or_else(|| {
            Error::corrupt(CorruptKind::ItemValue, format!("inode {id}"), format!("mode {mode:#o} has no valid file type"))
        })?;
        Ok(Inode {
            id,
            file_type,
            mode,
            size: i.size.get(),
            nbytes: i.nbytes.get(),
            nlink: i.nlink.get(),
            uid: i.uid.get(),
            gid: i.gid.get(),
            rdev: i.rdev.get(),
            flags: i.flags.get(),
            generation: i.generation.get(),
            transid: i.transid.get(),
            sequence: i.sequence.get(),
            atime: Timespec::from_disk(&i.atime),
            ctime: Timespec::from_disk(&i.ctime),
            mtime: Timespec::from_disk(&i.mtime),
            otime: Timespec::from_disk(&i.otime),
        })
    }

    /// The directory the kernel invents for an unlinked subvolume entry:
    /// mode 0755, owned by root, one link, no times of its own.
    pub(crate) fn empty_subvol_placeholder(id: InodeId) -> Inode {
        Inode {
            id,
            file_type: FileType::Directory,
            mode: crate::format::S_IFDIR | 0o755,
            size: 0,
            nbytes: 0,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            generation: 0,
            transid: 0,
            sequence: 0,
            atime: Timespec::default(),
            ctime: Timespec::default(),
            mtime: Timespec::default(),
            otime: Timespec::default(),
        }
    }

    pub(crate) fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }

    /// Major and minor numbers of a device node. The kernel stores its
    /// internal dev_t (MKDEV: major << 20 | minor) in the inode item.
    pub(crate) fn rdev_major_minor(&self) -> (u32, u32) {
        // Masked to 12 and 20 bits: they fit a u32.
        let part = |v: u64| u32::try_from(v).unwrap_or(0);
        (part((self.rdev >> 20) & 0xfff), part(self.rdev & 0xf_ffff))
    }
}
