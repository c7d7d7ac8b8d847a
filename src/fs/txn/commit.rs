//! The commit. Its order: every dirty tree block to every mirror, fsync
//! every image, then the superblocks (all copies that fit, generation + 1,
//! backup roots rotated), fsync again. A crash before the superblock write
//! leaves the old superblock pointing at untouched blocks.
//!
//! A long operation commits in steps ([`Transaction::commit_and_continue`]):
//! what each step freed is held for the readers of older generations.
//!
//! A long transaction that must stay one commit (a put: on an error nothing
//! is committed) writes its dirty tree blocks out early instead
//! ([`Transaction::write_back_if_over`]), as the kernel writes back dirty
//! metadata: they lie where no committed root reaches, so they change
//! nothing a crash or an abort would leave.

use zerocopy::IntoBytes;

use crate::error::Result;
use crate::format::superblock::{seal_super, BackupTrees, TreeRootRef};
use crate::format::*;
use crate::fs::Filesystem;
use crate::tree::RootPtr;

use super::readers::InPlace;
use super::Transaction;

/// Dirty tree block bytes a transaction holds before
/// [`Transaction::write_back_if_over`] writes them out: the kernel starts
/// writing back dirty metadata at the same mark (BTRFS_DIRTY_METADATA_THRESH).
pub(crate) const WRITE_BACK_BYTES: u64 = 32 << 20;

impl Transaction {
    /// Bound a long transaction's memory: once its trees hold more than
    /// `write_back_at` bytes of dirty blocks, write every one to its address
    /// on every mirror (the commit's flush makes them durable) and forget it;
    /// a tree reads them back when it needs them, and copies one again when
    /// it changes (the copy frees the written block at once: no committed
    /// root reaches it). Whether it wrote. Call it between operations, not
    /// inside `settle` (each write-out makes the next change copy a path
    /// again, which adds back references to settle).
    pub(crate) fn write_back_if_over(&mut self) -> Result<bool> {
        let held: u64 = self.trees.values().map(|t| t.dirty_count() as u64).sum();
        if held.saturating_mul(u64::from(self.store.fs.sb.nodesize.get())) <= self.write_back_at {
            return Ok(false);
        }
        let transid = self.transid();
        for t in self.trees.values_mut() {
            // A tree refused empty waits for the commit, by when it holds
            // items again or the commit refuses it.
            if t.dirty_count() == 0 || t.empty_refused() {
                continue;
            }
            let blocks = t.dirty_blocks(&self.store)?;
            write_tree_blocks(self.store.fs.volume(), &blocks)?;
            t.forget_written();
            self.store.fs.reader.wrote_uncommitted(transid, blocks.iter().map(|b| b.0));
            #[cfg(test)]
            self.written_out.extend(blocks.iter().map(|b| b.0));
        }
        Ok(true)
    }

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
        let write_back_at = self.write_back_at;
        let mut next = Transaction::begin_holding(self.commit_keep()?, held)?;
        next.now = now;
        next.names = names;
        next.write_back_at = write_back_at;
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
        // than its root block's would not mount). Blocks written out early
        // are changes (settle then changed the root items that reach them).
        if blocks.is_empty() && !self.trees.values().any(|t| t.is_dirty()) {
            if self.in_place != InPlace::Unmarked {
                vol.mark_in_place(false)?;
            }
            return Ok(self.store.fs);
        }
        // 1. Tree blocks to every mirror.
        write_tree_blocks(vol, &blocks)?;
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

/// Tree blocks (logical address, bytes) to every mirror.
fn write_tree_blocks(vol: &crate::volumes::Volume, blocks: &[(u64, Vec<u8>)]) -> Result<()> {
    for (logical, bytes) in blocks {
        let copies = vol.num_copies(*logical)?;
        for m in 0..copies {
            vol.write_copy(*logical, bytes, m)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::format::*;
    use crate::fs::txn::Transaction;
    use crate::fs::{Filesystem, InodeId};
    use crate::volumes::OpenOptions;

    /// Blocks written out before the commit are read back, copied again when
    /// changed, and their space taken by other blocks of the same
    /// transaction, which are written out over them: every read sees the
    /// newest block (not one a cache kept from an earlier write-out), and
    /// the commit holds every change; btrfs check agrees.
    #[test]
    fn written_out_blocks_are_read_back_copied_again_and_their_space_reused() {
        let Some((_tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(1, &[]) else { return };
        let o = OpenOptions { image: imgs[0].clone(), devices: imgs.to_vec(), writable: true, ..Default::default() };
        let mut tx = Transaction::begin(Filesystem::open(&o).unwrap()).unwrap();
        tx.write_back_at = 0;
        let top = InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID };
        let value = |i: usize, round: u8| vec![round ^ (i as u8); 900];
        let mut inos = Vec::new();
        for i in 0..300 {
            let ino = tx.create(top, format!("a{i}").as_bytes(), S_IFREG | 0o644, 0).unwrap().ino;
            tx.set_xattr(FS_TREE_OBJECTID, ino, b"user.v", Some(&value(i, 1))).unwrap();
            inos.push(ino);
        }
        assert!(tx.write_back_if_over().unwrap());
        let first: std::collections::HashSet<u64> = tx.written_out.drain(..).collect();
        assert!(first.len() > 20, "{} blocks written out", first.len());
        // Read back (into the cache), then changed: each leaf copied again.
        for (i, &ino) in inos.iter().enumerate() {
            assert_eq!(tx.xattr(FS_TREE_OBJECTID, ino, b"user.v").unwrap(), Some(value(i, 1)));
            tx.set_xattr(FS_TREE_OBJECTID, ino, b"user.v", Some(&value(i, 2))).unwrap();
        }
        // New blocks where the first write-out's blocks were.
        tx.store.restart_allocation();
        for i in 0..300 {
            let ino = tx.create(top, format!("b{i}").as_bytes(), S_IFREG | 0o644, 0).unwrap().ino;
            tx.set_xattr(FS_TREE_OBJECTID, ino, b"user.w", Some(&value(i, 3))).unwrap();
        }
        assert!(tx.write_back_if_over().unwrap());
        let reused = tx.written_out.iter().filter(|a| first.contains(a)).count();
        assert!(reused > 10, "{reused} of {} addresses of the first write-out written again", tx.written_out.len());
        let check = |tx: &mut Transaction| {
            for (i, &ino) in inos.iter().enumerate() {
                assert_eq!(tx.lookup_name(FS_TREE_OBJECTID, top.ino, format!("a{i}").as_bytes()).unwrap(), Some((ino, FT_REG_FILE)));
                assert_eq!(tx.xattr(FS_TREE_OBJECTID, ino, b"user.v").unwrap(), Some(value(i, 2)), "a{i}");
            }
        };
        check(&mut tx);
        tx.commit().unwrap();
        let out = std::process::Command::new("btrfs").args(["check", "--readonly"]).arg(&imgs[0]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut tx = Transaction::begin(Filesystem::open(&o).unwrap()).unwrap();
        check(&mut tx);
        for i in 0..300 {
            let (ino, _) = tx.lookup_name(FS_TREE_OBJECTID, top.ino, format!("b{i}").as_bytes()).unwrap().unwrap();
            assert_eq!(tx.xattr(FS_TREE_OBJECTID, ino, b"user.w").unwrap(), Some(value(i, 3)), "b{i}");
        }
    }
}
