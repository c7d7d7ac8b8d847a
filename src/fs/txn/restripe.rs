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

/// What moving chunks reports as it goes (a progress bar's feed).
#[derive(Debug)]
pub enum MoveEvent<'a> {
    /// Before the first of a run of moves: how many chunks will move, and
    /// how many bytes are used in them.
    Planned { chunks: u64, used: u64 },
    /// This many more bytes of used space in the moving chunk were handled.
    Handled(u64),
    /// A chunk moved, and the move was committed.
    Moved(&'a Restriped),
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
    pub(crate) fn restripe(&mut self, plan: &ChunkPlan, on: &mut dyn FnMut(MoveEvent<'_>)) -> Result<Restriped> {
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
        self.copy_chunk(&old, &new, &mut done, on)?;
        self.record_restripe(&old, plan, info)?;
        Ok(done)
    }

    /// Before anything moves: whether the chunk at `logical` can go to
    /// `copies` copies without losing a version of a sector that has no
    /// checksum (its copies differ, and nothing tells which is right).
    pub(crate) fn check_drop(&self, logical: u64, copies: usize) -> Result<()> {
        let old = self.store.fs.volume().chunks.lookup(logical)?;
        if copies >= old.num_copies() {
            return Ok(());
        }
        self.each_extent(&old, &mut |pos, len, tree_block| {
            if !tree_block {
                self.differing_unchecksummed(&old, pos, len, copies)?;
            }
            Ok(())
        })
    }

    /// Refuse when a sector without a checksum in [logical, +len) has copies
    /// that differ (or one that does not read), going to `copies` copies.
    fn differing_unchecksummed(&self, old: &MapEntry, logical: u64, len: u64, copies: usize) -> Result<()> {
        let fs = &self.store.fs;
        let n = usize::try_from(len).map_err(|_| Error::Invalid("extent piece size".into()))?;
        let csums = fs.data_csums(logical, len)?;
        if csums.iter().all(Option::is_some) {
            return Ok(());
        }
        self.refuse_differing(old, logical, n, &self.read_all(old, logical, n), &csums, copies)
    }

    /// [`Self::differing_unchecksummed`] on the `n` bytes of each old copy
    /// already read (`all`) and their sectors' checksums.
    fn refuse_differing(
        &self,
        old: &MapEntry,
        logical: u64,
        n: usize,
        all: &[Option<Vec<u8>>],
        csums: &[Option<CsumBytes>],
        copies: usize,
    ) -> Result<()> {
        let ss = self.store.fs.sectorsize as usize;
        for i in (0..n.div_ceil(ss)).filter(|&i| csums.get(i).copied().flatten().is_none()) {
            let r = i * ss..((i + 1) * ss).min(n);
            let versions: Vec<Option<&[u8]>> = all.iter().map(|c| c.as_ref().and_then(|b| b.get(r.clone()))).collect();
            if versions.iter().any(Option::is_none) || versions.windows(2).any(|w| w[0] != w[1]) {
                return Err(Error::Invalid(format!(
                    "data sector at logical {} has no checksum and its {} copies differ (or one does not read): which is \
                     right cannot be told, and {copies} copies cannot keep them all; nothing was moved (`btrs scrub` lists \
                     it; `btrs scrub --repair --prefer-mirror N` makes the copies agree)",
                    logical + (i * ss) as u64,
                    old.num_copies(),
                )));
            }
        }
        Ok(())
    }

    /// Every extent the committed extent tree lists in the chunk, in pieces
    /// of at most [`PIECE`] bytes (tree blocks whole): (start, length, tree block).
    fn each_extent(&self, old: &MapEntry, f: &mut dyn FnMut(u64, u64, bool) -> Result<()>) -> Result<()> {
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
                f(k.objectid, len, true)?;
            } else {
                let mut pos = k.objectid;
                let stop = k.objectid.saturating_add(len);
                while pos < stop {
                    let n = (stop - pos).min(PIECE);
                    f(pos, n, false)?;
                    pos += n;
                }
            }
        }
        Ok(())
    }

    /// Copy every extent the committed extent tree lists in the chunk to the
    /// new stripes that differ from the old ones.
    fn copy_chunk(&self, old: &MapEntry, new: &MapEntry, done: &mut Restriped, on: &mut dyn FnMut(MoveEvent<'_>)) -> Result<()> {
        self.each_extent(old, &mut |pos, len, tree_block| {
            if tree_block {
                self.copy_tree_block(old, new, pos, len, done)?;
            } else {
                self.copy_data(old, new, pos, len, done)?;
            }
            on(MoveEvent::Handled(len));
            Ok(())
        })
    }

    /// Bytes the committed extent tree lists as used in the chunk at `logical`.
    pub(crate) fn chunk_used(&self, logical: u64) -> Result<u64> {
        let old = self.store.fs.volume().chunks.lookup(logical)?;
        let mut used = 0u64;
        self.each_extent(&old, &mut |_, len, _| {
            used = used.saturating_add(len);
            Ok(())
        })?;
        Ok(used)
    }

    /// For each copy of `new` at `logical`: the old copy it is (a kept
    /// stripe: same place), or None (a new place, to be written).
    fn copy_sources(&self, old: &MapEntry, new: &MapEntry, logical: u64, len: usize) -> Result<Vec<Option<usize>>> {
        let vol = self.store.fs.volume();
        let olds = (0..old.num_copies()).map(|m| vol.segments_on(Some(old), logical, len, m)).collect::<Result<Vec<_>>>()?;
        (0..new.num_copies())
            .map(|k| {
                let to = vol.segments_on(Some(new), logical, len, k)?;
                Ok(olds.iter().position(|o| *o == to))
            })
            .collect()
    }

    /// Read every old copy of `len` bytes at `logical` (None: unreadable).
    fn read_all(&self, old: &MapEntry, logical: u64, n: usize) -> Vec<Option<Vec<u8>>> {
        let vol = self.store.fs.volume();
        (0..old.num_copies())
            .map(|m| {
                let mut buf = vec![0u8; n];
                vol.read_copy(logical, &mut buf, m).ok().map(|()| buf)
            })
            .collect()
    }

    /// A tree block: each new copy in a new place gets old copy k (mod
    /// their number) if it verifies, else one that does; a kept copy that
    /// fails is rewritten in place from one that verifies (a repair, as
    /// scrub's: the stripe the last commit reads gets better, not worse),
    /// since the copies dropped may hold the only good one.
    fn copy_tree_block(&self, old: &MapEntry, new: &MapEntry, logical: u64, len: u64, done: &mut Restriped) -> Result<()> {
        let fs = &self.store.fs;
        let vol = fs.volume();
        let n = usize::try_from(len).map_err(|_| Error::Invalid("tree block size".into()))?;
        let sources = self.copy_sources(old, new, logical, n)?;
        let dropping = new.num_copies() < old.num_copies();
        if sources.iter().all(Option::is_some) && !dropping {
            return Ok(());
        }
        let fsid = fs.sb.metadata_fsid();
        let expect = Expect { level: None, generation: None, max_generation: Some(fs.sb.generation.get()) };
        let mut why = Vec::new();
        let copies: Vec<Option<Vec<u8>>> = self
            .read_all(old, logical, n)
            .into_iter()
            .enumerate()
            .map(|(m, c)| {
                let Some(buf) = c else {
                    why.push(format!("copy {}: read failed", m + 1));
                    return None;
                };
                match TreeBlock::parse(logical, buf.clone(), fs.csum, &fsid, expect) {
                    Ok(_) => Some(buf),
                    Err(p) => {
                        why.push(format!("copy {}: {p}", m + 1));
                        None
                    }
                }
            })
            .collect();
        let Some(any_good) = copies.iter().flatten().next().cloned() else {
            return Err(Error::corrupt(
                CorruptKind::Unreadable,
                format!("tree block {logical}"),
                format!("no copy verifies ({}); nothing was moved", why.join("; ")),
            ));
        };
        for (k, src) in sources.iter().enumerate() {
            match src {
                Some(j) if copies.get(*j).is_some_and(Option::is_some) => {}
                Some(_) => {
                    done.repaired += 1;
                    vol.write_copy_on(new, logical, &any_good, k)?;
                }
                None => {
                    let own = copies.get(k % copies.len().max(1)).and_then(|c| c.as_ref());
                    if own.is_none() {
                        done.repaired += 1;
                    }
                    vol.write_copy_on(new, logical, own.unwrap_or(&any_good), k)?;
                    done.bytes_copied += len;
                }
            }
        }
        Ok(())
    }

    /// Data: each new copy in a new place gets old copy k (mod their
    /// number), a sector that fails its checksum taken from a copy that
    /// matches it; a kept copy's failing sectors are rewritten in place the
    /// same way. Going to fewer copies, sectors without a checksum whose
    /// copies differ are refused first: one version would be lost, and
    /// nothing tells which is right.
    fn copy_data(&self, old: &MapEntry, new: &MapEntry, logical: u64, len: u64, done: &mut Restriped) -> Result<()> {
        let fs = &self.store.fs;
        let vol = fs.volume();
        let n = usize::try_from(len).map_err(|_| Error::Invalid("extent piece size".into()))?;
        let sources = self.copy_sources(old, new, logical, n)?;
        let dropping = new.num_copies() < old.num_copies();
        if sources.iter().all(Option::is_some) && !dropping {
            return Ok(());
        }
        let ss = fs.sectorsize as usize;
        let csums = fs.data_csums(logical, len)?;
        let copies = self.read_all(old, logical, n);
        if copies.iter().all(Option::is_none) {
            return Err(Error::Devices(format!("data at logical {logical}: no copy reads; nothing was moved")));
        }
        let sectors = n.div_ceil(ss);
        let range = |i: usize| i * ss..((i + 1) * ss).min(n);
        if dropping {
            self.refuse_differing(old, logical, n, &copies, &csums, new.num_copies())?;
        }
        // Whether old copy m holds good bytes for sector i.
        let good = |m: usize, i: usize| -> bool {
            let Some(Some(buf)) = copies.get(m) else { return false };
            let Some(bytes) = buf.get(range(i)) else { return false };
            match csums.get(i).copied().flatten() {
                Some(want) => fs.csum.matches(&fs.csum.compute(bytes), &want),
                None => true,
            }
        };
        for (k, src) in sources.iter().enumerate() {
            let base = src.unwrap_or(k % copies.len().max(1));
            let mut out = copies.get(base).cloned().flatten().unwrap_or_else(|| vec![0u8; n]);
            let mut fixed = 0u64;
            for i in (0..sectors).filter(|&i| !good(base, i)) {
                let from = (0..copies.len()).find(|&m| good(m, i)).ok_or_else(|| {
                    Error::corrupt(
                        CorruptKind::Unreadable,
                        format!("data sector at logical {}", logical + (i * ss) as u64),
                        "no copy matches its checksum (`btrs scrub` lists it); nothing was moved",
                    )
                })?;
                let bytes = copies.get(from).and_then(|c| c.as_ref()).and_then(|b| b.get(range(i))).unwrap_or_default();
                out.get_mut(range(i)).unwrap_or_default().copy_from_slice(bytes);
                fixed += 1;
            }
            done.repaired += fixed;
            if src.is_none() || fixed > 0 {
                vol.write_copy_on(new, logical, &out, k)?;
            }
            if src.is_none() {
                done.bytes_copied += len;
            }
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

/// The smallest logical step a chunk of this shape can be cut at: whole
/// 64 KiB units on every data stripe.
pub(crate) fn cut_unit_of(profile: Profile, stripes: usize, sub_stripes: u16) -> u64 {
    let n = u64::try_from(stripes).unwrap_or(1).max(1);
    let data_stripes = match profile {
        Profile::Raid0 => n,
        Profile::Raid10 => n / u64::from(sub_stripes.max(1)),
        _ => 1,
    };
    data_stripes.max(1).saturating_mul(STRIPE_LEN)
}

/// Cutting and removing chunks, which moves nothing: what makes room when a
/// whole chunk has none to go to (the kernel's relocation makes new chunks
/// of any size and deletes empty ones; here a chunk keeps its logical range,
/// so a large one is cut in two at a point no extent spans, and an empty
/// one is removed).
impl Transaction {
    /// Whether nothing is allocated (or pinned, or held for readers) in
    /// [start, start+len).
    pub(crate) fn range_is_free(&self, start: u64, len: u64) -> bool {
        !self.store.used_in(start, len)
    }

    /// Where [start, start+len) can be cut nearest its middle, in whole
    /// `unit`s from `start`, at least `min` bytes each side, where no extent
    /// spans the cut: None when nowhere.
    pub(crate) fn cut_point(&self, start: u64, len: u64, unit: u64, min: u64) -> Option<u64> {
        let unit = unit.max(1);
        let side = min.max(unit).div_ceil(unit);
        let units = len / unit;
        if units < side.saturating_mul(2) {
            return None;
        }
        let mid = units / 2;
        for i in 0..=mid {
            for u in [mid.checked_add(i), mid.checked_sub(i)].into_iter().flatten() {
                if u >= side && u <= units - side {
                    let at = start + u * unit;
                    if !self.store.spans(at) {
                        return Some(at);
                    }
                }
            }
        }
        None
    }

    /// Cut the chunk at `logical` in two at `at` (see [`Self::cut_point`]):
    /// two chunk items, dev extents and block groups over the same stripes.
    pub(crate) fn split_chunk(&mut self, logical: u64, at: u64) -> Result<()> {
        if self.trees.values().any(|t| t.is_dirty()) || self.direct.is_some() {
            return Err(Error::Internal("a chunk is cut only at the start of a transaction".into()));
        }
        let e = self.store.fs.volume().chunks.lookup(logical)?;
        let unit = cut_unit_of(e.profile, e.chunk.stripes.len(), e.chunk.sub_stripes);
        if e.logical != logical || at <= logical || at >= e.end() || (at - logical) % unit != 0 || self.store.spans(at) {
            return Err(Error::Internal(format!("chunk at {logical} cannot be cut at {at}")));
        }
        let ss = e.stripe_size()?;
        let data_stripes = unit / STRIPE_LEN;
        let ss1 = (at - logical) / data_stripes;
        let ss2 = ss.checked_sub(ss1).ok_or_else(|| Error::Internal("cut past the stripe".into()))?;
        let mut first = e.chunk.clone();
        first.length = at - logical;
        let mut second = e.chunk.clone();
        second.length = e.end() - at;
        for s in &mut second.stripes {
            s.offset = s.offset.checked_add(ss1).ok_or_else(|| Error::Internal("stripe offset".into()))?;
        }
        self.put(CHUNK_TREE_OBJECTID, Key::new(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, logical), encode::chunk_item(&first)?)?;
        self.insert(CHUNK_TREE_OBJECTID, Key::new(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, at), encode::chunk_item(&second)?)?;
        let chunk_tree_uuid = self.store.fmt.chunk_tree_uuid;
        for s in &e.chunk.stripes {
            let a = DevExtentInfo::of_chunk(logical, ss1, chunk_tree_uuid);
            self.put(DEV_TREE_OBJECTID, Key::new(s.devid, DEV_EXTENT_KEY, s.offset), encode::dev_extent(&a))?;
            let b = DevExtentInfo::of_chunk(at, ss2, chunk_tree_uuid);
            self.insert(DEV_TREE_OBJECTID, Key::new(s.devid, DEV_EXTENT_KEY, s.offset + ss1), encode::dev_extent(&b))?;
            if let Some(d) = self.store.devs.iter_mut().find(|d| d.devid == s.devid) {
                d.extents.insert(s.offset, ss1);
                d.extents.insert(s.offset + ss1, ss2);
            }
        }
        // Block groups: the old item goes; settle writes both new ones and
        // their free space (the free space info is keyed by the group).
        let g = self.store.groups.get(&logical).cloned().ok_or_else(|| Error::Internal(format!("no block group at {logical}")))?;
        self.delete_group_items(&g)?;
        self.store.groups.insert(logical, super::space::Group { len: at - logical, ..g.clone() });
        self.store.groups.insert(at, super::space::Group { start: at, len: g.start + g.len - at, ..g });
        self.store.dirty_groups.insert(logical);
        self.store.dirty_groups.insert(at);
        let vol = self.store.fs.volume();
        vol.chunks.insert(logical, first.clone())?;
        vol.chunks.insert(at, second.clone())?;
        self.store.exclude_supers_of(&MapEntry::new(logical, first)?)?;
        self.store.exclude_supers_of(&MapEntry::new(at, second)?)?;
        if e.chunk.chunk_type & BLOCK_GROUP_SYSTEM != 0 {
            self.rewrite_sys_chunk_array()?;
        }
        Ok(())
    }

    /// Remove the chunk at `logical`, which nothing uses (see
    /// [`Self::range_is_free`]): its chunk item, dev extents, block group
    /// and free space items; its stripes are free space after the commit.
    pub(crate) fn drop_empty_chunk(&mut self, logical: u64) -> Result<()> {
        if self.trees.values().any(|t| t.is_dirty()) || self.direct.is_some() {
            return Err(Error::Internal("a chunk is removed only at the start of a transaction".into()));
        }
        let e = self.store.fs.volume().chunks.lookup(logical)?;
        if e.logical != logical || self.store.used_in(e.logical, e.chunk.length) {
            return Err(Error::Internal(format!("chunk at {logical} is not empty")));
        }
        let ss = e.stripe_size()?;
        // Out of the allocator first: the tree edits below allocate blocks
        // (a system chunk's, the chunk tree's), and one in the chunk being
        // removed would be written nowhere.
        let g = self.store.groups.remove(&logical).ok_or_else(|| Error::Internal(format!("no block group at {logical}")))?;
        self.store.dirty_groups.remove(&logical);
        self.delete(CHUNK_TREE_OBJECTID, Key::new(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, logical))?;
        let mut touched = std::collections::BTreeSet::new();
        for s in &e.chunk.stripes {
            self.delete(DEV_TREE_OBJECTID, Key::new(s.devid, DEV_EXTENT_KEY, s.offset))?;
            let item = self.dev_item_mut(s.devid)?;
            item.bytes_used = item.bytes_used.get().saturating_sub(ss).into();
            touched.insert(s.devid);
        }
        for devid in touched {
            let item = *self.dev_item_mut(devid)?;
            self.put(CHUNK_TREE_OBJECTID, Key::new(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, devid), encode::dev_item(&item))?;
        }
        self.delete_group_items(&g)?;
        if self.store.used_in(e.logical, e.chunk.length) || self.store.dirty_groups.contains(&logical) {
            return Err(Error::Internal(format!("the removed chunk at {logical} got used")));
        }
        self.store.fs.volume().chunks.remove(logical)?;
        if e.chunk.chunk_type & BLOCK_GROUP_SYSTEM != 0 {
            self.rewrite_sys_chunk_array()?;
        }
        Ok(())
    }

    /// Delete a block group's item and its free space tree items.
    fn delete_group_items(&mut self, g: &super::space::Group) -> Result<()> {
        let bg_tree = if self.store.bg_tree { BLOCK_GROUP_TREE_OBJECTID } else { EXTENT_TREE_OBJECTID };
        self.delete(bg_tree, Key::new(g.start, BLOCK_GROUP_ITEM_KEY, g.len))?;
        let fst = FREE_SPACE_TREE_OBJECTID;
        if self.store.fs.has_tree(fst)? {
            let end = g.start.saturating_add(g.len);
            let items = self.range(fst, Key::new(g.start, 0, 0), Key::new(end.saturating_sub(1), u8::MAX, u64::MAX))?;
            for (k, _) in items {
                if matches!(k.item_type, FREE_SPACE_INFO_KEY | FREE_SPACE_EXTENT_KEY | FREE_SPACE_BITMAP_KEY) {
                    self.delete(fst, k)?;
                }
            }
        }
        Ok(())
    }
}
