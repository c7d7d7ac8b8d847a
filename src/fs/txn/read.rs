//! File data read back inside a transaction, as its trees have it (the
//! edge sectors of a write, readers of a running transaction): every
//! sector verified against this transaction's checksums, compressed
//! extents decompressed.

use crate::error::{CorruptKind, Error, Result};
use crate::format::items::{self, parse_file_extent, FileExtentKind};
use crate::format::*;

use super::Transaction;

impl Transaction {
    /// Current content of [start, start+len) of a file (holes read as zero),
    /// from the transaction's view of its extents. Every data sector read is
    /// verified against its checksum (as this transaction's csum tree has
    /// it) and a bad copy is replaced by a good one: a read-modify-write must
    /// never seal a damaged sector under a new, valid checksum. (Public for
    /// readers of a running transaction, the model tests among them.)
    pub(crate) fn read_range(&mut self, root: u64, ino: u64, start: u64, len: u64) -> Result<Vec<u8>> {
        // Queued direct bios may be writing exactly these sectors.
        self.finish_direct()?;
        let nodatasum = self.read_inode(root, ino)?.flags.get() & INODE_NODATASUM != 0;
        let ss = u64::from(self.store.fs.sectorsize);
        let n = usize::try_from(len).map_err(|_| Error::Invalid("read too large".into()))?;
        let mut out = vec![0u8; n];
        let end = start.checked_add(len).ok_or_else(|| Error::Invalid(format!("range {start}+{len} overflows")))?;
        for (off, d) in self.extents_overlapping(root, ino, start, end)? {
            let fe = parse_file_extent(&d)?;
            let from = off.max(start);
            let to = off.saturating_add(fe.file_len()).min(end);
            let dst = out.get_mut((from - start) as usize..(to - start) as usize).ok_or_else(|| Error::Invalid("range".into()))?;
            match fe.kind {
                FileExtentKind::Inline { data } if fe.compression == 0 => {
                    let src = data.get((from - off) as usize..(to - off) as usize).unwrap_or_default();
                    dst[..src.len()].copy_from_slice(src);
                }
                FileExtentKind::Regular { prealloc: false, disk_bytenr, offset, .. } if disk_bytenr != 0 && fe.compression == 0 => {
                    let at = disk_bytenr.checked_add(offset).and_then(|x| x.checked_add(from - off)).ok_or_else(|| {
                        Error::corrupt(CorruptKind::Overflow, format!("inode {root}/{ino} extent at {off}"), "disk address overflows")
                    })?;
                    // Whole sectors around the bytes wanted.
                    let a = at - at % ss;
                    let b = (at + dst.len() as u64).next_multiple_of(ss);
                    let mut sectors = vec![0u8; (b - a) as usize];
                    let csums = if nodatasum { None } else { Some(self.data_csums(a, b - a)?) };
                    let label = self.inode_label(root, ino);
                    let describe = |l: u64| {
                        let file_off = if l >= at { from.saturating_add(l - at) } else { from.saturating_sub(at - l) };
                        format!("{label} file offset {file_off}")
                    };
                    let fs = &self.store.fs;
                    crate::fs::data::read_verified(fs.volume(), fs.csum, ss, a, &mut sectors, csums.as_deref(), &describe, &mut |w| {
                        fs.warn(w)
                    })?;
                    let skip = (at - a) as usize;
                    dst.copy_from_slice(&sectors[skip..skip + dst.len()]);
                }
                FileExtentKind::Regular { .. } if fe.compression == 0 => {}
                FileExtentKind::Regular { prealloc: false, disk_bytenr, disk_num_bytes, offset, .. } if disk_bytenr != 0 => {
                    // The whole compressed extent, its checksums (over the
                    // compressed bytes) verified, then decompressed.
                    let plain = self.read_compressed(root, ino, off, &fe, disk_bytenr, disk_num_bytes, nodatasum)?;
                    let skip = offset.checked_add(from - off).and_then(|x| usize::try_from(x).ok()).unwrap_or(usize::MAX);
                    let src = plain.get(skip..).unwrap_or_default();
                    let n = src.len().min(dst.len());
                    dst[..n].copy_from_slice(&src[..n]);
                }
                FileExtentKind::Regular { .. } => {}
                FileExtentKind::Inline { data } => {
                    let label = self.inode_label(root, ino);
                    let plain = self.store.fs.decompress(fe.compression, &data, fe.ram_bytes, &format!("{label} inline extent"))?;
                    let src = plain.get((from - off) as usize..).unwrap_or_default();
                    let n = src.len().min(dst.len());
                    dst[..n].copy_from_slice(&src[..n]);
                }
            }
        }
        Ok(out)
    }

    /// The decompressed bytes (`ram_bytes` of them) of the compressed extent
    /// at `disk_bytenr` that the file extent item `fe` at file offset `off`
    /// names; every sector read is verified against the checksums this
    /// transaction's csum tree holds for the compressed bytes first, as
    /// [`Self::read_range`] does for plain data.
    #[allow(clippy::too_many_arguments)]
    fn read_compressed(
        &mut self,
        root: u64,
        ino: u64,
        off: u64,
        fe: &items::FileExtent,
        disk_bytenr: u64,
        disk_num_bytes: u64,
        nodatasum: bool,
    ) -> Result<Vec<u8>> {
        let label = self.inode_label(root, ino);
        let at = format!("{label} compressed extent at file offset {off}");
        let ss = u64::from(self.store.fs.sectorsize);
        let max = crate::format::compress::MAX_COMPRESSED as u64;
        if disk_num_bytes == 0 || disk_num_bytes > max || disk_num_bytes % ss != 0 || disk_bytenr % ss != 0 {
            return Err(Error::corrupt(
                CorruptKind::Compressed,
                at,
                format!("compressed extent at {disk_bytenr} of {disk_num_bytes} bytes"),
            ));
        }
        if fe.ram_bytes > crate::format::compress::MAX_DECOMPRESSED_LEN as u64 {
            return Err(Error::corrupt(CorruptKind::Compressed, at, format!("ram_bytes {} of a compressed extent", fe.ram_bytes)));
        }
        let mut raw = vec![0u8; disk_num_bytes as usize];
        let csums = if nodatasum { None } else { Some(self.data_csums(disk_bytenr, disk_num_bytes)?) };
        let describe = |l: u64| format!("{at} (disk byte {})", l.saturating_sub(disk_bytenr));
        let fs = &self.store.fs;
        crate::fs::data::read_verified(fs.volume(), fs.csum, ss, disk_bytenr, &mut raw, csums.as_deref(), &describe, &mut |w| fs.warn(w))?;
        fs.decompress(fe.compression, &raw, fe.ram_bytes, &at)
    }
}
