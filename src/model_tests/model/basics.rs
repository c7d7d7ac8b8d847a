//! The model's basics: its random numbers, the kernel's limits it computes
//! on its own, and the error classes commands must end in.

#![allow(dead_code, unused_imports)]

use super::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

// ---------------------------------------------------------------- randomness

/// splitmix64: small, fast, and the same on every machine.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_F42D_4C95_7F2D)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (0 when n is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    /// True with probability num/den.
    pub(crate) fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    pub(crate) fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            v.get(self.below(v.len() as u64) as usize)
        }
    }
    /// Index by weights.
    pub(crate) fn weighted(&mut self, w: &[u64]) -> usize {
        let total: u64 = w.iter().sum();
        let mut x = self.below(total);
        for (i, &k) in w.iter().enumerate() {
            if x < k {
                return i;
            }
            x -= k;
        }
        w.len() - 1
    }
}

/// The bytes of a write: `len` bytes from `seed`. A quarter of the seeds give
/// text-like, compressible bytes, the rest noise.
pub(crate) fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if seed % 4 == 0 {
        let words: [&[u8]; 6] = [b"btrfs ", b"model ", b"extent ", b"sector ", b"\n", b"0123456789 "];
        let mut r = Rng::new(seed);
        let mut i = 0;
        while i < len {
            let w = words[r.below(6) as usize];
            let n = w.len().min(len - i);
            out[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
        return out;
    }
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for c in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    out
}

/// Printable bytes (an xattr value the command line can carry).
pub(crate) fn printable(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| b'!' + r.below(94) as u8).collect()
}

// ---------------------------------------------------------------- the kernel's limits

pub(crate) const S_IFMT: u32 = 0o170000;
pub(crate) const S_IFREG: u32 = 0o100000;
pub(crate) const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFLNK: u32 = 0o120000;
pub(crate) const S_IFIFO: u32 = 0o010000;
/// btrfs inode flags (BTRFS_INODE_NODATASUM, BTRFS_INODE_NODATACOW).
pub(crate) const NODATASUM: u64 = 1;
pub(crate) const NODATACOW: u64 = 2;
pub(crate) const MAX_FILE: u64 = i64::MAX as u64;
pub(crate) const NAME_MAX: usize = 255;
/// Bytes btrs reads into one step of a streaming write (`ops::write`).
pub(crate) const WRITE_STEP: u64 = 16 << 20;
/// The kernel's default max_inline; btrs keeps files this small inline.
pub(crate) const MAX_INLINE: u64 = 2048;

/// BTRFS_MAX_ITEM_SIZE: a leaf less its header (101) and one item (25).
pub(crate) fn max_item(nodesize: u32) -> usize {
    nodesize as usize - 101 - 25
}
/// BTRFS_MAX_XATTR_SIZE: one dir item (30 bytes) and its name and value.
pub(crate) fn max_xattr(nodesize: u32) -> usize {
    max_item(nodesize) - 30
}
/// Longest symlink target: one inline extent (21-byte header), below a sector.
pub(crate) fn max_symlink(nodesize: u32, sectorsize: u32) -> usize {
    (max_item(nodesize) - 21).min(sectorsize as usize - 1)
}

// ---------------------------------------------------------------- errors

/// What a refused operation is, the way a system call names it. btrs has no
/// errno: `Error::NotFound` and `Error::NoSpace` are typed, the rest are
/// `Error::Invalid`/`Error::Unsupported` told apart by their text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ErrClass {
    NotFound,
    Exists,
    NotEmpty,
    CrossSubvol,
    NoSpace,
    NameTooLong,
    NotAName,
    TooBig,
    XattrLimit,
    /// user.* xattrs on something other than a regular file or directory.
    XattrType,
    /// An xattr name in no namespace the kernel has (or nothing after it).
    XattrNamespace,
    SymlinkLimit,
    NotDir,
    NotRegular,
    ReadOnly,
    /// chmod of a symlink.
    SymlinkMode,
    IntoItself,
    DirLink,
    Subvol,
    Stub,
    /// A path that is no subvolume's root, given as a subvolume.
    NotSubvol,
    /// Deleting the top-level subvolume.
    TopLevel,
    /// Deleting a subvolume another one is linked in.
    HasNested,
    PutDestNotDir,
    /// Known gap: part of a compressed extent (the engine's two texts).
    GapCompressed(&'static str),
    /// Known gap: a name past what one inode ref item holds.
    GapExtref,
    /// Known gap: removing a name the kernel stored as an extended ref.
    GapExtrefStored,
    Other(String),
}

pub(crate) const GAP_REWRITE: &str = "rewriting part of a compressed extent";
pub(crate) const GAP_PARTIAL: &str = "partially overwriting a compressed extent";

/// The class of an error from its text (the library's `Display`, or what the
/// command line printed after "btrs: error: ").
pub(crate) fn classify(msg: &str) -> ErrClass {
    let has = |s: &str| msg.contains(s);
    if has("no space left on the filesystem") {
        ErrClass::NoSpace
    } else if has(GAP_REWRITE) {
        ErrClass::GapCompressed(GAP_REWRITE)
    } else if has(GAP_PARTIAL) {
        ErrClass::GapCompressed(GAP_PARTIAL)
    } else if has("too many hard links in one directory (extended refs)") {
        ErrClass::GapExtref
    } else if has("name stored as an extended inode ref") {
        ErrClass::GapExtrefStored
    } else if has("past the largest file size") || (has("--offset") && has("is not in 0..=")) {
        ErrClass::TooBig
    } else if has("user.* xattrs are only allowed") {
        ErrClass::XattrType
    } else if has("not in a namespace the kernel has") || has("nothing after the namespace") {
        ErrClass::XattrNamespace
    } else if has("empty xattr name") || has("xattr name of") || has("name and value of") || (has("xattr") && has("value of")) {
        ErrClass::XattrLimit
    } else if has("symlink target of") || has("empty symlink target") || has("symlink target contains") {
        ErrClass::SymlinkLimit
    } else if has("file name") && has("bytes: at most") {
        ErrClass::NameTooLong
    } else if has("not a name") || has("empty file name") || (has("file name") && has("is reserved")) {
        ErrClass::NotAName
    } else if has("exists and is not a directory") {
        ErrClass::PutDestNotDir
    } else if has("different subvolumes") {
        ErrClass::CrossSubvol
    } else if has("directory not empty") {
        ErrClass::NotEmpty
    } else if has("cannot move a directory into itself") {
        ErrClass::IntoItself
    } else if has("hard links to directories are not allowed") {
        ErrClass::DirLink
    } else if has("a symbolic link's mode") {
        ErrClass::SymlinkMode
    } else if has("is read-only") {
        ErrClass::ReadOnly
    } else if has("placeholder for subvolume") {
        ErrClass::Stub
    } else if has("is a subvolume") || has("removing a subvolume") {
        ErrClass::Subvol
    } else if has("not a subvolume") {
        ErrClass::NotSubvol
    } else if has("top-level subvolume (5) cannot be deleted") {
        ErrClass::TopLevel
    } else if has("holds subvolume") {
        ErrClass::HasNested
    } else if has("is not a regular file") {
        ErrClass::NotRegular
    } else if has("is not a directory") || has("a component is not a directory") {
        ErrClass::NotDir
    } else if has("already exists") || msg.trim_end().ends_with(" exists") {
        ErrClass::Exists
    } else if msg.starts_with("not found: ") || has("btrs: error: not found: ") {
        ErrClass::NotFound
    } else {
        ErrClass::Other(msg.to_string())
    }
}
