//! `dump-super` and `dump-tree`: print superblocks and tree blocks the way
//! `btrfs inspect-internal dump-super -f` and `dump-tree` (btrfs-progs 6.2) do.
//!
//! Output follows btrfs-progs line for line where btrfs-progs prints something
//! (same field names, order, indentation and number formats), so the two can be
//! diffed. Where btrfs-progs prints nothing for an item (dev replace, verity,
//! unknown types) btrs prints a short decoded form or a hex dump. Nothing here
//! stops at damaged bytes: an item that does not decode prints an `ERROR:` line
//! and a hex dump of its body; a tree block that cannot be read prints an
//! `ERROR:` line naming it, and the dump goes on with the rest.
//!
//! Differences from btrfs-progs that remain on purpose:
//! - times are printed in UTC (btrfs-progs uses the local time zone; they agree
//!   under `TZ=UTC`);
//! - no `btrfs-progs vX.Y` banner line;
//! - a superblock copy with bad magic is dumped anyway after its `ERROR:` line
//!   (btrfs-progs wants `--force` for that);
//! - `dump_tree(Some(id))` for an id without a ROOT_ITEM prints the totals, as
//!   btrfs-progs does, and leaves a warning naming the tree;
//! - blocks that cannot be read are named on standard output, where the
//!   dump goes on (btrfs-progs writes to standard error or skips them).
//!
//! One file per job: `super_block` prints superblocks (text and JSON),
//! `tree` chooses the trees and walks them, `block` prints one tree block,
//! `item` hands an item body to the printer of its family (`item_inode`,
//! `item_root`, `item_extent`, `item_volume`), `body` reads structures out
//! of item bodies; `names` spells ids, keys and flags the progs way (from
//! the tables of `format::types`) and `text` spells bytes and times.

use crate::error::Error;
use crate::fs::Filesystem;

/// Append formatted text to a byte buffer (writing to a `Vec` cannot fail).
macro_rules! w {
    ($buf:expr, $($arg:tt)*) => {{
        let _ = write!($buf, $($arg)*);
    }};
}

fn out_err(e: std::io::Error) -> Error {
    Error::io("<output>", "write", e)
}

/// What printing a tree block needs to know about the filesystem.
#[derive(Clone, Copy, Debug)]
pub struct DumpCtx {
    pub nodesize: u32,
    pub sectorsize: u32,
    pub csum_size: usize,
    /// `--csum-headers`: print each block's stored checksum.
    pub csum_headers: bool,
    /// `--csum-items`: print every checksum of csum items.
    pub csum_items: bool,
    /// `--hide-names`: names and xattr values print as HIDDEN.
    pub hide_names: bool,
}

impl DumpCtx {
    pub(crate) fn of(fs: &Filesystem) -> DumpCtx {
        DumpCtx {
            nodesize: fs.reader.nodesize,
            sectorsize: fs.sectorsize,
            csum_size: fs.csum.size(),
            csum_headers: false,
            csum_items: false,
            hide_names: false,
        }
    }
}

mod block;
mod body;
mod item;
mod item_extent;
mod item_inode;
mod item_root;
mod item_volume;
mod names;
mod super_block;
#[cfg(test)]
mod test_support;
mod text;
mod tree;

pub use block::print_block;
pub use item::print_item;
pub use super_block::{dump_super, Copies};
pub(crate) use text::utc_datetime;
pub use tree::{dump_tree, dump_tree_with, DumpTreeOptions, Traversal};
