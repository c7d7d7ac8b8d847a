//! btrs: create, read, write and scrub btrfs filesystems kept in image files,
//! without a kernel mount.
//!
//! Layers, with data flowing one way:
//! `volumes` (image files, chunk map) → `tree` (tree blocks, search) →
//! `fs` (inodes, directories, file data) → `ops` (whole-filesystem jobs).
//! `format` holds the on-disk structures all of them share.

#![forbid(unsafe_code)]

pub mod cli;
pub mod error;
pub mod format;
pub mod fs;
pub mod ops;
pub mod threads;
pub mod tree;
pub mod volumes;

pub use error::{Error, Result};
pub use fs::Filesystem;
