//! The device set in the trees: sizes (what `btrs resize` records, as the
//! kernel's btrfs_grow_device and btrfs_shrink_device do: the device's dev
//! item in the chunk tree, its superblock's copy, and the superblock's
//! total_bytes), and devices joining or leaving (btrfs_init_new_device,
//! btrfs_rm_device): their dev items, num_devices and total_bytes.

use crate::error::{CorruptKind, Error, Result};
use crate::format::encode;
use crate::format::*;

use crate::volumes::alloc::DevSpace;

use super::Transaction;

impl Transaction {
    /// The devices' dev items as this transaction has them.
    pub(crate) fn dev_items(&self) -> &std::collections::BTreeMap<u64, DevItem> {
        &self.store.dev_items
    }

    /// The devices' space: size and the stripes on them (the committed
    /// ones, and those this transaction added).
    pub(crate) fn dev_space(&self) -> &[DevSpace] {
        &self.store.devs
    }

    /// Make devid `devid` `size` bytes long. The caller has made sure the
    /// image holds `size` bytes (growing) and that no dev extent reaches past
    /// it (shrinking).
    pub(crate) fn set_device_size(&mut self, devid: u64, size: u64) -> Result<()> {
        let item = self.dev_item_mut(devid)?;
        let old = item.total_bytes.get();
        item.total_bytes = size.into();
        let item = *item;
        self.put(CHUNK_TREE_OBJECTID, Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, devid), encode::dev_item(&item))?;
        self.change_total(size, old)?;
        if let Some(d) = self.store.devs.iter_mut().find(|d| d.devid == devid) {
            d.total_bytes = size;
        }
        Ok(())
    }

    /// A device's dev item as this transaction has it.
    pub(super) fn dev_item_mut(&mut self, devid: u64) -> Result<&mut DevItem> {
        self.store
            .dev_items
            .get_mut(&devid)
            .ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, format!("devid {devid}"), "no dev item in the chunk tree"))
    }

    /// The superblock's total_bytes, `remove` bytes of devices fewer and
    /// `add` more.
    fn change_total(&mut self, add: u64, remove: u64) -> Result<()> {
        let total = self.total_bytes.unwrap_or(self.store.fs.sb.total_bytes.get());
        let total = total.checked_sub(remove).and_then(|t| t.checked_add(add)).ok_or_else(|| {
            Error::corrupt(CorruptKind::Superblock, "superblock total_bytes", format!("{total} + {add} - {remove} is out of range"))
        })?;
        self.total_bytes = Some(total);
        Ok(())
    }

    /// Enter a device the volume opened as added (`OpenOptions::added`):
    /// its dev item, num_devices and total_bytes. The commit writes its
    /// superblocks with the others'.
    pub(crate) fn add_device(&mut self, item: DevItem) -> Result<()> {
        let devid = item.devid.get();
        if self.store.dev_items.contains_key(&devid) {
            return Err(Error::Internal(format!("devid {devid} is already in the chunk tree")));
        }
        self.insert(CHUNK_TREE_OBJECTID, Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, devid), encode::dev_item(&item))?;
        self.store.dev_items.insert(devid, item);
        self.store.devs.push(DevSpace { devid, total_bytes: item.total_bytes.get(), uuid: item.uuid, extents: Default::default() });
        self.change_total(item.total_bytes.get(), 0)?;
        let sb = &mut self.store.fs.sb;
        sb.num_devices = sb.num_devices.get().saturating_add(1).into();
        Ok(())
    }

    /// Take devid `devid` out of the filesystem: its dev item and dev stats
    /// go, num_devices and total_bytes shrink. The caller has moved every
    /// stripe off it; its superblocks are not written from this commit on.
    pub(crate) fn remove_device(&mut self, devid: u64) -> Result<()> {
        if self.store.devs.iter().any(|d| d.devid == devid && !d.extents.is_empty()) {
            return Err(Error::Internal(format!("devid {devid} still holds stripes")));
        }
        let item = *self.dev_item_mut(devid)?;
        self.store.dev_items.remove(&devid);
        self.delete(CHUNK_TREE_OBJECTID, Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, devid))?;
        self.delete(DEV_TREE_OBJECTID, Key::new(DEV_STATS_OBJECTID, PERSISTENT_ITEM_KEY, devid))?;
        self.store.devs.retain(|d| d.devid != devid);
        self.change_total(0, item.total_bytes.get())?;
        let sb = &mut self.store.fs.sb;
        sb.num_devices = sb.num_devices.get().saturating_sub(1).into();
        Ok(())
    }
}
