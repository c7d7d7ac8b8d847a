//! File data writes: buffered, direct or of pages handed over, the edge
//! sectors read back, small files inline, NODATACOW overwrites in place,
//! the extents recorded; and truncation.
//!
//! Data is written to its new location (every mirror, from the engine's own
//! buffer, never the caller's) before any item naming it is inserted, so the
//! commit's superblock write is the single point where the change appears.
//! Extents written are regular, inline for a whole small file, and
//! compressed as the kernel compresses them (asked for, or by the inode's
//! flag or property; see `Transaction::compress_policy`). Extents of any
//! kind are trimmed, split and read back for the edge sectors of a write,
//! compressed ones included (decompressed after their checksums pass).

use crate::error::{Error, Result};
use crate::format::items::{self, parse_file_extent, FileExtentKind};
use crate::format::limits;
use crate::format::*;
use crate::fs::direct::{Plain, Source};
use crate::fs::InodeId;
use crate::volumes::bio::Bounce;

use super::extent_io::{plain_recs, Rec};
use super::file_extent::MAX_INLINE;
use super::readers::InPlace;
use super::types::{WriteOpts, WriteReport};
use super::Transaction;

/// The bytes of a write: borrowed from the caller (copied into engine pages
/// before anything is written), or pages the caller hands over.
enum Payload<'a> {
    Borrowed(&'a dyn Source),
    Owned(Bounce),
}

impl Transaction {
    /// Write `data` at byte `offset` of regular file `ino` (buffered: the
    /// bytes are copied into the engine's buffer first, then written).
    pub fn write_at(&mut self, id: InodeId, offset: u64, data: &[u8], opts: &WriteOpts, report: &mut WriteReport) -> Result<()> {
        self.write_impl(id.subvol, id.ino, offset, Payload::Borrowed(&Plain(data)), opts, report, false)
    }

    /// Direct write from a source other threads may be changing: see
    /// the `fs::direct` module. Returns when every bio finished on every
    /// mirror; on any bio error the transaction must be dropped (it would
    /// record extents whose bytes are not all on disk).
    pub fn write_direct(&mut self, id: InodeId, offset: u64, src: &dyn Source, opts: &WriteOpts, report: &mut WriteReport) -> Result<()> {
        self.write_impl(id.subvol, id.ino, offset, Payload::Borrowed(src), opts, report, true)?;
        self.finish_direct()
    }

    /// Write pages the caller hands over (filled, then given up: nobody else
    /// can change them), buffered or `direct`. When they start on a sector
    /// and end on one or past the file's end they are the engine's pages for
    /// this write as they are, with no copy; otherwise they are copied like a
    /// borrowed buffer. Pages from a [`crate::fs::direct::PagePool`] go back
    /// to it once written.
    ///
    /// Direct bios are only queued: they run while the caller prepares its
    /// next pages, and finish before the transaction reads file data back or
    /// commits. A bio error surfaces from a later write or from the commit,
    /// and the transaction then commits nothing.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_owned(
        &mut self,
        root: u64,
        ino: u64,
        offset: u64,
        pages: Bounce,
        direct: bool,
        opts: &WriteOpts,
        report: &mut WriteReport,
    ) -> Result<()> {
        self.write_impl(root, ino, offset, Payload::Owned(pages), opts, report, direct)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_impl(
        &mut self,
        root: u64,
        ino: u64,
        offset: u64,
        payload: Payload<'_>,
        opts: &WriteOpts,
        report: &mut WriteReport,
        direct: bool,
    ) -> Result<()> {
        let mut it = self.read_inode(root, ino)?;
        if it.mode.get() & S_IFMT != S_IFREG {
            return Err(Error::Invalid(format!("inode {ino} is not a regular file")));
        }
        // An append-only file only grows, at its end (the kernel opens it
        // O_APPEND only: no write lands past the end either).
        self.may_change(root, ino, offset == it.size.get())?;
        let src_len = match &payload {
            Payload::Borrowed(s) => s.len(),
            Payload::Owned(p) => p.len(),
        };
        if src_len == 0 {
            return Ok(());
        }
        let ss = self.store.fs.sectorsize as u64;
        limits::check_file_range(offset, src_len as u64)?;
        let end = offset.checked_add(src_len as u64).ok_or_else(|| Error::Invalid("offset overflow".into()))?;
        let b = end.div_ceil(ss) * ss;
        let a = self.first_sector(root, ino, offset, &mut it, opts, report)?;
        let old_size = it.size.get();
        let base = (offset - a) as usize;
        // The engine's own pages: existing bytes of the edge sectors, then the
        // caller's. Pages handed over that cover [a, b) already are them.
        let (bounce, live) = self.engine_pages(root, ino, payload, a, b, offset, end, src_len, old_size)?;
        let buf = bounce.bytes();
        let new_size = old_size.max(end);
        let policy = self.compress_policy(root, ino, &it, opts.compress, direct, report)?;

        // A whole small file, compressed, inline when it fits max_inline (the
        // kernel's compress_file_range tries this first). Not smaller than
        // its bytes: not worth it, and the file is marked as not compressing.
        if let Some(p) = policy.filter(|_| a == 0 && new_size <= ss) {
            if self.write_compressed_inline(root, ino, &mut it, p, buf, new_size, b, src_len, report)? {
                return Ok(());
            }
        }

        // A small file lives inline in its leaf, as the kernel's buffered
        // writes make it (cow_file_range_inline): the whole file under
        // max_inline and one sector. Direct writes never inline.
        if !direct && a == 0 && new_size <= MAX_INLINE && new_size < ss {
            return self.write_inline_file(root, ino, &mut it, buf, new_size, b, src_len, report);
        }

        let nocow = it.flags.get() & INODE_NODATACOW != 0;
        let nosum = it.flags.get() & INODE_NODATASUM != 0 || nocow;
        if nocow && self.try_write_in_place(root, ino, a, buf, opts, report)? {
            report.bytes += src_len as u64;
            if end > old_size {
                it.size = end.into();
            }
            self.touch(&mut it, true);
            self.put_inode(root, ino, &it)?;
            return Ok(());
        }
        // Allocate every piece, write (or, direct, queue) every copy of it,
        // then record it in the trees. Nothing recorded reaches a committed
        // root before every bio finished: the commit waits for them, and a
        // failed one fails it.
        let recs = match policy {
            // The policy is None for direct writes.
            Some(p) => self.write_compressed(root, ino, &mut it, a, buf, new_size, p, opts, report)?,
            None => {
                let pieces = self.alloc_pieces(a, b)?;
                let sums = if direct {
                    self.write_pieces_direct(&pieces, a, bounce, live.map(|src| (src, base)), nosum, opts, report)?
                } else {
                    self.write_pieces_buffered(&pieces, a, bounce.bytes(), nosum, opts, report)?
                };
                plain_recs(&pieces, sums)
            }
        };
        self.record_extents(root, ino, &mut it, a, b, old_size, recs)?;
        report.bytes += src_len as u64;
        if end > old_size {
            it.size = end.into();
        }
        self.touch(&mut it, true);
        self.put_inode(root, ino, &it)?;
        Ok(())
    }

    /// Where a write at `offset` starts: the first sector it touches, or 0
    /// when it joins an inline extent. A write past the end's sector first
    /// zeros the rest of it, and a write past an inline extent's sector
    /// first moves that extent to a regular one (`it` is read again then).
    fn first_sector(
        &mut self,
        root: u64,
        ino: u64,
        offset: u64,
        it: &mut InodeItem,
        opts: &WriteOpts,
        report: &mut WriteReport,
    ) -> Result<u64> {
        let ss = self.store.fs.sectorsize as u64;
        let mut a = offset / ss * ss;
        // A write past the sector the file ends in first zeros the rest of
        // that sector (the kernel's btrfs_truncate_block): bytes stored past
        // the end (an mmap write can leave them) would become file content.
        let size = it.size.get();
        if size % ss != 0 && size.div_ceil(ss) * ss <= a {
            self.write_zeros(root, ino, size, size.div_ceil(ss) * ss, report)?;
            *it = self.read_inode(root, ino)?;
        }
        // An inline extent (always at 0, < 1 sector) becomes part of the new
        // extent when the write starts in its sector; a write further on
        // first moves it to a regular extent of its own sector, or the new
        // extent would start at 0 and hold every byte up to the write.
        if let Some(first) = self.get(root, Key::new(ino, EXTENT_DATA_KEY, 0))? {
            if matches!(parse_file_extent(&first)?.kind, FileExtentKind::Inline { .. }) {
                if offset < ss {
                    a = 0;
                } else {
                    let head = self.read_range(root, ino, 0, ss)?;
                    let mut r = WriteReport::default();
                    self.write_impl(root, ino, 0, Payload::Borrowed(&Plain(&head)), opts, &mut r, false)?;
                    report.bios.extend(r.bios);
                    *it = self.read_inode(root, ino)?;
                }
            }
        }
        Ok(a)
    }

    /// The engine's own pages for the write of `payload` (file bytes
    /// [offset, end), `src_len` of them) over the sectors [a, b): existing
    /// bytes of the edge sectors, then the caller's; and the caller's source
    /// when it was borrowed.
    #[allow(clippy::too_many_arguments)]
    fn engine_pages<'p>(
        &mut self,
        root: u64,
        ino: u64,
        payload: Payload<'p>,
        a: u64,
        b: u64,
        offset: u64,
        end: u64,
        src_len: usize,
        old_size: u64,
    ) -> Result<(Bounce, Option<&'p dyn Source>)> {
        let base = (offset - a) as usize;
        let out = match payload {
            Payload::Owned(mut pages) if a == offset && (end == b || end >= old_size) && (b - a) as usize <= pages.capacity() => {
                pages.set_len((b - a) as usize);
                pages.bytes_mut()[src_len..].fill(0);
                (pages, None)
            }
            payload => {
                let mut bounce = Bounce::zeroed((b - a) as usize);
                let valid_end = old_size.min(b);
                if a < offset && a < old_size {
                    let n = (offset.min(valid_end)) - a;
                    let head = self.read_range(root, ino, a, n)?;
                    bounce.bytes_mut()[..head.len()].copy_from_slice(&head);
                }
                if end < b && end < old_size {
                    let tail = self.read_range(root, ino, end, valid_end - end)?;
                    let s = (end - a) as usize;
                    bounce.bytes_mut()[s..s + tail.len()].copy_from_slice(&tail);
                }
                let live = match payload {
                    Payload::Borrowed(src) => {
                        src.copy_to(0, &mut bounce.bytes_mut()[base..base + src_len]);
                        Some(src)
                    }
                    Payload::Owned(pages) => {
                        bounce.bytes_mut()[base..base + src_len].copy_from_slice(pages.bytes());
                        None
                    }
                };
                (bounce, live)
            }
        };
        Ok(out)
    }

    /// A small file inline in its leaf: the whole file (`new_size` bytes of
    /// `buf`), the extents of [0, b) punched first.
    #[allow(clippy::too_many_arguments)]
    fn write_inline_file(
        &mut self,
        root: u64,
        ino: u64,
        it: &mut InodeItem,
        buf: &[u8],
        new_size: u64,
        b: u64,
        src_len: usize,
        report: &mut WriteReport,
    ) -> Result<()> {
        self.punch(root, ino, 0, b, it)?;
        self.insert_inline(root, ino, &buf[..new_size as usize], new_size, COMPRESS_NONE)?;
        it.nbytes = (it.nbytes.get() + new_size).into();
        report.bytes += src_len as u64;
        it.size = new_size.into();
        self.touch(it, true);
        self.put_inode(root, ino, it)?;
        Ok(())
    }

    /// Record the extents `recs` written for the sectors [a, b) of a file
    /// whose size was `old_size`: what [a, b) held punched out, the hole
    /// before it without NO_HOLES, then checksums, extent items with their
    /// back references, file extent items.
    #[allow(clippy::too_many_arguments)]
    fn record_extents(&mut self, root: u64, ino: u64, it: &mut InodeItem, a: u64, b: u64, old_size: u64, recs: Vec<Rec>) -> Result<()> {
        let ss = self.store.fs.sectorsize as u64;
        // Without NO_HOLES, a gap between the old end and the write is an explicit hole.
        let no_holes = self.store.fs.sb.has_incompat(INCOMPAT_NO_HOLES);
        let old_end = old_size.div_ceil(ss) * ss;
        self.punch(root, ino, a, b, it)?;
        if !no_holes && a > old_end {
            self.insert_extent_item(root, ino, old_end, 0, a - old_end, a - old_end, COMPRESS_NONE)?;
        }
        for r in recs {
            if !r.sums.is_empty() {
                // Checksums from the same engine-owned bytes every mirror got.
                self.insert_csums(r.logical, &r.sums)?;
            }
            self.add_data_extent(r.logical, r.disk_len, root, ino, r.pos)?;
            self.insert_extent_item(root, ino, r.pos, r.logical, r.disk_len, r.len, r.compression)?;
            it.nbytes = (it.nbytes.get() + r.len).into();
        }
        Ok(())
    }

    /// NODATACOW: overwrite in place when [a, a+len) is covered by regular,
    /// uncompressed extents referenced only by this file range. Returns false
    /// when it is not (the caller then COWs, as the kernel falls back).
    fn try_write_in_place(&mut self, root: u64, ino: u64, a: u64, buf: &[u8], opts: &WriteOpts, report: &mut WriteReport) -> Result<bool> {
        // An extent of this transaction may still have direct bios in flight.
        self.finish_direct()?;
        let end = a + buf.len() as u64;
        let exts = self.extents_overlapping(root, ino, a, end)?;
        // A snapshot shares this tree's leaves, not its data extents' refs:
        // an extent made up to the last snapshot of the tree may be another
        // tree's too (the kernel's check_committed_ref, by last_snapshot).
        let last_snapshot = self.root_item_now(root)?.map_or(0, |(_, ri)| ri.last_snapshot.get());
        let mut pos = a;
        let mut plan = Vec::new();
        for (off, d) in &exts {
            let fe = parse_file_extent(d)?;
            let FileExtentKind::Regular { prealloc: false, disk_bytenr, disk_num_bytes, offset, .. } = fe.kind else { return Ok(false) };
            if *off > pos || disk_bytenr == 0 || fe.compression != 0 {
                return Ok(false);
            }
            let key = Key::new(disk_bytenr, EXTENT_ITEM_KEY, disk_num_bytes);
            let Some(body) = self.get(EXTENT_TREE_OBJECTID, key)? else { return Ok(false) };
            let info = items::parse_extent_item(key, &body)?;
            if info.refs != 1 || info.generation <= last_snapshot {
                return Ok(false);
            }
            let to = (off + fe.file_len()).min(end);
            plan.push((disk_bytenr + offset + (pos - off), pos, to));
            pos = to;
        }
        if pos < end {
            return Ok(false);
        }
        // A registered reader reads the committed bytes an in-place write
        // would change under it: copy on write instead while one is there.
        // The mark goes up before the look, so that a reader registering
        // after the look sees the mark and waits for this commit.
        if self.in_place == InPlace::Unmarked {
            self.store.fs.volume().mark_in_place(true)?;
            self.in_place = InPlace::Marked;
        }
        if self.store.fs.volume().oldest_reader(self.transid())?.is_some() {
            if self.in_place == InPlace::Marked {
                self.store.fs.volume().mark_in_place(false)?;
                self.in_place = InPlace::Unmarked;
            }
            return Ok(false);
        }
        self.in_place = InPlace::Written;
        for (logical, from, to) in plan {
            self.write_data(logical, &buf[(from - a) as usize..(to - a) as usize], opts, report)?;
        }
        Ok(true)
    }

    /// Zeros over [from, to) of a file, within the sector its size ends in,
    /// written as any write is: the rest of that sector when the file
    /// shrinks to a size inside it or grows from one (the kernel's
    /// btrfs_truncate_block), so that what it held past the end never
    /// becomes file content.
    fn write_zeros(&mut self, root: u64, ino: u64, from: u64, to: u64, report: &mut WriteReport) -> Result<()> {
        let z = vec![0u8; (to - from) as usize];
        let mut r = WriteReport::default();
        self.write_at(InodeId { subvol: root, ino }, from, &z, &WriteOpts::default(), &mut r)?;
        report.bios.extend(r.bios);
        Ok(())
    }

    /// Set a regular file's size, dropping data past it or extending with a hole.
    pub(crate) fn truncate(&mut self, root: u64, ino: u64, size: u64) -> Result<()> {
        limits::check_file_range(size, 0)?;
        self.may_change(root, ino, false)?;
        let mut it = self.read_inode(root, ino)?;
        if it.mode.get() & S_IFMT != S_IFREG {
            return Err(Error::Invalid(format!("inode {ino} is not a regular file")));
        }
        let ss = self.store.fs.sectorsize as u64;
        let old = it.size.get();
        if size < old {
            let keep = size.div_ceil(ss) * ss;
            // Zero the tail of the last kept sector so a later extension reads
            // zeros (up to the old end: past it the sector holds zeros already,
            // and a last sector ending at 2^63 may not be written to its end).
            if size % ss != 0 {
                self.write_zeros(root, ino, size, keep.min(old), &mut WriteReport::default())?;
                it = self.read_inode(root, ino)?;
            }
            self.punch(root, ino, keep, u64::MAX, &mut it)?;
        } else if size > old && old % ss != 0 {
            // As a write past the end does (see write_impl).
            self.write_zeros(root, ino, old, (old.div_ceil(ss) * ss).min(size), &mut WriteReport::default())?;
            it = self.read_inode(root, ino)?;
        }
        if size > old && !self.store.fs.sb.has_incompat(INCOMPAT_NO_HOLES) {
            let from = old.div_ceil(ss) * ss;
            let to = size.div_ceil(ss) * ss;
            if to > from {
                self.insert_extent_item(root, ino, from, 0, to - from, to - from, COMPRESS_NONE)?;
            }
        }
        it.size = size.into();
        self.touch(&mut it, true);
        self.put_inode(root, ino, &it)
    }
}
