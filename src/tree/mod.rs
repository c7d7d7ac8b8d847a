//! B-trees: tree blocks, verified reads with mirror fallback, search and iteration.

pub mod block;
pub mod builder;
pub mod checker;
pub mod cow;
pub mod leaf;
pub mod reader;

pub use block::{Expect, TreeBlock};
pub use reader::{Cursor, ItemRef, RootPtr, TreeReader};
