//! Whole-filesystem jobs built on the layers below.

pub mod dump;
pub mod extract;
pub mod fixture;
pub mod listing;
pub mod mkfs;
pub mod pipeline;
pub mod host;
pub mod rootdir;
pub mod backref;
pub mod scrub;
pub mod write;
