//! B-trees: tree blocks, verified reads with mirror fallback, search and iteration.

// Bytes here come from images and users: every sum, index and cast is
// checked, or allowed where it cannot fail with the reason beside it.
#![warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]

pub(crate) mod block;
pub(crate) mod builder;
pub mod checker;
pub(crate) mod cow;
pub(crate) mod edit;
pub(crate) mod encode;
pub(crate) mod reader;

pub use block::{Expect, TreeBlock};
pub use reader::{Cursor, ItemRef, RootPtr, TreeReader};
