//! Whole-filesystem jobs built on the layers below.

pub mod extract;
pub mod listing;
