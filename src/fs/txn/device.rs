//! Device sizes: what `btrs resize` records, as the kernel's
//! btrfs_grow_device and btrfs_shrink_device do: the device's dev item in the
//! chunk tree, its superblock's copy, and the superblock's total_bytes.

use crate::error::{CorruptKind, Error, Result};
use crate::format::encode;
use crate::format::*;

use super::Transaction;

impl Transaction {
    /// Make devid `devid` `size` bytes long. The caller has made sure the
    /// image holds `size` bytes (growing) and that no dev extent reaches past
    /// it (shrinking).
    pub(crate) fn set_device_size(&mut self, devid: u64, size: u64) -> Result<()> {
        let item = self
            .store
            .dev_items
            .get_mut(&devid)
            .ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, format!("devid {devid}"), "no dev item in the chunk tree"))?;
        let old = item.total_bytes.get();
        item.total_bytes = size.into();
        let item = *item;
        self.put(CHUNK_TREE_OBJECTID, Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, devid), encode::dev_item(&item))?;
        let total = self.total_bytes.unwrap_or(self.store.fs.sb.total_bytes.get());
        let total = total.checked_sub(old).and_then(|t| t.checked_add(size)).ok_or_else(|| {
            Error::corrupt(CorruptKind::Superblock, "superblock total_bytes", format!("{total} does not hold devid {devid}'s {old}"))
        })?;
        self.total_bytes = Some(total);
        if let Some(d) = self.store.devs.iter_mut().find(|d| d.devid == devid) {
            d.total_bytes = size;
        }
        Ok(())
    }
}
