//! btrs: create, read, write and scrub btrfs filesystems kept in image files,
//! without a kernel mount.
//!
//! Layers, with data flowing one way:
//! `volumes` (image files, chunk map) → `tree` (tree blocks, search) →
//! `fs` (inodes, directories, file data) → `ops` (whole-filesystem jobs).
//! `format` holds the on-disk structures all of them share.

// What is not part of the library surface says so: pub(crate) or narrower.
#![warn(unreachable_pub)]

pub mod cli;
pub mod error;
pub mod format;
pub mod fs;
pub mod ops;
pub mod threads;
pub mod tree;
pub mod volumes;

// The random-operation model test against btrs, btrfs check and the kernel
// (whole filesystem: mkfs, writes, scrub), and crash tests by fault injection.
#[cfg(test)]
mod model_tests;

pub use error::{CorruptKind, Error, Result};
pub use fs::Filesystem;
