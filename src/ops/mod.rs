//! Whole-filesystem jobs built on the layers below.

pub(crate) mod backref;
pub mod balance;
pub mod coreutils;
pub mod device;
pub mod dump;
pub mod extract;
pub mod filesystem;
pub mod fixture;
pub(crate) mod host;
pub mod listing;
pub mod mkfs;
pub(crate) mod pipeline;
pub mod put;
pub mod quoting;
pub mod replace;
pub mod resize;
pub mod rootdir;
pub mod scrub;
pub mod stat;
pub mod subvol;
pub mod write;
