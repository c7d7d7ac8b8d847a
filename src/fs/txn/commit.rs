//! The commit. Its order: every dirty tree block to every mirror, fsync
//! every image, then the superblocks (all copies that fit, generation + 1,
//! backup roots rotated), fsync again. A crash before the superblock write
//! leaves the old superblock pointing at untouched blocks.
//!
//! A long operation commits in steps ([`Transaction::commit_and_continue`]):
//! what each step freed is held for the readers of older generations.

use zerocopy::IntoBytes;

use crate::error::Result;
use crate::format::superblock::{seal_super, BackupTrees, TreeRootRef};
use crate::format::*;
use crate::fs::Filesystem;
use crate::tree::RootPtr;

use super::readers::InPlace;
use super::Transaction;

impl Transaction {
    /// Write everything and the superblocks. Consumes the transaction.
    pub fn commit(self) -> Result<()> {
        self.commit_keep().map(drop)
    }

    /// Commit; the warnings gathered on the way (devices that failed a read,
    /// quota accounting left to a rescan).
    pub(crate) fn commit_with_warnings(self) -> Result<Vec<String>> {
        let fs = self.commit_keep()?;
        Ok(fs.take_warnings().into_iter().map(|w| w.0).collect())
    }

    /// Commit, then start the next transaction on the same (still locked)
    /// devices: long operations commit in steps so their memory stays
    /// bounded, each step crash-safe on its own.
    pub(crate) fn commit_and_continue(mut self) -> Result<Transaction> {
        let now = self.now;
        let names = std::mem::take(&mut self.names);
        // What this transaction freed stays unused while readers of older
        // generations remain (decided when the next one begins).
        let transid = self.transid();
        let mut held = std::mem::take(&mut self.store.held);
        for (&start, &len) in &self.store.pinned {
            held.ranges.insert(start, len);
            held.freed_in.insert(start, transid);
        }
        let mut next = Transaction::begin_holding(self.commit_keep()?, held)?;
        next.now = now;
        next.names = names;
        Ok(next)
    }

    /// Commit and hand back the filesystem, now at the new generation (its
    /// devices still locked).
    pub(crate) fn commit_keep_fs(self) -> Result<Filesystem> {
        self.commit_keep()
    }

    /// Commit and hand back the filesystem, now at the new generation.
    fn commit_keep(mut self) -> Result<Filesystem> {
        // No root may point at data before every bio writing it is done.
        if let Some(mut dw) = self.direct.take() {
            dw.finish()?;
        }
        if self.trees.values().any(|t| t.is_dirty()) {
            self.mark_qgroups_inconsistent()?;
        }
        self.settle()?;
        let vol = self.store.fs.volume();
        let mut blocks = Vec::new();
        for t in self.trees.values() {
            blocks.extend(t.dirty_blocks(&self.store)?);
        }
        // Nothing changed: no new generation (a superblock generation newer
        // than its root block's would not mount).
        if blocks.is_empty() {
            if self.in_place != InPlace::Unmarked {
                vol.mark_in_place(false)?;
            }
            return Ok(self.store.fs);
        }
        // 1. Tree blocks to every mirror.
        for (logical, bytes) in &blocks {
            let copies = vol.num_copies(*logical)?;
            for m in 0..copies {
                vol.write_copy(*logical, bytes, m)?;
            }
        }
        vol.sync_all()?;
        // 2. Superblocks.
        let root = self.trees.get(&ROOT_TREE_OBJECTID).map(|t| t.root()).unwrap_or(self.store.fs.tree_root(ROOT_TREE_OBJECTID)?);
        let transid = self.transid();
        let mut sb = self.store.fs.sb;
        // Sum of block group `used`: every extent the extent tree lists
        // (chunk tree blocks included), pinned ones not.
        let used: u64 = self.store.allocated.values().sum::<u64>();
        let old_gen = sb.generation.get();
        sb.generation = transid.into();
        sb.root = root.bytenr.into();
        sb.root_level = root.level;
        sb.bytes_used = used.into();
        if let Some(total) = self.total_bytes {
            sb.total_bytes = total.into();
        }
        if sb.uuid_tree_generation.get() == old_gen {
            sb.uuid_tree_generation = transid.into();
        }
        if sb.cache_generation.get() == old_gen {
            sb.cache_generation = transid.into();
        }
        if let Some(t) = self.trees.get(&CHUNK_TREE_OBJECTID) {
            let c = t.root();
            sb.chunk_root = c.bytenr.into();
            sb.chunk_root_level = c.level;
            sb.chunk_root_generation = c.generation.into();
        }
        self.fill_backup(&mut sb, root)?;
        let csum = self.store.fs.csum;
        for dev in vol.devices.values() {
            // A device whose dev item this transaction removed (`device
            // remove`) is no device of the filesystem at this generation.
            let Some(item) = self.store.dev_items.get(&dev.devid) else { continue };
            let mut s = sb;
            s.dev_item = dev.sb.dev_item;
            s.dev_item.bytes_used = item.bytes_used;
            s.dev_item.total_bytes = item.total_bytes;
            for &off in SUPER_MIRROR_OFFSETS.iter() {
                // The device's size, not its image file's: as the kernel,
                // and so a grown file gets its copies (see `resize`).
                if !crate::volumes::device::super_copy_in_use(off, s.dev_item.total_bytes.get()) {
                    break;
                }
                s.bytenr = off.into();
                seal_super(&mut s, csum);
                dev.write_all_at(off, s.as_bytes())?;
            }
        }
        vol.sync_all()?;
        // Readers waiting for the bytes overwritten in place to be part of a
        // commit can open this one.
        if self.in_place != InPlace::Unmarked {
            vol.mark_in_place(false)?;
        }
        let mut fs = self.store.fs;
        fs.committed(sb)?;
        Ok(fs)
    }

    fn fill_backup(&self, sb: &mut SuperBlock, root: RootPtr) -> Result<()> {
        // The kernel rotates through the four slots; the next slot after the
        // newest one gets this commit (`SuperBlock::record_backup_roots`).
        let ptr = |id: u64| -> Result<RootPtr> {
            match self.trees.get(&id) {
                Some(t) => Ok(t.root()),
                None => self.store.fs.tree_root(id),
            }
        };
        let ext = ptr(EXTENT_TREE_OBJECTID)?;
        let fst = ptr(FS_TREE_OBJECTID)?;
        let dev = ptr(DEV_TREE_OBJECTID)?;
        let csum = ptr(CSUM_TREE_OBJECTID)?;
        let r = |p: RootPtr| TreeRootRef { bytenr: p.bytenr, generation: p.generation, level: p.level };
        // The chunk root and sizes come from `sb`, already set.
        sb.record_backup_roots(&BackupTrees { tree: r(root), extent: r(ext), fs: r(fst), dev: r(dev), csum: r(csum) });
        Ok(())
    }
}
