//! One error type for the library. Its variants keep apart "the image is damaged"
//! (`Corrupt`), "btrs cannot handle this image" (`Incompatible`/`Unsupported`),
//! "the host failed" (`Io`) and "the caller asked for something wrong"
//! (`NotFound`, `Invalid`, `Devices`), so that callers can react differently.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host could not read or write an image file.
    #[error("{}: {op}: {source}", shown_path(path))]
    Io {
        path: PathBuf,
        op: String,
        #[source]
        source: std::io::Error,
    },

    /// Bytes on the image do not make sense. `kind` says which rule they
    /// break, `at` names where (device, logical address, tree, item), `what`
    /// says what is wrong.
    #[error("corrupt {at}: {what}")]
    Corrupt { kind: CorruptKind, at: String, what: String },

    /// Every copy of a tree block lies on a stale device, whose tree blocks
    /// are trusted for nothing (see `Volume::stale`): not damage, but no
    /// current copy to read.
    #[error("{at}: {what}")]
    Untrusted { at: String, what: String },

    /// The image uses a feature whose on-disk format btrs does not understand.
    #[error("incompatible image: {0}")]
    Incompatible(String),

    /// A valid request that btrs does not implement.
    #[error("not supported: {0}")]
    Unsupported(String),

    /// The set of image files does not form one filesystem (missing or
    /// duplicate devices, fsid mismatch, not a btrfs at all).
    #[error("{0}")]
    Devices(String),

    /// A path or object that does not exist in the filesystem.
    #[error("not found: {0}")]
    NotFound(String),

    /// A bad argument from the caller.
    #[error("{0}")]
    Invalid(String),

    /// btrs failed itself: a worker thread panicked (or poisoned a lock it
    /// held), or an internal plan did not hold. A bug, not the caller's or
    /// the image's fault.
    #[error("internal error: {0}")]
    Internal(String),

    /// The filesystem is full (ENOSPC): no block group and no device has room.
    #[error("no space left on the filesystem: {0}")]
    NoSpace(String),

    /// A tree block btrs was about to write breaks a rule of the kernel's
    /// tree-checker: a bug in btrs, caught before any superblock names the block.
    #[error("internal error: tree block {block} ({tree}) would be refused by the kernel's tree-checker: {what}")]
    TreeCheck { tree: String, block: u64, what: String },

    /// A compressed extent that would not decompress.
    #[error("{at}: {source}")]
    Compress {
        at: String,
        #[source]
        source: CompressError,
    },
}

/// A path as an error shows it: escaped as names from images are (see
/// [`crate::name`]: one line, bytes that are not UTF-8 as `\\xNN`);
/// one longer than a screen (a tree deeper than PATH_MAX allows) keeps its
/// start and its end, with the middle elided.
fn shown_path(path: &std::path::Path) -> String {
    const HEAD: usize = 120;
    const TAIL: usize = 200;
    let full = crate::name::Name(path.as_os_str().as_encoded_bytes()).to_string();
    if full.len() <= HEAD + TAIL + 40 {
        return full;
    }
    let mut head = HEAD;
    while !full.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = full.len() - TAIL;
    while !full.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}[... {} bytes ...]{}", &full[..head], tail - head, &full[tail..])
}

impl Error {
    pub(crate) fn corrupt(kind: CorruptKind, at: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Corrupt { kind, at: at.into(), what: what.into() }
    }

    /// What kind of damage this is, for a `Corrupt` error.
    pub fn corrupt_kind(&self) -> Option<CorruptKind> {
        match self {
            Error::Corrupt { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    pub fn io(path: impl Into<PathBuf>, op: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), op: op.into(), source }
    }

    /// Prefix the location of a `Corrupt` error with outer context (e.g. the
    /// inode being read), leaving other kinds unchanged.
    pub(crate) fn within(self, outer: impl std::fmt::Display) -> Self {
        match self {
            Error::Corrupt { kind, at, what } => Error::Corrupt { kind, at: format!("{outer}: {at}"), what },
            Error::Untrusted { at, what } => Error::Untrusted { at: format!("{outer}: {at}"), what },
            other => other,
        }
    }

    /// Image content that cannot be read: damaged, or (`Untrusted`) only on
    /// stale devices. Callers that go on past one go on past the other.
    pub(crate) fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::Compress { .. } | Error::Untrusted { .. })
    }
}

/// Which rule of the format damaged bytes break: what a caller (or a test)
/// can match on, apart from the message, which names the place and detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CorruptKind {
    /// A superblock, its system chunk array, or the device set it describes.
    Superblock,
    /// The chunk map: chunk items, stripes, dev extents, addresses outside
    /// every chunk.
    ChunkMap,
    /// A tree block's header or shape: level, generation, keys in order,
    /// items within the block, a leaf where a node belongs.
    TreeBlock,
    /// An item too short or too long for its type, or not a whole number of
    /// entries.
    ItemSize,
    /// A field of an item holds a value the format does not allow (an
    /// unknown type, a name length out of range, items that overlap).
    ItemValue,
    /// An item that must exist is missing (a root item, an inode ref, an
    /// extent item, the checksum of a sector).
    MissingItem,
    /// Extent reference counts or back references that do not add up.
    ExtentRefs,
    /// An address or length whose end is past 2^64.
    Overflow,
    /// A directory or parent chain that loops, or nests deeper than any
    /// real tree.
    Loop,
    /// A compressed extent whose sizes cannot be.
    Compressed,
    /// No copy could be read and verified against its checksum.
    Unreadable,
}

/// Everything that can go wrong while (de)compressing an extent.
#[derive(thiserror::Error, Debug)]
pub enum CompressError {
    #[error("unknown compression type {raw}")]
    UnknownType { raw: u8 },
    #[error("corrupt {algo} data: {detail}")]
    Corrupt { algo: &'static str, detail: String },
    #[error("length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("invalid sector size {sectorsize} (must be a power of two from 512 to 65536)")]
    InvalidSectorSize { sectorsize: u32 },
    #[error("{algo} does not support compression level {level}")]
    InvalidLevel { algo: &'static str, level: i32 },
    #[error("{algo} compressor failed: {detail}")]
    Compressor { algo: &'static str, detail: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path too long to read in a message is cut in the middle, short ones are kept.
    #[test]
    fn long_paths_are_elided_in_messages() {
        let short = Error::io("/a/b", "open", std::io::ErrorKind::NotFound.into());
        assert!(short.to_string().starts_with("/a/b: open: "), "{short}");
        let long = format!("/root{}/last", "/d".repeat(5000));
        let e = Error::io(&long, "lstat", std::io::Error::from_raw_os_error(36));
        let m = e.to_string();
        assert!(m.len() < 500 && m.starts_with("/root/d/d") && m.contains("bytes ...]") && m.contains("/d/d/last: lstat: "), "{m}");
    }
}
