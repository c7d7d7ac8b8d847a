//! Inode items inside a transaction: read, stored, stamped as changed;
//! and how messages name an inode.

use crate::error::{Error, Result};
use crate::format::*;
use crate::format::{encode, items};

use super::Transaction;

impl Transaction {
    pub(crate) fn read_inode(&mut self, root: u64, ino: u64) -> Result<InodeItem> {
        let data = self.get(root, Key::new(ino, INODE_ITEM_KEY, 0))?.ok_or_else(|| Error::NotFound(format!("inode {root}:{ino}")))?;
        Ok(items::read_prefix::<InodeItem>(&data, "inode item")?.0)
    }

    pub(crate) fn put_inode(&mut self, root: u64, ino: u64, item: &InodeItem) -> Result<()> {
        self.put(root, Key::new(ino, INODE_ITEM_KEY, 0), encode::inode_item(item))?;
        Ok(())
    }

    /// Stamp an inode as changed by this transaction.
    pub(super) fn touch(&self, it: &mut InodeItem, mtime: bool) {
        it.transid = self.transid().into();
        it.sequence = (it.sequence.get() + 1).into();
        it.ctime = self.now;
        if mtime {
            it.mtime = self.now;
        }
    }

    /// How messages name an inode: the path a command gave for it, when it
    /// said (see [`Transaction::name_inode`]), else its tree and number.
    pub(crate) fn inode_label(&self, root: u64, ino: u64) -> String {
        match self.names.get(&(root, ino)) {
            Some(p) => p.clone(),
            None => format!("inode {root}/{ino}"),
        }
    }

    /// Remember the path a command named an inode by, for messages.
    pub(crate) fn name_inode(&mut self, root: u64, ino: u64, path: crate::fs::path::ImagePath<'_>) {
        self.names.insert((root, ino), path.to_string());
    }
}
