//! Re-striping a chunk in place of its logical range: the one primitive of
//! `device remove`, `balance --convert` and `resize` below the last stripe.
//!
//! Offline nothing else writes, so a chunk can keep its logical addresses
//! and only change where its stripes lie (other devices, lower offsets, more
//! or fewer copies): the extent, csum and fs trees, which address it
//! logically, stay as they are (the kernel's relocation moves extents to new
//! logical addresses instead, hence its reloc trees). The order makes it
//! crash-safe: every used extent is copied to the new stripes, which lie in
//! space the committed dev tree lists as free; then the chunk item, dev
//! extents, dev items, block group flags and (system chunks) the
//! superblock's sys_chunk_array change in this transaction, whose commit
//! flushes the copies before any superblock names the new mapping. A crash
//! before that leaves the old mapping over untouched stripes.
//!
//! What is copied is verified on the way: a tree block from a copy whose
//! checksum, address and fsid hold; a data sector from a copy matching its
//! checksum. New copy k takes old copy k (mod their number), so copies
//! that differ where nothing can tell which is right (nodatasum) keep their
//! difference for `scrub` to report; dropping copies that differ there is
//! refused rather than guessed.

use crate::error::{CorruptKind, Error, Result};
use crate::format::encode;
use crate::format::items::{self, DevExtentInfo};
use crate::format::*;
use crate::tree::{Expect, TreeBlock};
use crate::volumes::alloc::{uuid_in, ChunkPlan};
use crate::volumes::MapEntry;

use super::Transaction;

/// Most bytes of a data extent copied at once.
const PIECE: u64 = 1024 * 1024;

/// What re-striping one chunk did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Restriped {
    pub logical: u64,
    pub length: u64,
    pub from: String,
    pub to: String,
    /// Bytes written to new stripes (each copy counted).
    pub bytes_copied: u64,
    /// Sectors or tree blocks whose copy that was to be taken failed its
    /// check and was taken from another copy instead.
    pub repaired: u64,
}

impl Transaction {
    /// Whether `plan`'s stripes may cover the superblock copies they do:
    /// nothing is allocated at the logical addresses over them.
    pub(crate) fn supers_clear(&self, plan: &ChunkPlan) -> Result<bool> {
        let info = plan.info(uuid_in(&self.store.devs), self.store.fs.sectorsize);
        self.store.supers_clear(&MapEntry::new(plan.logical, info)?)
    }

    /// Give the chunk at `plan.logical` the stripes of `plan` (same logical
    /// range; see the module). Call it first in a transaction, once: the
    /// copy reads what the last commit holds.
    pub(crate) fn restripe(&mut self, plan: &ChunkPlan) -> Result<Restriped> {
        if self.trees.values().any(|t| t.is_dirty()) || self.direct.is_some() {
            return Err(Error::Internal("a chunk is re-striped only at the start of a transaction".into()));
        }
        let vol = self.store.fs.volume();
        if let Some(&d) = vol.missing.iter().next() {
            return Err(Error::Devices(format!(
                "devid {d} is missing: moving stripes needs every device (rebuild it with `btrs replace` first)"
            )));
        }
        if let Some(&d) = vol.stale.keys().next() {
            return Err(Error::Devices(format!("{}: rebuild it with `btrs scrub --repair` before moving stripes", vol.stale_text(d))));
        }
        let old = vol.chunks.lookup(plan.logical)?;
        if old.logical != plan.logical || old.chunk.length != plan.length {
            return Err(Error::Internal(format!("re-stripe plan for {} does not match its chunk", plan.logical)));
        }
        let info = plan.info(uuid_in(&self.store.devs), self.store.fs.sectorsize);
        let new = MapEntry::new(plan.logical, info.clone())?;
        let mut done = Restriped {
            logical: plan.logical,
            length: plan.length,
            from: old.profile.to_string(),
            to: plan.profile.to_string(),
            ..Restriped::default()
        };
        if !self.store.supers_clear(&new)? {
            return Err(Error::Internal(format!("new stripes of the chunk at {} cover a superblock copy under used space", plan.logical)));
        }
        self.copy_chunk(&old, &new, &mut done)?;
        self.record_restripe(&old, plan, info)?;
        Ok(done)
    }

    /// Copy every extent the committed extent tree lists in the chunk to the
    /// new stripes that differ from the old ones.
    fn copy_chunk(&self, old: &MapEntry, new: &MapEntry, done: &mut Restriped) -> Result<()> {
        let fs = &self.store.fs;
        let end = old.end();
        let ns = u64::from(fs.sb.nodesize.get());
        let root = fs.tree_root(EXTENT_TREE_OBJECTID)?;
        let mut c = fs.reader.seek(&root, Key::new(old.logical, 0, 0))?;
        while let Some(it) = c.next_item()? {
            let k = it.key;
            if k.objectid >= end {
                break;
            }
            let (len, tree_block) = match k.item_type {
                METADATA_ITEM_KEY => (ns, true),
                EXTENT_ITEM_KEY => {
                    let (ei, _) = items::read_prefix::<ExtentItem>(it.data(), "extent item")?;
                    (k.offset, ei.flags.get() & EXTENT_FLAG_TREE_BLOCK != 0)
                }
                _ => continue,
            };
            if k.objectid < old.logical || k.objectid.checked_add(len).is_none_or(|e| e > end) {
                return Err(Error::corrupt(
                    CorruptKind::MissingItem,
                    format!("extent {k}"),
                    format!("crosses the edge of the chunk at {} ({} bytes)", old.logical, old.chunk.length),
                ));
            }
            if tree_block {
                self.copy_tree_block(old, new, k.objectid, len, done)?;
            } else {
                let mut pos = k.objectid;
                let stop = k.objectid.saturating_add(len);
                while pos < stop {
                    let n = (stop - pos).min(PIECE);
                    self.copy_data(old, new, pos, n, done)?;
                    pos += n;
                }
            }
        }
        Ok(())
    }

    /// The copies `new` has at `logical` that are not where one of `old`'s
    /// copies is (a kept stripe already holds its bytes, and is never
    /// written: the last commit still reads it).
    fn moved_copies(&self, old: &MapEntry, new: &MapEntry, logical: u64, len: usize) -> Result<Vec<usize>> {
        let vol = self.store.fs.volume();
        let olds = (0..old.num_copies()).map(|m| vol.segments_on(Some(old), logical, len, m)).collect::<Result<Vec<_>>>()?;
        let mut out = Vec::new();
        for k in 0..new.num_copies() {
            let to = vol.segments_on(Some(new), logical, len, k)?;
            if !olds.contains(&to) {
                out.push(k);
            }
        }
        Ok(out)
    }

    fn copy_tree_block(&self, old: &MapEntry, new: &MapEntry, logical: u64, len: u64, done: &mut Restriped) -> Result<()> {
        let fs = &self.store.fs;
        let vol = fs.volume();
        let n = usize::try_from(len).map_err(|_| Error::Invalid("tree block size".into()))?;
        let targets = self.moved_copies(old, new, logical, n)?;
        if targets.is_empty() {
            return Ok(());
        }
        let fsid = fs.sb.metadata_fsid();
        let expect = Expect { level: None, generation: None, max_generation: Some(fs.sb.generation.get()) };
        let mut copies: Vec<Option<Vec<u8>>> = Vec::new();
        let mut why = Vec::new();
        for m in 0..old.num_copies() {
            let mut buf = vec![0u8; n];
            let got = vol
                .read_copy(logical, &mut buf, m)
                .map_err(|e| e.to_string())
                .and_then(|()| TreeBlock::parse(logical, buf.clone(), fs.csum, &fsid, expect).map(|_| ()).map_err(|p| p.to_string()));
            match got {
                Ok(()) => copies.push(Some(buf)),
                Err(e) => {
                    why.push(format!("copy {}: {e}", m + 1));
                    copies.push(None);
                }
            }
        }
        let Some(any_good) = copies.iter().flatten().next().cloned() else {
            return Err(Error::corrupt(
                CorruptKind::Unreadable,
                format!("tree block {logical}"),
                format!("no copy verifies ({}); nothing was moved", why.join("; ")),
            ));
        };
        for k in targets {
            let own = copies.get(k % copies.len().max(1)).and_then(|c| c.as_ref());
            if own.is_none() {
                done.repaired += 1;
            }
            vol.write_copy_on(new, logical, own.unwrap_or(&any_good), k)?;
            done.bytes_copied += len;
        }
        Ok(())
    }

    fn copy_data(&self, old: &MapEntry, new: &MapEntry, logical: u64, len: u64, done: &mut Restriped) -> Result<()> {
        let fs = &self.store.fs;
        let vol = fs.volume();
        let n = usize::try_from(len).map_err(|_| Error::Invalid("extent piece size".into()))?;
        let targets = self.moved_copies(old, new, logical, n)?;
        if targets.is_empty() {
            return Ok(());
        }
        let ss = fs.sectorsize as usize;
        let csums = fs.data_csums(logical, len)?;
        let copies: Vec<Option<Vec<u8>>> = (0..old.num_copies())
            .map(|m| {
                let mut buf = vec![0u8; n];
                vol.read_copy(logical, &mut buf, m).ok().map(|()| buf)
            })
            .collect();
        if copies.iter().all(Option::is_none) {
            return Err(Error::Devices(format!("data at logical {logical}: no copy reads; nothing was moved")));
        }
        // Per sector, which old copies hold good bytes (checksum matches, or
        // no checksum and the copy read).
        let sectors = n.div_ceil(ss);
        let good = |m: usize, i: usize| -> bool {
            let Some(Some(buf)) = copies.get(m) else { return false };
            let Some(bytes) = buf.get(i * ss..((i + 1) * ss).min(n)) else { return false };
            match csums.get(i).copied().flatten() {
                Some(want) => fs.csum.matches(&fs.csum.compute(bytes), &want),
                None => true,
            }
        };
        // Fewer copies than before: a sector without a checksum whose copies
        // differ would lose one of its versions.
        if new.num_copies() < old.num_copies() {
            for i in 0..sectors {
                if csums.get(i).copied().flatten().is_some() {
                    continue;
                }
                let range = i * ss..((i + 1) * ss).min(n);
                let mut versions = copies.iter().flatten().map(|b| b.get(range.clone()));
                let first = versions.next().flatten();
                if versions.any(|v| v != first) {
                    return Err(Error::Invalid(format!(
                        "data sector at logical {} has no checksum and its {} copies differ: which is right cannot be told, \
                         and {} copies cannot keep them all; choose one with `btrs scrub --repair --prefer-mirror N` first",
                        logical + (i * ss) as u64,
                        old.num_copies(),
                        new.num_copies()
                    )));
                }
            }
        }
        for k in targets {
            let own = k % copies.len().max(1);
            let mut out = vec![0u8; n];
            for i in 0..sectors {
                let range = i * ss..((i + 1) * ss).min(n);
                let src = if good(own, i) {
                    own
                } else {
                    done.repaired += 1;
                    (0..copies.len()).find(|&m| good(m, i)).ok_or_else(|| {
                        Error::corrupt(
                            CorruptKind::Unreadable,
                            format!("data sector at logical {}", logical + (i * ss) as u64),
                            "no copy matches its checksum (`btrs scrub` lists it); nothing was moved",
                        )
                    })?
                };
                let bytes = copies.get(src).and_then(|c| c.as_ref()).and_then(|b| b.get(range.clone())).unwrap_or_default();
                out.get_mut(range).unwrap_or_default().copy_from_slice(bytes);
            }
            vol.write_copy_on(new, logical, &out, k)?;
            done.bytes_copied += len;
        }
        Ok(())
    }

    /// The trees' side of a re-striped chunk, and the live map.
    fn record_restripe(&mut self, old: &MapEntry, plan: &ChunkPlan, info: items::ChunkInfo) -> Result<()> {
        let old_ss = old.stripe_size()?;
        let old_stripes: Vec<(u64, u64)> = old.chunk.stripes.iter().map(|s| (s.devid, s.offset)).collect();
        let same_size = old_ss == plan.stripe_size;
        let gone: Vec<(u64, u64)> = old_stripes.iter().copied().filter(|s| !same_size || !plan.stripes.contains(s)).collect();
        let added: Vec<(u64, u64)> = plan.stripes.iter().copied().filter(|s| !same_size || !old_stripes.contains(s)).collect();
        self.put(CHUNK_TREE_OBJECTID, Key::new(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, plan.logical), encode::chunk_item(&info)?)?;
        let chunk_tree_uuid = self.store.fmt.chunk_tree_uuid;
        let mut touched = std::collections::BTreeSet::new();
        for &(devid, phys) in &gone {
            if self.delete(DEV_TREE_OBJECTID, Key::new(devid, DEV_EXTENT_KEY, phys))?.is_none() {
                return Err(Error::corrupt(
                    CorruptKind::MissingItem,
                    format!("devid {devid} offset {phys}"),
                    format!("no dev extent for a stripe of the chunk at {}", plan.logical),
                ));
            }
            let item = self.dev_item_mut(devid)?;
            item.bytes_used = item.bytes_used.get().saturating_sub(old_ss).into();
            touched.insert(devid);
        }
        for &(devid, phys) in &added {
            let de = DevExtentInfo::of_chunk(plan.logical, plan.stripe_size, chunk_tree_uuid);
            self.insert(DEV_TREE_OBJECTID, Key::new(devid, DEV_EXTENT_KEY, phys), encode::dev_extent(&de))?;
            let item = self.dev_item_mut(devid)?;
            item.bytes_used = item.bytes_used.get().saturating_add(plan.stripe_size).into();
            touched.insert(devid);
            // Busy for chunks added later in this transaction (the old
            // stripes stay busy too: the last commit still uses them).
            if let Some(d) = self.store.devs.iter_mut().find(|d| d.devid == devid) {
                d.extents.insert(phys, plan.stripe_size);
            }
        }
        for devid in touched {
            let item = *self.dev_item_mut(devid)?;
            self.put(CHUNK_TREE_OBJECTID, Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, devid), encode::dev_item(&item))?;
        }
        let g = self
            .store
            .groups
            .get_mut(&plan.logical)
            .ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, format!("chunk at {}", plan.logical), "no block group item"))?;
        g.flags = plan.flags;
        self.store.dirty_groups.insert(plan.logical);
        // From here on the new mapping serves this process's reads and the
        // commit's writes.
        self.store.exclude_supers_of(&MapEntry::new(plan.logical, info.clone())?)?;
        let vol = self.store.fs.volume();
        vol.chunks.insert(plan.logical, info)?;
        if matches!(plan.profile, Profile::Raid1C3 | Profile::Raid1C4) {
            self.set_incompat(INCOMPAT_RAID1C34);
        }
        if plan.flags & BLOCK_GROUP_SYSTEM != 0 || old.chunk.chunk_type & BLOCK_GROUP_SYSTEM != 0 {
            self.rewrite_sys_chunk_array()?;
        }
        Ok(())
    }

    fn dev_item_mut(&mut self, devid: u64) -> Result<&mut DevItem> {
        self.store
            .dev_items
            .get_mut(&devid)
            .ok_or_else(|| Error::corrupt(CorruptKind::MissingItem, format!("devid {devid}"), "no dev item in the chunk tree"))
    }

    /// The superblock's copy of the system chunks, from the live map.
    fn rewrite_sys_chunk_array(&mut self) -> Result<()> {
        let sys: Vec<(Key, items::ChunkInfo)> = self
            .store
            .fs
            .volume()
            .chunks
            .entries()
            .iter()
            .filter(|e| e.chunk.chunk_type & BLOCK_GROUP_SYSTEM != 0)
            .map(|e| (Key::new(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, e.logical), e.chunk.clone()))
            .collect();
        let bytes = encode::sys_chunk_array(&sys)?;
        let sb = &mut self.store.fs.sb;
        let size = u32::try_from(bytes.len()).map_err(|_| Error::Internal("system chunk array size".into()))?;
        sb.sys_chunk_array = [0; SYSTEM_CHUNK_ARRAY_SIZE];
        sb.sys_chunk_array.get_mut(..bytes.len()).ok_or_else(|| Error::Internal("system chunk array".into()))?.copy_from_slice(&bytes);
        sb.sys_chunk_array_size = size.into();
        Ok(())
    }
}
