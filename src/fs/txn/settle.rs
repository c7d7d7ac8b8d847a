//! What a commit records beside the trees' own changes, brought to a fixed
//! point by [`Transaction::settle`]: the queued extent-tree changes, block
//! group items and free space tree entries of every block group whose
//! allocation changed, chunk, dev item and dev extent items of new chunks,
//! root items of changed trees; and quota groups marked for a rescan.
//!
//! Free space tree bitmaps (the kernel switches fragmented groups to them)
//! are read from nowhere (the extent tree is the truth) and a changed group
//! is written back in extent form with its info flag cleared.

use std::collections::BTreeSet;

use crate::error::{CorruptKind, Error, Result};
use crate::format::encode::{self, RootItemSize};
use crate::format::items::{self, BlockGroupInfo, DevExtentInfo};
use crate::format::*;
use crate::volumes::alloc::uuid_in;

use super::Transaction;

impl Transaction {
    /// Rewrite block group item `used` and the free space tree entries of one group.
    fn update_group(&mut self, start: u64) -> Result<()> {
        let g = self.store.groups.get(&start).cloned().ok_or_else(|| Error::Invalid(format!("no block group at {start}")))?;
        let end = g.start + g.len;
        let mut used = 0u64;
        let mut free: Vec<(u64, u64)> = Vec::new();
        let mut pos = g.start;
        for (&s, &l) in self.store.allocated.range(g.start..end) {
            used += l;
            if s > pos {
                free.push((pos, s - pos));
            }
            pos = pos.max(s + l);
        }
        if pos < end {
            free.push((pos, end - pos));
        }
        // Block group item.
        let bg_tree = if self.store.bg_tree { BLOCK_GROUP_TREE_OBJECTID } else { EXTENT_TREE_OBJECTID };
        let bg_key = Key::new(g.start, BLOCK_GROUP_ITEM_KEY, g.len);
        let new_bg = encode::block_group_item(&BlockGroupInfo { used, chunk_objectid: g.chunk_objectid, flags: g.flags });
        let old = self.get(bg_tree, bg_key)?;
        if old.as_deref() != Some(&new_bg[..]) {
            self.put(bg_tree, bg_key, new_bg)?;
        }
        // Free space tree: diff existing extents against the wanted ones.
        let fst = FREE_SPACE_TREE_OBJECTID;
        // A group the kernel switched to bitmaps is written back as extents
        // (either form is valid as long as the info flag says which): drop
        // its bitmap items first.
        let items = self.range(fst, Key::new(g.start, FREE_SPACE_EXTENT_KEY, 0), Key::new(end - 1, FREE_SPACE_BITMAP_KEY, u64::MAX))?;
        let mut have = BTreeSet::new();
        for (k, _) in items {
            match k.item_type {
                FREE_SPACE_EXTENT_KEY => {
                    have.insert((k.objectid, k.offset));
                }
                FREE_SPACE_BITMAP_KEY => {
                    self.delete(fst, k)?;
                }
                _ => {}
            }
        }
        let want: BTreeSet<(u64, u64)> = free.iter().copied().collect();
        for &(s, l) in have.difference(&want) {
            self.delete(fst, Key::new(s, FREE_SPACE_EXTENT_KEY, l))?;
        }
        for &(s, l) in want.difference(&have) {
            self.insert(fst, Key::new(s, FREE_SPACE_EXTENT_KEY, l), Vec::new())?;
        }
        let info_key = Key::new(g.start, FREE_SPACE_INFO_KEY, g.len);
        let info = encode::free_space_info(want.len() as u32, 0);
        let old = self.get(fst, info_key)?;
        if old.as_deref() != Some(&info[..]) {
            self.put(fst, info_key, info)?;
        }
        Ok(())
    }

    /// Record chunks planned since the last call: chunk item, dev items and
    /// dev extents (the block group item and free space entries follow from
    /// the group being dirty).
    fn insert_pending_chunks(&mut self) -> Result<bool> {
        let plans = std::mem::take(&mut self.store.pending_chunks);
        if plans.is_empty() {
            return Ok(false);
        }
        let chunk_tree_uuid = self.store.fmt.chunk_tree_uuid;
        for plan in plans {
            let info = plan.info(uuid_in(&self.store.devs), self.store.fs.sectorsize);
            self.insert(
                CHUNK_TREE_OBJECTID,
                Key::new(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, plan.logical),
                encode::chunk_item(&info)?,
            )?;
            for &(devid, phys) in &plan.stripes {
                let de = DevExtentInfo::of_chunk(plan.logical, plan.stripe_size, chunk_tree_uuid);
                self.insert(DEV_TREE_OBJECTID, Key::new(devid, DEV_EXTENT_KEY, phys), encode::dev_extent(&de))?;
                let item =
                    self.store.dev_items.get_mut(&devid).ok_or_else(|| {
                        Error::corrupt(CorruptKind::MissingItem, format!("devid {devid}"), "no dev item in the chunk tree")
                    })?;
                item.bytes_used = (item.bytes_used.get() + plan.stripe_size).into();
            }
            let devids: BTreeSet<u64> = plan.stripes.iter().map(|s| s.0).collect();
            for devid in devids {
                let item = self.store.dev_items[&devid];
                self.put(CHUNK_TREE_OBJECTID, Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, devid), encode::dev_item(&item))?;
            }
        }
        Ok(true)
    }

    /// Write changed tree roots into their root items.
    fn update_root_items(&mut self) -> Result<bool> {
        let mut changed = false;
        let ids: Vec<u64> = self.trees.keys().copied().filter(|&id| id != ROOT_TREE_OBJECTID).collect();
        for id in ids {
            let root = match self.trees.get(&id) {
                Some(t) => t.root(),
                None => continue,
            };
            let Some((key, mut ri)) = self.root_items.get(&id).cloned() else { continue };
            let delta = self.store.used_delta.remove(&id).unwrap_or(0);
            if delta == 0 && ri.bytenr.get() == root.bytenr && ri.level == root.level && ri.generation.get() == root.generation {
                continue;
            }
            // bytes_used counts the tree's blocks; the kernel keeps it up to
            // date block by block and sizes its global reserve from it, so a
            // stale value (worse, one it later drives below zero) makes it
            // fail with ENOSPC.
            ri.bytes_used = ri.bytes_used.get().saturating_add_signed(delta).into();
            ri.bytenr = root.bytenr.into();
            ri.level = root.level;
            ri.generation = root.generation.into();
            ri.generation_v2 = root.generation.into();
            if id == FS_TREE_OBJECTID || id >= FIRST_FREE_OBJECTID {
                ri.ctransid = self.transid().into();
                ri.ctime = self.now;
            }
            // Keep the stored size (v1 root items stay v1).
            let old = self
                .get(ROOT_TREE_OBJECTID, key)?
                .ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, format!("root item {key}"), "vanished"))?;
            self.put(ROOT_TREE_OBJECTID, key, encode::root_item(&ri, RootItemSize::of_len(old.len())))?;
            self.root_items.insert(id, (key, ri));
            changed = true;
        }
        Ok(changed)
    }

    /// Bring extent tree, block groups, free space tree and root items to a
    /// fixed point (each update may COW blocks and queue more updates).
    pub(crate) fn settle(&mut self) -> Result<()> {
        self.store.metadata_headroom()?;
        for _ in 0..200 {
            let mut busy = self.insert_pending_chunks()?;
            busy |= self.apply_log()?;
            let groups = std::mem::take(&mut self.store.dirty_groups);
            for g in &groups {
                self.update_group(*g)?;
                busy = true;
            }
            busy |= self.update_root_items()?;
            if !busy && self.store.log.is_empty() && self.store.dirty_groups.is_empty() && self.store.pending_chunks.is_empty() {
                return Ok(());
            }
        }
        Err(Error::Invalid("transaction bookkeeping does not converge".into()))
    }

    /// Quota groups count each subvolume's referenced and exclusive bytes;
    /// keeping them exact needs every changed extent's owners walked, which
    /// btrs does not do. Like the kernel when it cannot account an operation,
    /// the counts are marked inconsistent (kept, with their limits) until
    /// `btrfs quota rescan` recounts them; the kernel and `btrfs check`
    /// accept that state.
    pub(super) fn mark_qgroups_inconsistent(&mut self) -> Result<()> {
        if self.store.fs.root_item(QUOTA_TREE_OBJECTID)?.is_none() {
            return Ok(());
        }
        let key = Key::new(0, QGROUP_STATUS_KEY, 0);
        let Some(body) = self.get(QUOTA_TREE_OBJECTID, key)? else {
            return Err(Error::corrupt(CorruptKind::MissingItem, "quota tree", "no qgroup status item"));
        };
        let mut st = items::parse_qgroup_status(&body)?;
        let flags = st.flags.get();
        if flags & QGROUP_STATUS_FLAG_ON == 0 || flags & QGROUP_STATUS_FLAG_INCONSISTENT != 0 {
            return Ok(());
        }
        st.flags = (flags | QGROUP_STATUS_FLAG_INCONSISTENT).into();
        st.generation = self.transid().into();
        // Keep the stored size (32 bytes without simple quotas' enable_gen).
        self.put(QUOTA_TREE_OBJECTID, key, encode::qgroup_status_item(&st, body.len()))?;
        self.store.fs.warn("quota group counts are now marked inconsistent; run `btrfs quota rescan` on the mounted filesystem".into());
        Ok(())
    }
}
