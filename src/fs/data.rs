//! File data: walking extents, reading data with checksum verification and
//! fallback to other copies, decompression, holes.

// Bytes here come from images and users: every sum, index and cast is
// checked, or allowed where it cannot fail with the reason beside it.
#![warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]

use super::{Filesystem, Inode, InodeId};
use crate::error::{CorruptKind, Error, Result};
use crate::format::items::{FileExtent, FileExtentKind};
use crate::format::u64_of;
use crate::format::*;
use crate::volumes::Volume;

/// Bytes of a file handed to a consumer in file order.
#[derive(Debug)]
pub enum FileChunk<'a> {
    Data {
        offset: u64,
        data: &'a [u8],
    },
    /// Reads as zeros: a hole, a prealloc extent, or implicit (NO_HOLES) gaps.
    Hole {
        offset: u64,
        len: u64,
    },
}

/// Largest piece read from disk at once for uncompressed extents.
const READ_PIECE: u64 = 4 << 20;
/// A compressed extent's on-disk size is capped at 128 KiB by the kernel;
/// allow slack but refuse absurd values before allocating.
const MAX_COMPRESSED_DISK: u64 = 1 << 20;

impl Filesystem {
    /// Stream a regular file's content, in order, ending at `inode.size`.
    pub fn read_file(&self, inode: &Inode, sink: &mut dyn FnMut(FileChunk<'_>) -> Result<()>) -> Result<()> {
        self.read_file_as(inode, &format!("inode {}", inode.id), sink)
    }

    /// Like `read_file`, naming the file `label` (usually its path) in
    /// warnings and errors.
    pub fn read_file_as(&self, inode: &Inode, label: &str, sink: &mut dyn FnMut(FileChunk<'_>) -> Result<()>) -> Result<()> {
        let id = label;
        let size = inode.size;
        let nodatasum = inode.flags & INODE_NODATASUM != 0;
        let mut pos = 0u64;
        for (off, fe) in self.file_extents(inode.id)? {
            // Past the size: nothing more to read.
            let Some(left) = size.checked_sub(off).filter(|l| *l > 0) else { break };
            let Some(gap) = off.checked_sub(pos) else {
                return Err(Error::corrupt(
                    CorruptKind::ItemValue,
                    id.to_string(),
                    format!("extent at {off} overlaps the previous one ending at {pos}"),
                ));
            };
            if gap > 0 {
                sink(FileChunk::Hole { offset: pos, len: gap })?;
            }
            let len = fe.file_len().min(left);
            self.read_extent(id, off, len, &fe, nodatasum, sink)?;
            // OK: len <= size - off.
            pos = off.saturating_add(len);
        }
        if let Some(left) = size.checked_sub(pos).filter(|l| *l > 0) {
            sink(FileChunk::Hole { offset: pos, len: left })?;
        }
        Ok(())
    }

    /// A whole file in memory (for small files and tests).
    pub fn read_file_bytes(&self, id: InodeId) -> Result<Vec<u8>> {
        let inode = self.inode(id)?;
        let cap = usize::try_from(inode.size).map_err(|_| Error::Invalid("file too large for memory".into()))?;
        let mut out = Vec::with_capacity(cap.min(1 << 30));
        self.read_file(&inode, &mut |c| {
            match c {
                FileChunk::Data { data, .. } => out.extend_from_slice(data),
                FileChunk::Hole { len, .. } => out.resize(out.len().saturating_add(usize::try_from(len).unwrap_or(usize::MAX)), 0),
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn read_extent(
        &self,
        id: &str,
        off: u64,
        len: u64,
        fe: &FileExtent,
        nodatasum: bool,
        sink: &mut dyn FnMut(FileChunk<'_>) -> Result<()>,
    ) -> Result<()> {
        let at = || format!("{id} file offset {off}");
        if fe.encryption != 0 || fe.other_encoding != 0 {
            return Err(Error::Unsupported(format!("{}: encrypted or encoded extent", at())));
        }
        match &fe.kind {
            FileExtentKind::Inline { data } => {
                let plain;
                let bytes: &[u8] = if fe.compression == COMPRESS_NONE {
                    data
                } else {
                    plain = self.decompress(fe.compression, data, fe.ram_bytes, &at())?;
                    &plain
                };
                let data = bytes.get(..usize::try_from(len).unwrap_or(usize::MAX)).unwrap_or(bytes);
                sink(FileChunk::Data { offset: off, data })?;
                let n = u64_of(data.len());
                if let Some(rest) = len.checked_sub(n).filter(|r| *r > 0) {
                    sink(FileChunk::Hole { offset: off.saturating_add(n), len: rest })?;
                }
                Ok(())
            }
            FileExtentKind::Regular { prealloc, disk_bytenr, disk_num_bytes, offset, .. } => {
                if *prealloc || *disk_bytenr == 0 {
                    return sink(FileChunk::Hole { offset: off, len });
                }
                if fe.compression == COMPRESS_NONE {
                    let mut done = 0u64;
                    while let Some(left) = len.checked_sub(done).filter(|l| *l > 0) {
                        let n = left.min(READ_PIECE);
                        // Both come from the image: a sum past u64 is corrupt, not a wrap.
                        let logical = disk_bytenr.checked_add(*offset).and_then(|x| x.checked_add(done)).ok_or_else(|| {
                            Error::corrupt(CorruptKind::Overflow, at(), format!("disk_bytenr {disk_bytenr} + offset {offset} overflows"))
                        })?;
                        // OK: off + len is at most the file size.
                        let here = off.saturating_add(done);
                        let buf = self.read_data(logical, n, nodatasum, &|l| {
                            // The read is widened to whole sectors: l may lie before `logical`.
                            let file_off = match l.checked_sub(logical) {
                                Some(d) => here.saturating_add(d),
                                None => here.saturating_sub(logical.saturating_sub(l)),
                            };
                            format!("{id} file offset {file_off}")
                        })?;
                        sink(FileChunk::Data { offset: here, data: &buf })?;
                        done = done.saturating_add(n);
                    }
                    Ok(())
                } else {
                    if *disk_num_bytes > MAX_COMPRESSED_DISK || fe.ram_bytes > MAX_COMPRESSED_DISK {
                        return Err(Error::corrupt(
                            CorruptKind::Compressed,
                            at(),
                            format!("compressed extent of {disk_num_bytes} bytes ({} uncompressed) is too large", fe.ram_bytes),
                        ));
                    }
                    let raw = self.read_data(*disk_bytenr, *disk_num_bytes, nodatasum, &|l| {
                        format!("{id} compressed extent at file offset {off} (disk byte {})", l.saturating_sub(*disk_bytenr))
                    })?;
                    let plain = self.decompress(fe.compression, &raw, fe.ram_bytes, &at())?;
                    let start = usize::try_from(*offset).unwrap_or(usize::MAX).min(plain.len());
                    let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX)).min(plain.len());
                    let data = plain.get(start..end).unwrap_or_default();
                    sink(FileChunk::Data { offset: off, data })?;
                    let n = u64_of(data.len());
                    if let Some(rest) = len.checked_sub(n).filter(|r| *r > 0) {
                        sink(FileChunk::Hole { offset: off.saturating_add(n), len: rest })?;
                    }
                    Ok(())
                }
            }
        }
    }

    /// Data checksums for each sector of [logical, logical+len); `None` where the csum tree has none.
    pub(crate) fn data_csums(&self, logical: u64, len: u64) -> Result<Vec<Option<CsumBytes>>> {
        let ss = u64::from(self.sectorsize);
        let nsect = usize::try_from(len.div_ceil(ss)).map_err(|_| Error::Invalid("range too large".into()))?;
        let mut out = vec![None; nsect];
        let root = match self.tree_root(CSUM_TREE_OBJECTID) {
            Ok(r) => r,
            Err(Error::NotFound(_)) => return Ok(out),
            Err(e) => return Err(e),
        };
        let csize = self.csum.size();
        let end = logical.saturating_add(len);
        let mut c = self.reader.seek_le(&root, Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, logical))?;
        while let Some(item) = c.next_item()? {
            let k = item.key;
            if k.objectid != EXTENT_CSUM_OBJECTID || k.item_type != EXTENT_CSUM_KEY {
                if k > Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, end) {
                    break;
                }
                continue;
            }
            if k.offset >= end {
                break;
            }
            let data = item.data();
            if data.len().checked_rem(csize) != Some(0) {
                return Err(Error::corrupt(
                    CorruptKind::ItemSize,
                    format!("csum item {k}"),
                    format!("size {} not a multiple of {csize}", data.len()),
                ));
            }
            for (i, c) in data.chunks_exact(csize).enumerate() {
                let Some(s) = u64_of(i).checked_mul(ss).and_then(|d| k.offset.checked_add(d)) else { break };
                if s >= end {
                    break;
                }
                let Some(rel) = s.checked_sub(logical) else { continue };
                // OK: ss is the sector size, never 0.
                #[allow(clippy::arithmetic_side_effects)]
                let (index, misaligned) = (rel / ss, rel % ss);
                if misaligned == 0 {
                    let mut v = [0u8; CSUM_SIZE];
                    if let (Some(dst), Some(slot)) = (v.get_mut(..csize), usize::try_from(index).ok().and_then(|i| out.get_mut(i))) {
                        dst.copy_from_slice(c);
                        *slot = Some(v);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Read data bytes, verifying every sector they touch against the csum
    /// tree (unless `nodatasum`) and serving bad sectors from another copy.
    /// The read is widened to whole sectors: a checksum covers a whole
    /// sector, whatever part of it the file uses. `describe` turns a logical
    /// address into "which file, which offset" for messages.
    pub(crate) fn read_data(&self, logical: u64, len: u64, nodatasum: bool, describe: &dyn Fn(u64) -> String) -> Result<Vec<u8>> {
        let ss = u64::from(self.sectorsize);
        let end = logical
            .checked_add(len)
            .ok_or_else(|| Error::corrupt(CorruptKind::Overflow, describe(logical), format!("data range {logical}+{len} overflows")))?;
        // OK: ss is the sector size, never 0; the remainder is below logical.
        #[allow(clippy::arithmetic_side_effects)]
        let start = logical - logical % ss;
        let aligned_end = end
            .checked_next_multiple_of(ss)
            .ok_or_else(|| Error::corrupt(CorruptKind::Overflow, describe(logical), format!("data range {logical}+{len} overflows")))?;
        let span = aligned_end.saturating_sub(start);
        let n = usize::try_from(span).map_err(|_| Error::Invalid("read too large".into()))?;
        let mut buf = vec![0u8; n];
        let csums = if nodatasum { None } else { Some(self.data_csums(start, span)?) };
        read_verified(self.volume(), self.csum, ss, start, &mut buf, csums.as_deref(), describe, &mut |w| self.warn(w))?;
        // OK to index: start <= logical <= end <= aligned_end, all within buf.
        let head = usize::try_from(logical.saturating_sub(start)).unwrap_or(0);
        buf.drain(..head);
        buf.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        Ok(buf)
    }
}

/// Fill `buf` (whole sectors from `start`) with verified data. Each piece
/// that stays on one stripe of every copy is read from the first copy that
/// reads, current devices before stale ones; every sector is checked against
/// its checksum in `csums` (one entry per sector; `None` for nodatasum) and a
/// bad one is taken from another copy whose bytes match it, with a warning.
/// A copy on a stale device is served only where a checksum vouches for it.
/// No good copy of a sector: an error, and the caller writes nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn read_verified(
    vol: &Volume,
    csum: CsumType,
    ss: u64,
    start: u64,
    buf: &mut [u8],
    csums: Option<&[Option<CsumBytes>]>,
    describe: &dyn Fn(u64) -> String,
    warn: &mut dyn FnMut(String),
) -> Result<()> {
    let ssz = usize::try_from(ss).map_err(|_| Error::Invalid("sector size".into()))?;
    if start.checked_rem(ss) != Some(0) || buf.len().checked_rem(ssz) != Some(0) {
        return Err(Error::Invalid(format!("verified read at {start} of {} bytes is not whole sectors", buf.len())));
    }
    // Whole sectors at a time: a piece that ends inside a sector (a stripe
    // unit is always whole sectors, so only a damaged chunk does this) is
    // read sector by sector.
    let total = buf.len();
    let mut done = 0usize;
    let mut sector_index = 0usize;
    while let Some(left) = total.checked_sub(done).filter(|l| *l > 0) {
        let pos = start
            .checked_add(u64_of(done))
            .ok_or_else(|| Error::corrupt(CorruptKind::Overflow, describe(start), format!("data range at {start} overflows")))?;
        let (_, contiguous) = vol.chunks.lookup(pos).and_then(|e| e.map(pos)).map_err(|e| e.within(describe(pos)))?;
        let n = usize::try_from(contiguous).unwrap_or(usize::MAX).min(left);
        let sectors = n.checked_div(ssz).unwrap_or(0).max(1);
        let n = sectors.saturating_mul(ssz).min(left);
        let piece = done.checked_add(n).and_then(|end| buf.get_mut(done..end)).ok_or_else(|| Error::Invalid("read piece".into()))?;
        let sums = csums.map(|c| c.get(sector_index..sector_index.saturating_add(sectors)).unwrap_or_default());
        read_piece(vol, csum, ssz, pos, piece, sums, describe, warn)?;
        done = done.saturating_add(n);
        sector_index = sector_index.saturating_add(sectors);
    }
    Ok(())
}

/// [`read_verified`] for a piece that lies on one stripe of each copy.
#[allow(clippy::too_many_arguments)]
fn read_piece(
    vol: &Volume,
    csum: CsumType,
    ssz: usize,
    pos: u64,
    piece: &mut [u8],
    sums: Option<&[Option<CsumBytes>]>,
    describe: &dyn Fn(u64) -> String,
    warn: &mut dyn FnMut(String),
) -> Result<()> {
    let copies = vol.read_order(pos).map_err(|e| e.within(describe(pos)))?;
    // A sector without a checksum can only be taken from a current device.
    let vouched = |i: usize| sums.is_some_and(|s| s.get(i).is_some_and(Option::is_some));
    let all_vouched = sums.is_some_and(|s| s.len().saturating_mul(ssz) >= piece.len() && s.iter().all(Option::is_some));
    let mut base = None;
    let mut last_err = None;
    for c in &copies {
        if c.stale && !all_vouched {
            continue;
        }
        match vol.read_copy(pos, piece, c.mirror) {
            Ok(()) => {
                base = Some(*c);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    // No copy read whole (or only stale ones could): every sector is taken
    // one by one below.
    let mut sector = vec![0u8; ssz];
    for (i, dst) in piece.chunks_mut(ssz).enumerate() {
        let at = pos.saturating_add(u64_of(i.saturating_mul(ssz)));
        let want = sums.and_then(|s| s.get(i).copied().flatten());
        let good = |c: &crate::volumes::ReadCopy, bytes: &[u8]| match want {
            Some(w) => csum.matches(&csum.compute(bytes), &w),
            None => !c.stale,
        };
        if base.is_some_and(|b| good(&b, dst)) {
            continue;
        }
        let mut served = None;
        for c in copies.iter().filter(|c| Some(**c) != base) {
            if c.stale && !vouched(i) {
                continue;
            }
            if vol.read_copy(at, &mut sector, c.mirror).is_ok() && good(c, &sector) {
                dst.copy_from_slice(&sector);
                served = Some(*c);
                break;
            }
        }
        match (served, base) {
            (Some(c), Some(b)) => {
                let bad = vol.locate(at, b.mirror).ok();
                let why = if want.is_some() { "csum mismatch" } else { "stale device" };
                warn(format!(
                    "{}: {why} on copy {}{}; read copy {} (devid {}) instead",
                    describe(at),
                    b.mirror.saturating_add(1),
                    bad.map(|p| format!(" (devid {} physical {})", p.devid, p.physical)).unwrap_or_default(),
                    c.mirror.saturating_add(1),
                    c.devid
                ));
            }
            (Some(_), None) => {}
            (None, _) => {
                let locs: Vec<String> = copies
                    .iter()
                    .filter_map(|c| {
                        vol.locate(at, c.mirror).ok().map(|p| {
                            format!(
                                "copy {} devid {} physical {}{}",
                                c.mirror.saturating_add(1),
                                p.devid,
                                p.physical,
                                if c.stale { " (stale device)" } else { "" }
                            )
                        })
                    })
                    .collect();
                if want.is_some() {
                    return Err(Error::corrupt(
                        CorruptKind::Unreadable,
                        describe(at),
                        format!("data csum mismatch at logical {at} on every copy ({})", locs.join(", ")),
                    ));
                }
                if copies.iter().any(|c| c.stale) {
                    let lagging = copies.iter().any(|c| c.lagging);
                    return Err(Error::Devices(format!(
                        "{}: logical {at}: no current device holds a readable copy ({}), and a copy on a stale \
                         device cannot be trusted without a checksum: bring back the current image of that device{}",
                        describe(at),
                        locs.join(", "),
                        if lagging {
                            " (or, if a crash between a commit's superblock writes left it behind, use --accept-lagging)"
                        } else {
                            ""
                        }
                    )));
                }
                return Err(last_err.unwrap_or_else(|| Error::Devices(format!("logical {at}: no copy readable"))).within(describe(at)));
            }
        }
    }
    Ok(())
}
