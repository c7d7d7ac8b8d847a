//! Compressed writes, made as the kernel's compress_file_range makes
//! them: how a write compresses (mount option, inode flag, property), a
//! whole small file inline, chunks of 128 KiB compressed on several
//! threads into extents of their own, and NOCOMPRESS marked on a file
//! whose data does not compress.

use crate::error::{Error, Result};
use crate::format::compress::{self, Compression};
use crate::format::limits;
use crate::format::*;
use crate::fs::props;

use super::extent_io::{plain_recs, Rec};
use super::file_extent::MAX_INLINE;
use super::types::{CompressOpts, WriteOpts, WriteReport};
use super::Transaction;

/// How one write compresses (see `Transaction::compress_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Policy {
    kind: Compression,
    level: Option<i32>,
    /// A chunk that does not compress marks the file NOCOMPRESS, and
    /// nothing after it in this write is compressed.
    mark: bool,
}

/// File data compressed at most this much at a time: a compressed extent
/// never covers more (BTRFS_MAX_UNCOMPRESSED).
const CHUNK: usize = compress::MAX_UNCOMPRESSED;

/// One chunk compressed: the bytes to write (padded with zeros to a
/// sector) and their checksums.
struct Compressed {
    data: Vec<u8>,
    sums: Vec<u8>,
}

/// Compress `buf` (of which the first `valid` bytes are file data, the rest
/// zeros past the end of the file) in chunks of [`CHUNK`] bytes, `threads`
/// at a time. Per chunk: `Some` when it compressed by at least a sector;
/// `None` when it did not, or holds a sector or less of data (never worth
/// it, and not counted as a failure, as the kernel skips such ranges). With
/// `p.mark`, the first chunk that did not compress ends compression: it and
/// every chunk after it are `None` whatever the thread count. Also the
/// index of the first chunk that did not compress.
fn compress_chunks(
    buf: &[u8],
    valid: usize,
    ss: usize,
    p: Policy,
    csum: CsumType,
    threads: usize,
) -> std::result::Result<(Vec<Option<Compressed>>, Option<usize>), compress::CompressError> {
    enum Outcome {
        Skipped,
        Failed,
        Done(Compressed),
    }
    let one = |k: usize| -> std::result::Result<Outcome, compress::CompressError> {
        let cs = k * CHUNK;
        let vend = ((k + 1) * CHUNK).min(valid);
        if vend <= cs || vend - cs <= ss {
            return Ok(Outcome::Skipped);
        }
        let Some(mut data) = compress::compress(p.kind, &buf[cs..vend], ss as u32, p.level)? else { return Ok(Outcome::Failed) };
        data.resize(data.len().div_ceil(ss) * ss, 0);
        let mut sums = Vec::new();
        csum.compute_sectors(&data, ss, &mut sums);
        Ok(Outcome::Done(Compressed { data, sums }))
    };
    let n = buf.len().div_ceil(CHUNK);
    let mut out: Vec<Option<Compressed>> = (0..n).map(|_| None).collect();
    let mut failed = None;
    let mut i = 0;
    while i < n {
        let hi = (i + threads.max(1)).min(n);
        let results: Vec<_> = if hi - i == 1 {
            vec![one(i)]
        } else {
            std::thread::scope(|s| {
                let hs = (i..hi)
                    .map(|k| crate::threads::spawn_scoped(s, "compress", move || one(k)))
                    .collect::<Result<Vec<_>>>()
                    .map_err(|e| compress::CompressError::Compressor { algo: "thread", detail: e.to_string() })?;
                Ok::<_, compress::CompressError>(
                    hs.into_iter()
                        .map(|h| {
                            h.join()
                                .unwrap_or_else(|_| Err(compress::CompressError::Compressor { algo: "thread", detail: "panicked".into() }))
                        })
                        .collect(),
                )
            })?
        };
        for (k, r) in (i..hi).zip(results) {
            match r? {
                Outcome::Skipped => {}
                Outcome::Done(c) => out[k] = Some(c),
                Outcome::Failed => {
                    failed = failed.or(Some(k));
                    if p.mark {
                        return Ok((out, failed));
                    }
                }
            }
        }
        i = hi;
    }
    Ok((out, failed))
}

impl Transaction {
    /// How this write of inode `ino` (flags in `it`) is compressed, as the
    /// kernel decides (inode_need_compress, compress_file_range): never for
    /// direct writes or files without checksums; with `force` always (the
    /// compress-force= mount option); else not for NOCOMPRESS files (or a
    /// `none` property), and for files asked for (`opts`, the compress=
    /// mount option), flagged COMPRESS or with an algorithm as property. The
    /// property's algorithm wins over the one asked for, then zlib (the
    /// kernel's default for chattr +c). A level given applies to its own
    /// algorithm only.
    pub(super) fn compress_policy(
        &mut self,
        root: u64,
        ino: u64,
        it: &InodeItem,
        opts: Option<CompressOpts>,
        direct: bool,
        report: &mut WriteReport,
    ) -> Result<Option<Policy>> {
        let flags = it.flags.get();
        let prop = self.compression_prop(root, ino)?;
        let wanted = opts.is_some() || flags & INODE_COMPRESS != 0 || matches!(prop, Some(props::CompressionProp::Algo(_)));
        if !wanted {
            return Ok(None);
        }
        if flags & (INODE_NODATASUM | INODE_NODATACOW) != 0 {
            if opts.is_some() {
                report.notices.push(format!(
                    "{}: written uncompressed: it has no data checksums (nodatasum or nodatacow), and the kernel never compresses such files",
                    self.inode_label(root, ino)
                ));
            }
            return Ok(None);
        }
        if direct {
            if opts.is_some() || flags & INODE_COMPRESS != 0 {
                report.notices.push(format!("{}: direct writes are never compressed (as the kernel's)", self.inode_label(root, ino)));
            }
            return Ok(None);
        }
        let force = opts.is_some_and(|o| o.force);
        if !force && (flags & INODE_NOCOMPRESS != 0 || prop == Some(props::CompressionProp::No)) {
            if opts.is_some() {
                report.notices.push(format!(
                    "{}: written uncompressed: the file is marked NOCOMPRESS (--compress-force compresses it anyway)",
                    self.inode_label(root, ino)
                ));
            }
            return Ok(None);
        }
        let kind = match (prop, opts) {
            (Some(props::CompressionProp::Algo(k)), _) => k,
            (_, Some(o)) => o.kind,
            _ => Compression::Zlib,
        };
        let level = opts.filter(|o| o.kind == kind).and_then(|o| o.level);
        // The kernel marks a file that did not compress, unless forced or
        // the property asks for compression.
        let mark = !force && !matches!(prop, Some(props::CompressionProp::Algo(_)));
        Ok(Some(Policy { kind, level, mark }))
    }

    /// The `btrfs.compression` property of an inode, if it has a valid one.
    fn compression_prop(&mut self, root: u64, ino: u64) -> Result<Option<props::CompressionProp>> {
        Ok(self.xattr(root, ino, props::COMPRESSION)?.and_then(|v| props::parse_compression(&v)))
    }

    /// A file whose data did not compress: NOCOMPRESS from now on (stored
    /// with the inode at the end of the write), as the kernel marks it.
    fn mark_nocompress(&self, root: u64, ino: u64, it: &mut InodeItem, at: u64, report: &mut WriteReport) {
        if it.flags.get() & INODE_NOCOMPRESS == 0 {
            it.flags = (it.flags.get() | INODE_NOCOMPRESS).into();
            report.notices.push(format!(
                "{}: data at offset {at} does not compress by a sector; marked NOCOMPRESS and written uncompressed from there (as the kernel's compress= does; --compress-force tries every chunk)",
                self.inode_label(root, ino)
            ));
        }
    }

    /// A whole small file (`new_size` bytes of `buf`) compressed inline when
    /// that is smaller and fits max_inline; whether it was (else the file
    /// may be marked NOCOMPRESS).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_compressed_inline(
        &mut self,
        root: u64,
        ino: u64,
        it: &mut InodeItem,
        p: Policy,
        buf: &[u8],
        new_size: u64,
        b: u64,
        src_len: usize,
        report: &mut WriteReport,
    ) -> Result<bool> {
        let plain = &buf[..new_size as usize];
        let c = compress::encode(p.kind, plain, self.store.fs.sectorsize, p.level)
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.inode_label(root, ino))))?;
        let fits = c.len() as u64 <= MAX_INLINE && c.len() <= limits::max_inline_data_size(self.store.fs.sb.nodesize.get());
        if c.len() < plain.len() && fits {
            self.punch(root, ino, 0, b, it)?;
            self.insert_inline(root, ino, &c, new_size, p.kind.raw())?;
            self.set_incompat(props::incompat_for(p.kind));
            report.compressed += new_size;
            report.compressed_disk += c.len() as u64;
            it.nbytes = (it.nbytes.get() + new_size).into();
            report.bytes += src_len as u64;
            it.size = new_size.into();
            self.touch(it, true);
            self.put_inode(root, ino, it)?;
            return Ok(true);
        }
        if p.mark {
            self.mark_nocompress(root, ino, it, 0, report);
        }
        Ok(false)
    }

    /// Buffered, compressed: the file bytes [a, a + buf.len()) (`new_size`
    /// the file's size after the write) in chunks of 128 KiB compressed on
    /// several threads; a chunk that saves a sector becomes a compressed
    /// extent of its own (checksums over the compressed bytes, padded with
    /// zeros to a sector), the others are written as plain extents.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_compressed(
        &mut self,
        root: u64,
        ino: u64,
        it: &mut InodeItem,
        a: u64,
        buf: &[u8],
        new_size: u64,
        p: Policy,
        opts: &WriteOpts,
        report: &mut WriteReport,
    ) -> Result<Vec<Rec>> {
        let ss = self.store.fs.sectorsize as usize;
        let valid = usize::try_from(new_size.saturating_sub(a)).unwrap_or(usize::MAX).min(buf.len());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let fs = &self.store.fs;
        let (chunks, failed) = compress_chunks(buf, valid, ss, p, fs.csum, threads)
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.inode_label(root, ino))))?;
        if let (Some(i), true) = (failed, p.mark) {
            self.mark_nocompress(root, ino, it, a + (i * CHUNK) as u64, report);
        }
        let mut recs = Vec::new();
        // A run of plain chunks waiting to be written as one extent.
        let mut run: Option<(usize, usize)> = None;
        for (i, c) in chunks.into_iter().enumerate() {
            let (cs, ce) = (i * CHUNK, ((i + 1) * CHUNK).min(buf.len()));
            let placed = match c {
                Some(c) => match self.store.alloc_data_exact(c.data.len() as u64) {
                    Ok(logical) => Some((c, logical)),
                    // No run that long: written plain, as the kernel falls back.
                    Err(Error::NoSpace(_)) => None,
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let Some((c, logical)) = placed else {
                run = Some(run.map_or((cs, ce), |(s, _)| (s, ce)));
                continue;
            };
            if let Some((rs, re)) = run.take() {
                recs.extend(self.write_plain_run(a + rs as u64, &buf[rs..re], opts, report)?);
            }
            self.write_data(logical, &c.data, opts, report)?;
            self.set_incompat(props::incompat_for(p.kind));
            report.compressed += (ce - cs) as u64;
            report.compressed_disk += c.data.len() as u64;
            recs.push(Rec {
                pos: a + cs as u64,
                logical,
                disk_len: c.data.len() as u64,
                len: (ce - cs) as u64,
                compression: p.kind.raw(),
                sums: c.sums,
            });
        }
        if let Some((rs, re)) = run {
            recs.extend(self.write_plain_run(a + rs as u64, &buf[rs..re], opts, report)?);
        }
        Ok(recs)
    }

    /// Plain extents for the file bytes `buf` starting at file offset `at`.
    fn write_plain_run(&mut self, at: u64, buf: &[u8], opts: &WriteOpts, report: &mut WriteReport) -> Result<Vec<Rec>> {
        let pieces = self.alloc_pieces(at, at + buf.len() as u64)?;
        let sums = self.write_pieces_buffered(&pieces, at, buf, false, opts, report)?;
        Ok(plain_recs(&pieces, sums))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Text with a run of noise over chunks 3 and 4, and a short tail.
    fn data() -> Vec<u8> {
        let mut v: Vec<u8> = b"extent leaf node chunk mirror ".iter().copied().cycle().take(10 * CHUNK + 6000).collect();
        v[3 * CHUNK..5 * CHUNK].copy_from_slice(&noise(2 * CHUNK, 7));
        v
    }

    /// Per chunk (data, checksums) when compressed; the first that did not compress.
    type Layout = (Vec<Option<(Vec<u8>, Vec<u8>)>>, Option<usize>);

    fn layout(p: Policy, threads: usize) -> Layout {
        let d = data();
        let mut buf = d.clone();
        buf.resize(d.len().div_ceil(4096) * 4096, 0);
        let (chunks, failed) = compress_chunks(&buf, d.len(), 4096, p, CsumType::Crc32c, threads).unwrap();
        (chunks.into_iter().map(|c| c.map(|c| (c.data, c.sums))).collect(), failed)
    }

    #[test]
    fn compressed_chunks_do_not_depend_on_the_thread_count() {
        for mark in [false, true] {
            let p = Policy { kind: Compression::Zstd, level: None, mark };
            let one = layout(p, 1);
            for threads in [2, 3, 8] {
                assert!(layout(p, threads) == one, "mark {mark}: {threads} threads give another layout");
            }
            let kinds: Vec<bool> = one.0.iter().map(Option::is_some).collect();
            assert_eq!(one.1, Some(3));
            if mark {
                // The first chunk that does not compress ends compression.
                assert_eq!(kinds, [true, true, true, false, false, false, false, false, false, false, false]);
            } else {
                // Forced: every chunk tried; the tail (6000 bytes) compresses too.
                assert_eq!(kinds, [true, true, true, false, false, true, true, true, true, true, true]);
            }
        }
    }

    #[test]
    fn compressed_chunks_are_padded_and_checksummed() {
        let d = data();
        let (chunks, _) = layout(Policy { kind: Compression::Lzo, level: None, mark: false }, 2);
        for (k, (data, sums)) in chunks.into_iter().enumerate().filter_map(|(k, c)| c.map(|c| (k, c))) {
            assert_eq!(data.len() % 4096, 0);
            assert!(data.len() + 4096 <= CHUNK);
            let mut want = Vec::new();
            CsumType::Crc32c.compute_sectors(&data, 4096, &mut want);
            assert_eq!(sums, want);
            let plain = compress::decompress(Compression::Lzo, &data, CHUNK, 4096).unwrap();
            let end = ((k + 1) * CHUNK).min(d.len());
            assert!(plain[..end - k * CHUNK] == d[k * CHUNK..end], "chunk {k}");
            assert!(plain[end - k * CHUNK..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn a_sector_or_less_is_never_compressed_nor_a_failure() {
        let buf = vec![b'a'; 4096];
        let p = Policy { kind: Compression::Zlib, level: None, mark: true };
        let (chunks, failed) = compress_chunks(&buf, 4096, 4096, p, CsumType::Crc32c, 4).unwrap();
        assert!(chunks[0].is_none() && failed.is_none());
    }
}
