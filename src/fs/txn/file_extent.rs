//! File extent items: those overlapping a range, new inline and regular
//! ones, and a range punched out, extents trimmed at its edges and their
//! references dropped (the kernel's btrfs_drop_extents).

use crate::error::Result;
use crate::format::encode;
use crate::format::items::{parse_file_extent, FileExtent, FileExtentKind};
use crate::format::*;

use super::Transaction;

/// Largest file kept inline in its leaf (the kernel's default max_inline).
pub(crate) const MAX_INLINE: u64 = 2048;

impl Transaction {
    /// File extent items of `ino` overlapping [start, end), as (key offset, body).
    pub(super) fn extents_overlapping(&mut self, root: u64, ino: u64, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        if let Some((k, d)) = self.last_le(root, Key::new(ino, EXTENT_DATA_KEY, start))? {
            if k.objectid == ino && k.item_type == EXTENT_DATA_KEY && k.offset < start {
                out.push((k.offset, d));
            }
        }
        if end > start {
            for (k, d) in self.range(root, Key::new(ino, EXTENT_DATA_KEY, start), Key::new(ino, EXTENT_DATA_KEY, end - 1))? {
                out.push((k.offset, d));
            }
        }
        let mut keep = Vec::new();
        for (off, d) in out {
            let fe = parse_file_extent(&d)?;
            if off.saturating_add(fe.file_len()) > start && off < end {
                keep.push((off, d));
            }
        }
        Ok(keep)
    }

    /// Remove file data in [start, end) (end = u64::MAX for "to EOF"),
    /// trimming extents that straddle the edges and dropping references.
    /// Updates `it.nbytes` (the caller stores `it`).
    pub(super) fn punch(&mut self, root: u64, ino: u64, start: u64, end: u64, it: &mut InodeItem) -> Result<()> {
        for (off, d) in self.extents_overlapping(root, ino, start, end)? {
            let fe = parse_file_extent(&d)?;
            let flen = fe.file_len();
            self.delete(root, Key::new(ino, EXTENT_DATA_KEY, off))?;
            match fe.kind {
                FileExtentKind::Inline { .. } => {
                    it.nbytes = it.nbytes.get().saturating_sub(flen).into();
                    // An inline extent is only at 0 and smaller than a sector; the
                    // caller has read its bytes and rewrites them if needed.
                }
                FileExtentKind::Regular { prealloc, disk_bytenr, disk_num_bytes, offset, num_bytes } => {
                    // A compressed extent is trimmed like any other: the pieces
                    // left keep naming the whole extent (disk_bytenr,
                    // disk_num_bytes, ram_bytes, compression) with offset and
                    // num_bytes into its decompressed bytes, as the kernel's
                    // btrfs_drop_extents leaves them.
                    let piece = |o: u64, n: u64| {
                        encode::file_extent(&FileExtent {
                            generation: fe.generation,
                            ram_bytes: fe.ram_bytes,
                            compression: fe.compression,
                            encryption: fe.encryption,
                            other_encoding: fe.other_encoding,
                            kind: FileExtentKind::Regular { prealloc, disk_bytenr, disk_num_bytes, offset: o, num_bytes: n },
                        })
                    };
                    let backref_off = off.wrapping_sub(offset);
                    let mut pieces = 0i64;
                    let mut kept = 0u64;
                    if off < start {
                        self.insert(root, Key::new(ino, EXTENT_DATA_KEY, off), piece(offset, start - off))?;
                        pieces += 1;
                        kept += start - off;
                    }
                    if off.saturating_add(flen) > end {
                        let cut = end - off;
                        self.insert(root, Key::new(ino, EXTENT_DATA_KEY, end), piece(offset + cut, num_bytes - cut))?;
                        pieces += 1;
                        kept += num_bytes - cut;
                    }
                    if disk_bytenr != 0 {
                        it.nbytes = it.nbytes.get().saturating_sub(num_bytes - kept).into();
                        if pieces != 1 {
                            let gone = self.data_ref_delta(disk_bytenr, disk_num_bytes, root, ino, backref_off, pieces - 1)?;
                            if gone {
                                self.delete_csums(disk_bytenr, disk_num_bytes)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn drop_extents_from(&mut self, root: u64, ino: u64, from: u64, it: &mut InodeItem) -> Result<()> {
        self.punch(root, ino, from, u64::MAX, it)
    }

    /// An inline extent at file offset 0 holding `data`, which is `ram`
    /// file bytes compressed with `compression` (or, COMPRESS_NONE, those
    /// bytes as they are).
    pub(super) fn insert_inline(&mut self, root: u64, ino: u64, data: &[u8], ram: u64, compression: u8) -> Result<()> {
        let item = encode::file_extent(&FileExtent {
            generation: self.transid(),
            ram_bytes: ram,
            compression,
            encryption: 0,
            other_encoding: 0,
            kind: FileExtentKind::Inline { data: data.to_vec() },
        });
        self.insert(root, Key::new(ino, EXTENT_DATA_KEY, 0), item)
    }

    /// A regular extent item at `file_off` naming all `len` file bytes of the
    /// extent at `disk` (`disk_len` bytes on disk; 0 for a hole), compressed
    /// with `compression` (then `len` is its ram_bytes) or not (then `len`
    /// is `disk_len`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_extent_item(
        &mut self,
        root: u64,
        ino: u64,
        file_off: u64,
        disk: u64,
        disk_len: u64,
        len: u64,
        compression: u8,
    ) -> Result<()> {
        let b = encode::file_extent(&FileExtent {
            generation: self.transid(),
            ram_bytes: if compression == COMPRESS_NONE { disk_len } else { len },
            compression,
            encryption: 0,
            other_encoding: 0,
            kind: FileExtentKind::Regular {
                prealloc: false,
                disk_bytenr: disk,
                disk_num_bytes: if disk == 0 { 0 } else { disk_len },
                offset: 0,
                num_bytes: len,
            },
        });
        self.insert(root, Key::new(ino, EXTENT_DATA_KEY, file_off), b)
    }
}
