//! btrs: create, read, write and scrub btrfs filesystems kept in image files,
//! without a kernel mount.
//!
//! Layers, with data flowing one way:
//! `volumes` (image files, chunk map) → `tree` (tree blocks, search) →
//! `fs` (inodes, directories, file data) → `ops` (whole-filesystem jobs).
//! `format` holds the on-disk structures all of them share.
//! `name` shows names and paths in messages, for all of them.
//!
//! # Library surface
//!
//! What a program embedding btrs uses:
//!
//! - Open and read: [`Filesystem::open`] with [`OpenOptions`], then `resolve`,
//!   `lookup`, `inode`, `read_dir`, `read_file`, `read_link`, `xattrs`,
//!   `subvolumes` on it ([`DirEnt`], [`InodeId`], [`Inode`]).
//! - Write: the commands' own calls in [`ops::write`] (`write`, `mkdir`, `rm`,
//!   `mv`, `ln`, `setfattr`, `put`, one committed transaction each), or a
//!   [`Transaction`] for several changes in one commit: `write_at` (buffered),
//!   `write_direct` from a [`Source`] another thread may be changing (bounce
//!   pages: mirrors and checksums always agree), and [`CachedFile`] for
//!   buffered writes from many threads with stable pages.
//! - Make: [`ops::mkfs::mkfs`] with [`ops::mkfs::MkfsOptions`].
//! - Verify and repair: [`ops::scrub::scrub`] with [`ops::scrub::ScrubOptions`].
//! - Errors: [`Error`], whose `Corrupt` carries a [`CorruptKind`].
//! - On-disk definitions: [`format`](mod@format).
//!
//! The other modules are public for btrs's own binary, integration tests and
//! fuzz targets only; inside them, what no other crate uses is pub(crate).

// What is not part of the library surface says so: pub(crate) or narrower.
#![warn(unreachable_pub)]

#[doc(hidden)]
pub mod cli;
pub mod error;
pub mod format;
pub mod fs;
pub mod name;
pub mod ops;
#[doc(hidden)]
pub mod threads;
#[doc(hidden)]
pub mod tree;
#[doc(hidden)]
pub mod volumes;

// The random-operation model test against btrs, btrfs check and the kernel
// (whole filesystem: mkfs, writes, scrub), and crash tests by fault injection.
#[cfg(test)]
mod model_tests;

pub use error::{CorruptKind, Error, Result};
pub use fs::direct::{Plain, SharedBuf, Source};
pub use fs::pagecache::CachedFile;
pub use fs::txn::Transaction;
pub use fs::{DirEnt, Filesystem, Inode, InodeId};
pub use volumes::OpenOptions;
