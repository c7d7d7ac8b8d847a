//! The on-disk format: structures, constants, checksums and typed decoding.
//! Pure: bytes in, typed values or an error out; no I/O.

// Bytes here come from images and users: every sum, index and cast is
// checked, or allowed where it cannot fail with the reason beside it.
#![warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]

pub mod acl;
pub mod compress;
pub mod csum;
pub mod encode;
pub mod items;
pub mod limits;
pub mod ondisk;
pub mod superblock;
pub mod types;

pub use csum::{CsumBytes, CsumType};

/// `u32` to `usize`, lossless on every host btrs builds for (asserted below):
/// the one place such a widening is written with `as`.
#[allow(clippy::as_conversions)] // OK: usize has at least 32 bits.
pub const fn usize_of(x: u32) -> usize {
    x as usize
}

/// `usize` to `u64`, lossless on every host btrs builds for (asserted below).
#[allow(clippy::as_conversions)] // OK: usize has at most 64 bits.
pub const fn u64_of(x: usize) -> u64 {
    x as u64
}

const _: () = assert!(usize::BITS >= 32 && usize::BITS <= 64);

/// The two's-complement bits of a negative object id, as the kernel's
/// `-4ULL` constants spell them.
pub const fn objectid_of(n: i64) -> u64 {
    u64::from_ne_bytes(n.to_ne_bytes())
}
pub use ondisk::*;
pub use types::{FileType, Key, Profile};
