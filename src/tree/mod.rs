//! B-trees: tree blocks, verified reads with mirror fallback, search and iteration.

pub mod block;
pub mod reader;

pub use block::{Expect, TreeBlock};
pub use reader::{Cursor, ItemRef, RootPtr, TreeReader};
