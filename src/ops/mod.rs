//! Whole-filesystem jobs built on the layers below.

pub mod backref;
pub mod dump;
pub mod extract;
pub mod fixture;
pub mod host;
pub mod listing;
pub mod mkfs;
pub mod pipeline;
pub mod rootdir;
pub mod scrub;
pub mod write;
