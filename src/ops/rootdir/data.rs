//! The second pass of `--rootdir`: file data read (on worker threads, in
//! order), compressed where asked and it shrinks, checksummed and written
//! into data chunks through a [`DataSink`]; makes the file extent items
//! (sorted with the walk's items), the data extents and the checksum items
//! (in address order, as the data is placed) that refer to it.

use std::fs::File;
use std::sync::Arc;

use super::scan::{
    inline_file_item, max_csum_item_bytes, regular_extent, Content, DataSource, Job, Scan, ScanInode, ScanOptions, COPY_PIECE,
    MAX_EXTENT_SIZE, MAX_UNCOMPRESSED,
};
use super::spill::{merge, ItemSorter, Merge, RecordReader, RecordWriter, Spill, SpillReader};
use crate::error::{Error, Result};
use crate::format::compress::{self, Compression};
use crate::format::encode;
use crate::format::items::{ExtentInfo, ExtentRef};
use crate::format::ondisk::*;
use crate::format::Key;
use crate::ops::host::round_up;
use crate::ops::pipeline::ordered_map;

/// Where [`write_data`] puts file data: the data chunks of the new filesystem.
pub(crate) trait DataSink {
    /// Reserve up to `len` contiguous bytes (never crossing a chunk); returns
    /// the logical address and how many bytes were granted. With `whole`, all
    /// of `len` or an error.
    fn reserve(&mut self, len: u64, whole: bool) -> Result<(u64, u64)>;
    /// Write bytes at a logical address inside a data chunk (all copies).
    fn write(&mut self, logical: u64, data: &[u8]) -> Result<()>;
    /// Like [`Self::write`], where the first `from.2` bytes of `data` are also
    /// bytes `from.1..` of file `from.0` (the rest is zero padding past its
    /// end): a sink may copy them file to file (copy_file_range, which a host
    /// filesystem with reflinks turns into shared blocks).
    fn write_copy(&mut self, logical: u64, data: &[u8], from: (&File, u64, u64)) -> Result<()> {
        let _ = from;
        self.write(logical, data)
    }
    /// A sink that only counts (for sizing): data stored as is need not be
    /// read, since its size is known; compressed data still must be.
    fn dry(&self) -> bool {
        false
    }
}

/// A [`DataSink`] that stores nothing: one endless data chunk, for finding
/// how many bytes the data and the items referring to it take.
#[derive(Default)]
pub(crate) struct CountingSink {
    pub(crate) next: u64,
}

impl DataSink for CountingSink {
    fn reserve(&mut self, len: u64, _whole: bool) -> Result<(u64, u64)> {
        let at = self.next;
        self.next += len;
        Ok((at, len))
    }
    fn write(&mut self, _logical: u64, _data: &[u8]) -> Result<()> {
        Ok(())
    }
    fn dry(&self) -> bool {
        true
    }
}

/// One data extent the data pass placed: where it is, how long on disk,
/// and the file bytes it starts (its EXTENT_ITEM's one EXTENT_DATA_REF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DataExtent {
    pub(crate) logical: u64,
    pub(crate) disk_len: u64,
    pub(crate) root: u64,
    pub(crate) ino: u64,
    pub(crate) file_pos: u64,
}

impl DataExtent {
    /// Its EXTENT_ITEM: key and data.
    pub(crate) fn item(&self, gen: u64) -> Result<(Key, Vec<u8>)> {
        Ok((Key::new(self.logical, EXTENT_ITEM_KEY, self.disk_len), data_extent_item(gen, self.root, self.ino, self.file_pos)?))
    }
}

/// What the data pass produced besides the checksum items.
pub(crate) struct DataResult {
    /// The file extent items (EXTENT_DATA) it made, as sorted runs to merge
    /// with the walk's ([`Scan::fs_items`]).
    pub(super) items: Vec<Spill>,
    /// Every data extent, in address order (see [`Self::data_extents`]).
    extents: Spill,
    /// How many there are.
    pub(crate) extent_count: u64,
    /// The csum items, in key order.
    csums: Spill,
}

impl DataResult {
    /// The data extents, in address order.
    pub(crate) fn data_extents(&self) -> DataExtents<'_> {
        DataExtents { reader: self.extents.reader() }
    }

    /// The csum items, in key order.
    pub(crate) fn csum_items(&self) -> CsumItems<'_> {
        CsumItems { reader: self.csums.reader() }
    }
}

/// The extents of [`DataResult::data_extents`].
pub(crate) struct DataExtents<'a> {
    reader: SpillReader<'a>,
}

impl DataExtents<'_> {
    /// The next data extent, or None after the last.
    pub(crate) fn next_extent(&mut self) -> Result<Option<DataExtent>> {
        let Some(rec) = self.reader.next_record()? else { return Ok(None) };
        let mut r = RecordReader::new(rec);
        Ok(Some(DataExtent { logical: r.u64()?, disk_len: r.u64()?, root: r.u64()?, ino: r.u64()?, file_pos: r.u64()? }))
    }
}

/// The items of [`DataResult::csum_items`].
pub(crate) struct CsumItems<'a> {
    reader: SpillReader<'a>,
}

impl CsumItems<'_> {
    /// The next (key, data), or None after the last.
    pub(crate) fn next_item(&mut self) -> Result<Option<(Key, Vec<u8>)>> {
        let Some(rec) = self.reader.next_record()? else { return Ok(None) };
        let mut r = RecordReader::new(rec);
        Ok(Some((Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, r.u64()?), r.bytes()?.to_vec())))
    }
}

/// One piece of file data for the workers of [`write_data`].
struct DataJob {
    inode: Arc<ScanInode>,
    /// Which file (in job order): pieces of one file continue one extent.
    file: u64,
    kind: JobKind,
}

#[derive(Clone, Copy)]
enum JobKind {
    /// A small file stored inline in its EXTENT_DATA item.
    Inline,
    /// `len` bytes of file space from `pos` (sector aligned), up to
    /// MAX_UNCOMPRESSED of it when compressing, else up to COPY_PIECE of a
    /// data range ending at `range_end`.
    Piece { pos: u64, len: u64, range_end: u64, compress: Option<(Compression, Option<i32>)>, sums: bool },
}

/// What a worker made of a [`DataJob`].
enum JobDone {
    /// The file's inline EXTENT_DATA item.
    Inline(Vec<u8>),
    Piece {
        /// Compressed bytes padded to a sector, the file bytes they stand for
        /// (ram_bytes) and the compression type; None: stored as is.
        compressed: Option<(Vec<u8>, u64, u8)>,
        /// The file bytes (zero past EOF) when stored as is; empty when
        /// compressed, or when only counting (nothing is written then).
        raw: Vec<u8>,
        /// The csums of the sectors stored, one after the other.
        sums: Vec<u8>,
        /// The host file read (stored as is), for a file-to-file copy.
        source: Option<File>,
    },
}

/// How many host files a batch of the data pass may keep open for copying
/// them file to file, `window` batches being in flight: together at most
/// 256, and a quarter of the open files the process may have. Each held
/// its files until copied, so that 64 batches of 256 small files (16
/// workers) ran out of the usual 1,024 descriptors.
fn kept_sources(window: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    let total = usize::try_from(limit / 4).unwrap_or(usize::MAX).min(256);
    total / window.max(1)
}

/// The data jobs of one file, made one at a time (a sparse file may have
/// millions of data ranges).
struct FileJobs {
    inode: Arc<ScanInode>,
    file: u64,
    /// The data range being cut into pieces, and where the next piece starts.
    range: usize,
    pos: u64,
    /// An inline file's one job is made.
    done: bool,
}

impl Iterator for FileJobs {
    type Item = DataJob;

    fn next(&mut self) -> Option<DataJob> {
        let inode = &self.inode;
        match &inode.content {
            Content::InlineFile if !self.done => {
                self.done = true;
                Some(DataJob { inode: inode.clone(), file: self.file, kind: JobKind::Inline })
            }
            Content::Ranges(ranges) => {
                // The kernel never compresses a file without checksums (or written in place).
                let compress = if inode.flags & (INODE_NODATASUM | INODE_NODATACOW) != 0 { None } else { inode.compress };
                let sums = inode.flags & INODE_NODATASUM == 0;
                let step = if compress.is_some() { MAX_UNCOMPRESSED } else { COPY_PIECE };
                loop {
                    let &(start, end) = ranges.get(self.range)?;
                    let pos = self.pos.max(start);
                    if pos >= end {
                        self.range += 1;
                        continue;
                    }
                    let len = (end - pos).min(step);
                    self.pos = pos + len;
                    let kind = JobKind::Piece { pos, len, range_end: end, compress, sums };
                    return Some(DataJob { inode: inode.clone(), file: self.file, kind });
                }
            }
            _ => None,
        }
    }
}

/// The data jobs of every file the walk noted, in inode order, grouped up
/// to about 1 MiB of file data or 256 jobs; a record that cannot be read
/// back ends the batches with its error.
fn job_batches(scan: &Scan) -> impl Iterator<Item = Result<Vec<DataJob>>> + Send + '_ {
    const BATCH_BYTES: u64 = 1 << 20;
    const BATCH_JOBS: usize = 256;
    let mut reader = scan.jobs.reader();
    let mut cur: Option<FileJobs> = None;
    let mut file = 0u64;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        loop {
            let Some(job) = cur.as_mut().and_then(Iterator::next) else {
                let next = reader.next_record().and_then(|rec| rec.map(|rec| Job::decode(rec, &scan.linked)).transpose());
                match next {
                    Ok(Some(inode)) => {
                        cur = Some(FileJobs { inode: Arc::new(inode), file, range: 0, pos: 0, done: false });
                        file += 1;
                        continue;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failed = true;
                        return Some(Err(e));
                    }
                }
            };
            bytes += match job.kind {
                JobKind::Inline => 1 << 12,
                JobKind::Piece { len, .. } => len,
            };
            batch.push(job);
            if bytes >= BATCH_BYTES || batch.len() >= BATCH_JOBS {
                break;
            }
        }
        (!batch.is_empty()).then_some(Ok(batch))
    })
}

/// [`run_job`] on each job of a batch, keeping at most `keep_open` of the
/// host files read open for copying file to file (see [`kept_sources`]);
/// the others' bytes are written from memory.
fn run_batch(scan: &Scan, batch: &[DataJob], dry: bool, mut keep_open: usize) -> Vec<Result<JobDone>> {
    let mut out = Vec::with_capacity(batch.len());
    for job in batch {
        let mut done = run_job(scan, job, dry);
        // Closed at once past the share: never more open than it.
        if let Ok(JobDone::Piece { source: source @ Some(_), .. }) = &mut done {
            match keep_open.checked_sub(1) {
                Some(k) => keep_open = k,
                None => *source = None,
            }
        }
        out.push(done);
    }
    out
}

/// The value of a result the consumer is handed by reference, or its error
/// taken out (the run stops at it, so nothing reads the result again).
fn taken_err<T>(r: &mut Result<T>) -> Result<&mut T> {
    r.as_mut().map_err(|e| std::mem::replace(e, Error::Internal(String::new())))
}

/// Read, compress and checksum one job (on a worker thread).
fn run_job(scan: &Scan, job: &DataJob, dry: bool) -> Result<JobDone> {
    let opts = &scan.opts;
    let i = &*job.inode;
    match job.kind {
        JobKind::Inline => {
            let mut buf = vec![0u8; i.size as usize];
            scan.data.open(i)?.read_exact_at(&mut buf, 0)?;
            // The kernel never compresses a file without checksums (or in place).
            let compress = if i.flags & (INODE_NODATASUM | INODE_NODATACOW) != 0 { None } else { i.compress };
            Ok(JobDone::Inline(inline_file_item(opts.generation, buf, compress, opts.sectorsize)))
        }
        JobKind::Piece { pos, len, compress, sums, .. } => {
            let sector = opts.sectorsize as usize;
            let csums = |data: &[u8]| -> Vec<u8> {
                if !sums {
                    return Vec::new();
                }
                let mut out = Vec::new();
                opts.csum.compute_sectors(data, sector, &mut out);
                out
            };
            // Bytes of the file (not of zero padding past EOF) in this piece.
            let avail = i.size.saturating_sub(pos).min(len) as usize;
            if compress.is_none() && dry {
                // Counting only: the size is known without reading; csums of
                // zeros stand in (their number is what counts).
                let n = if sums { (len as usize / sector) * opts.csum.size() } else { 0 };
                return Ok(JobDone::Piece { compressed: None, raw: Vec::new(), sums: vec![0; n], source: None });
            }
            let mut buf = vec![0u8; len as usize];
            let bytes = scan.data.open(i)?;
            bytes.read_exact_at(&mut buf[..avail], pos)?;
            if let Some((kind, level)) = compress {
                let c = compress::compress(kind, &buf[..avail], opts.sectorsize, level)
                    .map_err(|e| Error::Compress { at: scan.data.shown(&i.path), source: e })?;
                if let Some(mut c) = c {
                    c.resize(round_up(c.len() as u64, sector as u64) as usize, 0);
                    let sums = csums(&c);
                    return Ok(JobDone::Piece {
                        compressed: Some((c, round_up(avail as u64, sector as u64), kind.raw())),
                        raw: Vec::new(),
                        sums,
                        source: None,
                    });
                }
            }
            let sums = csums(&buf);
            Ok(JobDone::Piece { compressed: None, raw: buf, sums, source: bytes.into_own_file() })
        }
    }
}

/// What the data pass gathers, in the order extents are placed.
struct DataOut {
    /// File extent items of every subvolume tree.
    items: ItemSorter,
    generation: u64,
    extents: Spill,
    extent_count: u64,
    /// The csum item being filled: its first sector, the next sector it
    /// would take, its csums.
    csum: Option<(u64, u64, Vec<u8>)>,
    /// Finished csum items, in address order: (key offset, item data).
    csums: Spill,
    max_csum_bytes: usize,
}

impl DataOut {
    /// A regular extent of `covered` file bytes at `file_pos`, on disk at `disk`.
    fn extent(&mut self, i: &ScanInode, file_pos: u64, disk: (u64, u64), ram: u64, comp: u8, covered: u64) -> Result<()> {
        let v = regular_extent(self.generation, ram, comp, disk.0, disk.1, covered);
        self.items.push(i.subvol, Key::new(i.ino, EXTENT_DATA_KEY, file_pos), &v)?;
        let mut w = RecordWriter::default();
        w.u64(disk.0).u64(disk.1).u64(i.subvol).u64(i.ino).u64(file_pos);
        self.extents.push(&w.buf)?;
        self.extent_count += 1;
        Ok(())
    }

    /// The csums of consecutive sectors from `logical`: they join the csum
    /// item being filled while they continue it and it has room. Data is
    /// placed in address order, so every item is final once the next starts.
    fn sums(&mut self, logical: u64, sums: &[u8], sector: u64, csum_size: usize, opts: &ScanOptions) -> Result<()> {
        for (n, c) in sums.chunks(csum_size.max(1)).enumerate() {
            let at = logical + n as u64 * sector;
            match &mut self.csum {
                Some((_, next, bytes)) if at == *next && bytes.len() + c.len() <= self.max_csum_bytes => {
                    bytes.extend_from_slice(c);
                    *next += sector;
                    continue;
                }
                Some((_, next, _)) if at < *next => {
                    return Err(Error::Invalid(format!("data pass: csum of {at} after {next} (internal)")));
                }
                _ => {}
            }
            self.flush_csums(opts)?;
            self.csum = Some((at, at + sector, c.to_vec()));
        }
        Ok(())
    }

    fn flush_csums(&mut self, opts: &ScanOptions) -> Result<()> {
        if let Some((start, _, bytes)) = self.csum.take() {
            let mut w = RecordWriter::default();
            w.u64(start).bytes(&encode::csum_item(bytes, opts.csum)?);
            self.csums.push(&w.buf)?;
        }
        Ok(())
    }
}

/// The csums of the sectors in bytes `from..to` of a piece (empty stays empty).
fn sector_slice(sums: &[u8], from: u64, to: u64, sector: u64, csum_size: usize) -> &[u8] {
    if sums.is_empty() {
        return sums;
    }
    &sums[(from / sector) as usize * csum_size..(to / sector) as usize * csum_size]
}

/// An uncompressed extent being filled by consecutive pieces of one file.
struct OpenExtent {
    inode: Arc<ScanInode>,
    file: u64,
    /// File offset and logical address where it starts.
    file_pos: u64,
    logical: u64,
    granted: u64,
    used: u64,
}

/// Copy every regular file's data into the data chunks and produce the file
/// extent items, the data extents and the csum items. Reading, compressing and checksumming
/// run on [`ScanOptions::threads`] workers; placing (the addresses follow
/// from every earlier extent's size) runs here, in inode order, so the
/// result never depends on the number of workers. `progress` is told the
/// file bytes done so far and the total.
pub(crate) fn write_data(scan: &Scan, sink: &mut dyn DataSink, progress: &mut dyn FnMut(u64, u64)) -> Result<DataResult> {
    let opts = &scan.opts;
    let gen = opts.generation;
    let sector = opts.sectorsize as u64;
    let csum_size = opts.csum.size();
    let mut out = DataOut {
        items: ItemSorter::with_budget(opts.spill_bytes),
        generation: gen,
        extents: Spill::with_budget(opts.spill_bytes),
        extent_count: 0,
        csum: None,
        csums: Spill::with_budget(opts.spill_bytes),
        max_csum_bytes: max_csum_item_bytes(opts.nodesize, csum_size),
    };

    // ---- file data, in inode order ----
    let dry = sink.dry();
    let workers = opts.workers();
    let mut open: Option<OpenExtent> = None;
    let mut done_bytes = 0u64;
    let total_bytes = scan.data_total;
    // Takes a job's result by reference: what is left of it is dropped on
    // the worker that made it (see `ordered_map`).
    let mut consume = |job: &DataJob, done: &mut Result<JobDone>| -> Result<()> {
        let i = &*job.inode;
        match (job.kind, taken_err(done)?) {
            (JobKind::Inline, JobDone::Inline(item)) => {
                out.items.push(i.subvol, Key::new(i.ino, EXTENT_DATA_KEY, 0), item)?;
                done_bytes += i.size;
            }
            (JobKind::Piece { pos, len, .. }, JobDone::Piece { compressed: Some((c, ram, kind)), sums, .. }) => {
                let disk_len = c.len() as u64;
                let (logical, _) = sink.reserve(disk_len, true)?;
                sink.write(logical, c)?;
                out.sums(logical, sums, sector, csum_size, opts)?;
                out.extent(i, pos, (logical, disk_len), *ram, *kind, len)?;
                done_bytes += len;
            }
            (JobKind::Piece { pos, len, range_end, compress, .. }, JobDone::Piece { compressed: None, raw, sums, source }) => {
                // Where these bytes also lie: the host file, or a contiguous
                // archive member.
                let from: Option<(&File, u64)> = match (&*source, &scan.data) {
                    (Some(f), _) => Some((f, pos)),
                    (None, DataSource::Archive { file, .. }) if i.sparse.is_none() => Some((file, i.offset + pos)),
                    _ => None,
                };
                // Stored as is: into the open extent, opening new ones as
                // reservations end (at chunk ends, or MAX_EXTENT_SIZE). An
                // incompressible piece of a compressed file is an extent of
                // its own, as big as the piece.
                let mut off = 0u64;
                while off < len {
                    let cur = match open.as_mut() {
                        Some(o) if o.file == job.file && o.file_pos + o.used == pos + off => o,
                        _ => {
                            let want = if compress.is_some() { len - off } else { (range_end - pos - off).min(MAX_EXTENT_SIZE) };
                            let (logical, granted) = sink.reserve(want, false)?;
                            open.insert(OpenExtent {
                                inode: job.inode.clone(),
                                file: job.file,
                                file_pos: pos + off,
                                logical,
                                granted,
                                used: 0,
                            })
                        }
                    };
                    let n = (len - off).min(cur.granted - cur.used);
                    let at = cur.logical + cur.used;
                    if !raw.is_empty() {
                        let data = &raw[off as usize..(off + n) as usize];
                        match from {
                            Some((f, base)) => {
                                let valid = i.size.saturating_sub(pos + off).min(n);
                                sink.write_copy(at, data, (f, base + off, valid))?;
                            }
                            None => sink.write(at, data)?,
                        }
                    }
                    cur.used += n;
                    let closed = cur.used == cur.granted;
                    out.sums(at, sector_slice(sums, off, off + n, sector, csum_size), sector, csum_size, opts)?;
                    off += n;
                    if closed {
                        if let Some(o) = open.take() {
                            out.extent(&o.inode, o.file_pos, (o.logical, o.granted), o.granted, COMPRESS_NONE, o.granted)?;
                        }
                    }
                }
                done_bytes += len;
            }
            _ => return Err(Error::Invalid("data pass: a worker's result does not match its job (internal)".into())),
        }
        progress(done_bytes, total_bytes);
        Ok(())
    };
    // Jobs travel in batches: one small file is far less work than handing
    // it between threads.
    let window = 4 * workers;
    let keep_open = kept_sources(window);
    ordered_map(
        job_batches(scan),
        workers,
        window,
        |batch| match batch {
            Ok(batch) => run_batch(scan, batch, dry, keep_open),
            Err(_) => Vec::new(),
        },
        |batch, results| taken_err(batch)?.iter().zip(results.iter_mut()).try_for_each(|(job, done)| consume(job, done)),
    )?;
    if let Some(o) = open {
        return Err(Error::Invalid(format!("data pass: extent at {} left open (internal)", o.logical)));
    }
    out.flush_csums(opts)?;
    out.csums.seal()?;
    out.extents.seal()?;
    Ok(DataResult { items: out.items.finish()?, extents: out.extents, extent_count: out.extent_count, csums: out.csums })
}

impl Scan {
    /// Every item of the subvolume trees, sorted by (tree, key): the walk's
    /// and the data pass's `data` merged, items with one key joined. An item
    /// too big for a tree block is an error.
    pub(crate) fn fs_items<'a>(&'a self, data: &'a DataResult) -> Result<FsItems<'a>> {
        Ok(FsItems { merge: merge(self.items.iter().chain(&data.items))?, nodesize: self.opts.nodesize })
    }
}

/// The items of [`Scan::fs_items`].
pub(crate) struct FsItems<'a> {
    merge: Merge<'a>,
    nodesize: u32,
}

impl FsItems<'_> {
    /// The next (tree, key, data), or None after the last.
    pub(crate) fn next_item(&mut self) -> Result<Option<(u64, Key, Vec<u8>)>> {
        let Some((tree, key, v)) = self.merge.next_item()? else { return Ok(None) };
        if v.len() > crate::tree::builder::max_item_size(self.nodesize) {
            return Err(Error::Unsupported(format!(
                "item {key} of inode {} in subvolume {tree} is {} bytes, more than a {}-byte tree block holds (too many names or hash collisions)",
                key.objectid,
                v.len(),
                self.nodesize
            )));
        }
        Ok(Some((tree, key, v)))
    }
}

/// EXTENT_ITEM of a data extent with its one inline EXTENT_DATA_REF.
pub(crate) fn data_extent_item(gen: u64, root: u64, objectid: u64, offset: u64) -> Result<Vec<u8>> {
    encode::extent_item(&ExtentInfo {
        refs: 1,
        generation: gen,
        flags: EXTENT_FLAG_DATA,
        tree_block: None,
        inline_refs: vec![ExtentRef::Data { root, objectid, offset, count: 1 }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::items::{parse_dir_items, parse_inode_refs};
    use crate::format::CsumType;
    use crate::ops::rootdir::scan::{scan, test_opts, SubvolSpec};
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;

    /// Every item of the subvolume trees, after a counting data pass.
    fn all_items(scan: &Scan) -> Vec<(u64, Key, Vec<u8>)> {
        let r = write_data(scan, &mut CountingSink::default(), &mut |_, _| {}).unwrap();
        let mut items = scan.fs_items(&r).unwrap();
        let mut v = Vec::new();
        while let Some(i) = items.next_item().unwrap() {
            v.push(i);
        }
        v
    }

    /// Ids follow the walk, not the option order; every subvolume numbers its
    /// inodes from 256; a hard link across a boundary becomes a second inode.
    #[test]
    fn subvolumes_get_walk_order_ids_and_their_own_inode_numbers() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("z/y")).unwrap();
        std::fs::create_dir_all(r.join("m")).unwrap();
        std::fs::write(r.join("m/f"), b"x").unwrap();
        std::fs::hard_link(r.join("m/f"), r.join("z/f")).unwrap();
        std::fs::hard_link(r.join("m/f"), r.join("z/g")).unwrap();
        let mut opts = test_opts();
        opts.subvols = ["z/y:ro", "z", "m:default"].iter().map(|s| SubvolSpec::parse(s).unwrap()).collect();
        opts.compress_paths = vec![(PathBuf::from("z"), Some((Compression::Zstd, None))), (PathBuf::from("z/y"), None)];
        let scan = scan(r, &opts).unwrap();
        let got: Vec<(u64, u64, u64, &str)> =
            scan.subvolumes().iter().map(|s| (s.id, s.parent, s.dirid, s.path.to_str().unwrap())).collect();
        assert_eq!(got, vec![(256, 5, 256, "m"), (257, 5, 256, "z"), (258, 257, 256, "z/y")]);
        assert!(scan.subvolumes()[0].default && scan.subvolumes()[2].readonly);
        let items = all_items(&scan);
        // (subvolume, inode) → its names, from the INODE_REF items.
        let names = |sv: u64, ino: u64| -> Vec<Vec<u8>> {
            items
                .iter()
                .filter(|(t, k, _)| *t == sv && k.objectid == ino && k.item_type == INODE_REF_KEY)
                .flat_map(|(_, k, v)| parse_inode_refs(*k, v).unwrap().into_iter().map(|r| r.name))
                .collect()
        };
        assert_eq!(names(256, 257), vec![b"f".to_vec()]);
        // z: f and g are one inode (257), y is a subvolume, not an inode of z.
        assert_eq!(names(257, 257), vec![b"f".to_vec(), b"g".to_vec()]);
        assert_eq!(names(258, 256), vec![b"..".to_vec()]);
        assert_eq!(scan.warnings.len(), 1, "{:?}", scan.warnings);
        let y_entry = items
            .iter()
            .filter(|(t, k, _)| *t == 257 && k.objectid == 256 && k.item_type == DIR_INDEX_KEY)
            .flat_map(|(_, _, v)| parse_dir_items(v).unwrap())
            .find(|e| e.name == b"y")
            .unwrap();
        assert_eq!(y_entry.location, Key::new(258, ROOT_ITEM_KEY, 0));
        assert_eq!(
            items.iter().map(|t| t.0).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>(),
            vec![5, 256, 257, 258]
        );
    }

    /// The scan's helper (finding stats, xattrs and data ranges ahead of
    /// the walk) changes nothing: the same items, subvolumes and warnings
    /// with one thread (no helper) as with several, on a tree with
    /// directories between files, more entries in one directory than the
    /// helper may hold found, hard links across directories and into a
    /// subvolume, symlinks, xattrs, empty, sparse and multi-sector files.
    #[test]
    fn the_scan_helper_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in ["a/b/c", "a/e", "m", "s/t", "wide"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        for i in 0..1500u32 {
            let p = r.join(format!("wide/{i:05}"));
            match i % 7 {
                0 => std::fs::create_dir(&p).unwrap(),
                1 => std::os::unix::fs::symlink(format!("../t{i}"), &p).unwrap(),
                2 => std::fs::write(&p, vec![i as u8; (i as usize * 37) % 9000]).unwrap(),
                _ => std::fs::write(&p, format!("{i}")).unwrap(),
            }
        }
        for (i, dir) in ["a", "a/b", "a/b/c", "a/e", "m", "s", "s/t"].iter().enumerate() {
            for j in 0..40 {
                std::fs::write(r.join(format!("{dir}/f{j}")), vec![j as u8; i * 1000 + j * 11]).unwrap();
            }
            std::fs::write(r.join(format!("{dir}/empty")), b"").unwrap();
        }
        std::fs::hard_link(r.join("a/f1"), r.join("a/b/c/link")).unwrap();
        std::fs::hard_link(r.join("a/f1"), r.join("s/t/link")).unwrap();
        let sparse = std::fs::File::create(r.join("m/sparse")).unwrap();
        sparse.set_len(1 << 20).unwrap();
        sparse.write_all_at(b"middle", 300_000).unwrap();
        let xattrs = xattr::set(r.join("a/e/f3"), "user.k", b"v").is_ok();
        let mut opts = test_opts();
        opts.subvols = vec![SubvolSpec::parse("s").unwrap()];
        let seen = |threads: usize| {
            let scan = scan(r, &ScanOptions { threads, ..opts.clone() }).unwrap();
            let subvols: Vec<_> = scan.subvolumes().iter().map(|s| (s.id, s.path.clone())).collect();
            (all_items(&scan), subvols, scan.warnings.clone())
        };
        // The first walk may move the atimes of what it lists and reads
        // (relatime): compare walks after it.
        seen(1);
        let alone = seen(1);
        assert!(alone.0.len() > 3 * 1500, "{} items", alone.0.len());
        assert_eq!(alone.2.len(), 1, "one link across the subvolume: {:?}", alone.2);
        if xattrs {
            assert!(alone.0.iter().any(|(_, k, _)| k.item_type == XATTR_ITEM_KEY));
        }
        for threads in [2, 3, 8] {
            let helped = seen(threads);
            let differ = helped.0.iter().zip(&alone.0).position(|(a, b)| a != b);
            assert!(helped.0.len() == alone.0.len() && differ.is_none(), "{threads} threads: items differ from {differ:?} on");
            assert_eq!((&helped.1, &helped.2), (&alone.1, &alone.2), "{threads} threads");
        }
    }

    /// A sink that takes every write and keeps nothing (and so reads every
    /// file, unlike a counting one).
    #[derive(Default)]
    struct Discard {
        next: u64,
    }

    impl DataSink for Discard {
        fn reserve(&mut self, len: u64, _whole: bool) -> Result<(u64, u64)> {
            self.next += len;
            Ok((self.next - len, len))
        }
        fn write(&mut self, _logical: u64, _data: &[u8]) -> Result<()> {
            Ok(())
        }
    }

    /// A file that grows or shrinks between the walk and the data pass is
    /// refused, not cut to (or padded to) the size its items already say;
    /// it was kept cut, exit 0, while put refused it.
    #[test]
    fn a_file_whose_size_changed_since_the_walk_is_refused() {
        for (name, len) in [("inline", 100usize), ("extent", 20_000)] {
            for grow in [true, false] {
                let d = tempfile::tempdir().unwrap();
                let f = d.path().join(name);
                std::fs::write(&f, vec![7u8; len]).unwrap();
                let scan = scan(d.path(), &ScanOptions { threads: 1, ..test_opts() }).unwrap();
                assert!(write_data(&scan, &mut Discard::default(), &mut |_, _| {}).is_ok(), "{name}: unchanged");
                let now = if grow { len + 1 } else { len - 1 };
                std::fs::write(&f, vec![7u8; now]).unwrap();
                let e = write_data(&scan, &mut Discard::default(), &mut |_, _| {}).err().map(|e| e.to_string()).unwrap_or_default();
                assert!(e.contains("changed while being copied") && e.contains(&format!("{now} bytes now")), "{name} {len} → {now}: {e}");
            }
        }
    }

    #[test]
    fn csum_items_merge_contiguous_sectors_and_split_at_the_limit() {
        let opts = ScanOptions { csum: CsumType::Sha256, ..test_opts() };
        let max = max_csum_item_bytes(4096, 32);
        let mut out = DataOut {
            items: ItemSorter::default(),
            generation: 1,
            extents: Spill::default(),
            extent_count: 0,
            csum: None,
            csums: Spill::default(),
            max_csum_bytes: max,
        };
        let sums: Vec<u8> = (0..300u32).flat_map(|i| [i as u8; 32]).collect();
        // Two pieces that continue each other, then one far away.
        out.sums(1 << 20, &sums[..100 * 32], 4096, 32, &opts).unwrap();
        out.sums((1 << 20) + 100 * 4096, &sums[100 * 32..], 4096, 32, &opts).unwrap();
        out.sums(1 << 30, &[1; 32], 4096, 32, &opts).unwrap();
        assert!(out.sums(1 << 20, &[1; 32], 4096, 32, &opts).is_err(), "csums must come in address order");
        out.flush_csums(&opts).unwrap();
        out.csums.seal().unwrap();
        let r = DataResult { items: Vec::new(), extents: Spill::default(), extent_count: 0, csums: out.csums };
        let mut items = Vec::new();
        let mut it = r.csum_items();
        while let Some(i) = it.next_item().unwrap() {
            items.push(i);
        }
        assert!(items.iter().all(|i| i.1.len() <= max));
        assert_eq!(items.iter().map(|i| i.1.len()).sum::<usize>(), 301 * 32);
        assert_eq!(items.last().map(|i| i.0.offset), Some(1 << 30));
        // Consecutive items continue where the previous one ended.
        assert_eq!(items[1].0.offset, (1 << 20) + (items[0].1.len() as u64 / 32) * 4096);
    }
}
