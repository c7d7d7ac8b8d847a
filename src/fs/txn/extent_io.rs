//! Data extents allocated and their bytes written to every mirror before
//! any item names them: buffered through the page cache with the
//! checksums computed meanwhile, or queued to the direct writer.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::*;
use crate::fs::direct::Source;
use crate::volumes::bio::{Bounce, DirectWriter, Live};

use super::types::{WriteOpts, WriteReport};
use super::Transaction;

/// Largest data extent btrs writes (the kernel's BTRFS_MAX_EXTENT_SIZE).
const MAX_EXTENT: u64 = 128 * 1024 * 1024;

/// One data extent written and waiting for its items: file offset,
/// logical address, bytes on disk, file bytes, compression, checksums
/// (empty: none).
pub(super) struct Rec {
    pub(super) pos: u64,
    pub(super) logical: u64,
    pub(super) disk_len: u64,
    pub(super) len: u64,
    pub(super) compression: u8,
    pub(super) sums: Vec<u8>,
}

/// Plain extents from (file offset, logical, length) pieces and their checksums.
pub(super) fn plain_recs(pieces: &[(u64, u64, u64)], sums: Vec<Vec<u8>>) -> Vec<Rec> {
    let mut sums = sums.into_iter();
    pieces
        .iter()
        .map(|&(pos, logical, got)| Rec {
            pos,
            logical,
            disk_len: got,
            len: got,
            compression: COMPRESS_NONE,
            sums: sums.next().unwrap_or_default(),
        })
        .collect()
}

/// Bytes of a buffered write below which its checksums are computed on the
/// writing thread rather than split among threads.
const PARALLEL_CSUM_MIN: usize = 1 << 20;

impl Transaction {
    /// Write `buf` to every copy of `logical` through the page cache (see
    /// [`crate::volumes::Volume::write_bios`]).
    pub(crate) fn write_data(&self, logical: u64, buf: &[u8], opts: &WriteOpts, report: &mut WriteReport) -> Result<()> {
        report.bios.extend(self.store.fs.volume().write_bios(logical, buf, opts.max_bio, opts.on_bio.as_ref())?);
        Ok(())
    }

    /// Data space for file bytes [a, b): (file offset, logical, length) of
    /// each run the allocator hands out (at most MAX_EXTENT each).
    pub(super) fn alloc_pieces(&mut self, a: u64, b: u64) -> Result<Vec<(u64, u64, u64)>> {
        let mut pieces = Vec::new();
        let mut pos = a;
        while pos < b {
            let want = (b - pos).min(MAX_EXTENT);
            let (logical, got) = self.store.alloc_data(want)?;
            pieces.push((pos, logical, got));
            pos += got;
        }
        Ok(pieces)
    }

    /// Checksums of each piece's sectors (`pieces` as (file offset, logical,
    /// length), `buf` starting at file offset `a`), one `Vec` per piece.
    fn piece_csums(&self, pieces: &[(u64, u64, u64)], a: u64, all: &[u8]) -> Vec<Vec<u8>> {
        let ss = self.store.fs.sectorsize as u64;
        let cs = self.store.fs.csum.size();
        pieces
            .iter()
            .map(|&(pos, _, got)| {
                let first = ((pos - a) / ss) as usize * cs;
                all[first..first + (got / ss) as usize * cs].to_vec()
            })
            .collect()
    }

    /// Buffered: every copy of every piece written, and the checksums
    /// computed on other threads meanwhile from the same engine-owned bytes,
    /// which nothing changes until all are done. The copies cost CPU (the
    /// host's page-cache copy), so the sectors are split among as many
    /// threads as there are cores and a slow checksum does not leave one
    /// core to finish alone.
    pub(super) fn write_pieces_buffered(
        &self,
        pieces: &[(u64, u64, u64)],
        a: u64,
        buf: &[u8],
        nosum: bool,
        opts: &WriteOpts,
        report: &mut WriteReport,
    ) -> Result<Vec<Vec<u8>>> {
        let ss = self.store.fs.sectorsize as usize;
        // Small writes checksum here, after the writes: starting threads costs
        // more than the checksums (a put of many small files started two
        // threads per file, half its time in the kernel).
        let threaded = !nosum && buf.len() >= PARALLEL_CSUM_MIN;
        std::thread::scope(|s| -> Result<Vec<Vec<u8>>> {
            let csummers: Vec<_> = if threaded {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
                let per = (buf.len() / ss).div_ceil(cores).max(1) * ss;
                buf.chunks(per)
                    .map(|part| crate::threads::spawn_scoped(s, "checksum", move || Ok(self.compute_csums(part))))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            };
            for &(pos, logical, got) in pieces {
                let off = (pos - a) as usize;
                self.write_data(logical, &buf[off..off + got as usize], opts, report)?;
            }
            if nosum {
                return Ok(Vec::new());
            }
            let mut all = Vec::new();
            for h in csummers {
                all.extend(crate::threads::join(h, "checksum")?);
            }
            if !threaded {
                all = self.compute_csums(buf);
            }
            Ok(self.piece_csums(pieces, a, &all))
        })
    }

    /// Direct: the engine's pages go to the bios of every piece as they are
    /// (nothing else can change them until every mirror has them), queued on
    /// the devices' own threads; the checksums are computed here meanwhile.
    /// `live` (tests only) is the caller's source and where it starts.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_pieces_direct(
        &mut self,
        pieces: &[(u64, u64, u64)],
        a: u64,
        bounce: Bounce,
        live: Option<(&dyn Source, usize)>,
        nosum: bool,
        opts: &WriteOpts,
        report: &mut WriteReport,
    ) -> Result<Vec<Vec<u8>>> {
        let vol = self.store.fs.volume();
        if self.direct.is_none() {
            let dw = DirectWriter::new(vol, opts.max_bio)?;
            report.notices.extend(dw.notices.iter().cloned());
            self.direct = Some(dw);
        }
        let Some(dw) = self.direct.as_mut() else { return Err(Error::Invalid("no direct writer".into())) };
        dw.set_max_bio(opts.max_bio);
        #[cfg(test)]
        {
            dw.no_bounce = self.direct_no_bounce;
            dw.fail_at = self.direct_fail_at;
        }
        let pages = Arc::new(bounce);
        let copy_to = |off: usize, dst: &mut [u8]| {
            if let Some((src, _)) = live {
                src.copy_to(off, dst)
            }
        };
        let live = live.map(|(src, base)| Live { base, len: src.len(), copy_to: &copy_to });
        for &(pos, logical, got) in pieces {
            let off = (pos - a) as usize;
            report.bios.extend(dw.submit(vol, logical, &pages, off..off + got as usize, opts.on_bio.as_ref(), live)?);
        }
        if nosum {
            return Ok(Vec::new());
        }
        let mut all = Vec::new();
        self.store.fs.csum.compute_sectors(pages.bytes(), self.store.fs.sectorsize as usize, &mut all);
        Ok(self.piece_csums(pieces, a, &all))
    }
}
