//! The on-disk format: structures, constants, checksums and typed decoding.
//! Pure: bytes in, typed values or an error out; no I/O.

pub mod csum;
pub mod items;
pub mod limits;
pub mod ondisk;
pub mod superblock;
pub mod types;

pub use csum::{CsumBytes, CsumType};
pub use ondisk::*;
pub use types::{FileType, Key, Profile};
