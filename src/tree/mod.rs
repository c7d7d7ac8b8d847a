//! B-trees: tree blocks, verified reads with mirror fallback, search and iteration.

// Bytes here come from images and users: every sum, index and cast is
// checked, or allowed where it cannot fail with the reason beside it.
#![warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]

pub mod block;
pub mod builder;
pub mod checker;
pub mod cow;
pub mod edit;
pub mod encode;
pub mod reader;

pub use block::{Expect, TreeBlock};
pub use reader::{Cursor, ItemRef, RootPtr, TreeReader};
