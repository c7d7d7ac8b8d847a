//! What callers of the write engine pass and get back: the options of
//! file data writes and their report, and where a path leads.

use crate::format::compress::Compression;
use crate::fs::InodeId;
pub use crate::volumes::bio::{BioFn, BioHook, BioRecord, BioStage};

/// Per-write statistics and, for `-v`, a log of every write submitted.
#[derive(Default, Debug, Clone)]
pub struct WriteReport {
    pub bios: Vec<BioRecord>,
    pub bytes: u64,
    /// Things worth telling the user (e.g. O_DIRECT unavailable).
    pub notices: Vec<String>,
    /// File bytes written as compressed extents, and the bytes those
    /// extents take on disk (one copy).
    pub compressed: u64,
    pub compressed_disk: u64,
}

/// Options for file data writes.
#[derive(Clone, Debug)]
pub struct WriteOpts {
    /// Largest single device write (a "bio"); pieces never cross a stripe.
    pub(crate) max_bio: usize,
    pub(crate) on_bio: Option<BioHook>,
    /// Compress what is written, as the kernel's compress= (or, `force`,
    /// compress-force=) mount option would; files flagged or with the
    /// property are compressed without it.
    pub(crate) compress: Option<CompressOpts>,
}

impl Default for WriteOpts {
    fn default() -> Self {
        WriteOpts { max_bio: 1 << 20, on_bio: None, compress: None }
    }
}

/// Compression asked for a write: algorithm, level (None: its default) and
/// whether it is forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressOpts {
    pub kind: Compression,
    pub level: Option<i32>,
    pub force: bool,
}

/// Where a path leads: the inode (in its subvolume, as the read side names
/// it) and its dir type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub id: InodeId,
    pub dir_type: u8,
}

impl Place {
    /// The subvolume (tree) the inode is in.
    pub(crate) fn root(&self) -> u64 {
        self.id.subvol
    }

    pub(crate) fn ino(&self) -> u64 {
        self.id.ino
    }
}
