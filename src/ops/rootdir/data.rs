//! The second pass of `--rootdir`: file data read (on worker threads, in
//! order), compressed where asked and it shrinks, checksummed and written
//! into data chunks through a [`DataSink`]; returns the file extent, extent
//! and checksum items that refer to it.

use std::collections::BTreeMap;
use std::fs::File;

use super::scan::{
    inline_content, inline_extent, inode_item, max_csum_item_bytes, regular_extent, Content, DataSource, Scan, ScanOptions, COPY_PIECE,
    MAX_EXTENT_SIZE, MAX_UNCOMPRESSED,
};
use crate::error::{Error, Result};
use crate::format::compress::{self, Compression};
use crate::format::encode;
use crate::format::items::{extref_hash, name_hash, DirEntry, ExtentInfo, ExtentRef, InodeRefEntry};
use crate::format::ondisk::*;
use crate::format::{FileType, Key};
use crate::ops::host::round_up;
use crate::ops::pipeline::ordered_map;
use crate::tree::builder::TreeItem;

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

/// What the data pass produced.
pub(crate) struct DataResult {
    /// The items of every subvolume tree: (tree id, sorted items), 5 first.
    pub(crate) fs_trees: Vec<(u64, Vec<TreeItem>)>,
    /// EXTENT_ITEMs for data extents.
    pub(crate) extent_items: Vec<TreeItem>,
    /// EXTENT_CSUM items.
    pub(crate) csum_items: Vec<TreeItem>,
    /// (logical, disk bytes) of every data extent, for block group accounting.
    pub(crate) extents: Vec<(u64, u64)>,
}

/// One piece of file data for the workers of [`write_data`].
struct DataJob {
    /// Index into `Scan::inodes`.
    inode: usize,
    kind: JobKind,
}

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
    Inline(Content),
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

/// Worker threads for the data pass: one per core unless told.
fn data_workers(opts: &ScanOptions) -> usize {
    match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The data jobs of every inode, in inode order.
fn data_jobs(scan: &Scan) -> impl Iterator<Item = DataJob> + Send + '_ {
    scan.inodes.iter().enumerate().flat_map(|(inode, i)| {
        let mut jobs = Vec::new();
        match &i.content {
            Content::InlineFile => jobs.push(DataJob { inode, kind: JobKind::Inline }),
            Content::Ranges(ranges) => {
                // The kernel never compresses a file without checksums (or written in place).
                let compress = if i.flags & (INODE_NODATASUM | INODE_NODATACOW) != 0 { None } else { i.compress };
                let sums = i.flags & INODE_NODATASUM == 0;
                let step = if compress.is_some() { MAX_UNCOMPRESSED } else { COPY_PIECE };
                for &(start, end) in ranges {
                    let mut pos = start;
                    while pos < end {
                        let len = (end - pos).min(step);
                        jobs.push(DataJob { inode, kind: JobKind::Piece { pos, len, range_end: end, compress, sums } });
                        pos += len;
                    }
                }
            }
            _ => {}
        }
        jobs
    })
}

/// Consecutive jobs grouped up to about 1 MiB of file data or 256 jobs.
fn job_batches(jobs: impl Iterator<Item = DataJob> + Send) -> impl Iterator<Item = Vec<DataJob>> + Send {
    const BATCH_BYTES: u64 = 1 << 20;
    const BATCH_JOBS: usize = 256;
    let mut jobs = jobs;
    std::iter::from_fn(move || {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        for job in jobs.by_ref() {
            bytes += match job.kind {
                JobKind::Inline => 1 << 12,
                JobKind::Piece { len, .. } => len,
            };
            batch.push(job);
            if bytes >= BATCH_BYTES || batch.len() >= BATCH_JOBS {
                break;
            }
        }
        (!batch.is_empty()).then_some(batch)
    })
}

/// Read, compress and checksum one job (on a worker thread).
fn run_job(scan: &Scan, job: &DataJob, dry: bool) -> Result<JobDone> {
    let opts = &scan.opts;
    let i = &scan.inodes[job.inode];
    match job.kind {
        JobKind::Inline => {
            let mut buf = vec![0u8; i.size as usize];
            scan.data.open(i)?.read_exact_at(&mut buf, 0)?;
            // The kernel never compresses a file without checksums (or in place).
            let compress = if i.flags & (INODE_NODATASUM | INODE_NODATACOW) != 0 { None } else { i.compress };
            Ok(JobDone::Inline(inline_content(buf, compress, opts.sectorsize)))
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
    /// Items of every subvolume tree, keyed (tree id, key): one sorted map for all.
    fs: BTreeMap<(u64, Key), Vec<u8>>,
    extent_items: Vec<TreeItem>,
    extents: Vec<(u64, u64)>,
    /// Csums of sectors: (logical, csum bytes), merged into runs later.
    sector_csums: Vec<(u64, Vec<u8>)>,
    /// File bytes each inode's extents cover.
    nbytes: Vec<u64>,
}

impl DataOut {
    /// A regular extent of `covered` file bytes at `file_pos`, on disk at `disk`.
    #[allow(clippy::too_many_arguments)]
    fn extent(&mut self, scan: &Scan, inode: usize, file_pos: u64, disk: (u64, u64), ram: u64, comp: u8, covered: u64) -> Result<()> {
        let i = &scan.inodes[inode];
        let gen = scan.opts.generation;
        self.fs.insert((i.subvol, Key::new(i.ino, EXTENT_DATA_KEY, file_pos)), regular_extent(gen, ram, comp, disk.0, disk.1, covered));
        self.extent_items.push(TreeItem::new(Key::new(disk.0, EXTENT_ITEM_KEY, disk.1), data_extent_item(gen, i.subvol, i.ino, file_pos)?));
        self.extents.push(disk);
        self.nbytes[inode] += covered;
        Ok(())
    }

    /// The csums of consecutive sectors from `logical`.
    fn sums(&mut self, logical: u64, sums: &[u8], sector: u64, csum_size: usize) {
        for (n, c) in sums.chunks(csum_size.max(1)).enumerate() {
            self.sector_csums.push((logical + n as u64 * sector, c.to_vec()));
        }
    }
}

/// The csums of the sectors in bytes `from..to` of a piece (empty stays empty).
fn sector_slice(sums: &[u8], from: u64, to: u64, sector: u64, csum_size: usize) -> &[u8] {
    if sums.is_empty() {
        return sums;
    }
    &sums[(from / sector) as usize * csum_size..(to / sector) as usize * csum_size]
}

/// An uncompressed extent being filled by consecutive pieces.
struct OpenExtent {
    inode: usize,
    /// File offset and logical address where it starts.
    file_pos: u64,
    logical: u64,
    granted: u64,
    used: u64,
}

/// Copy every regular file's data into the data chunks and produce the
/// subvolumes' items, the data EXTENT_ITEMs and the csum items. Reading,
/// compressing and checksumming run on [`ScanOptions::threads`] workers;
/// placing (the addresses follow from every earlier extent's size) runs here,
/// in inode order, so the result never depends on the number of workers.
/// `progress` is told the file bytes done so far and the total.
pub(crate) fn write_data(scan: &Scan, sink: &mut dyn DataSink, progress: &mut dyn FnMut(u64, u64)) -> Result<DataResult> {
    let opts = &scan.opts;
    let gen = opts.generation;
    let sector = opts.sectorsize as u64;
    let csum_size = opts.csum.size();
    let mut out = DataOut {
        fs: BTreeMap::new(),
        extent_items: Vec::new(),
        extents: Vec::new(),
        sector_csums: Vec::new(),
        nbytes: vec![0u64; scan.inodes.len()],
    };

    // ---- file data, in inode order ----
    let dry = sink.dry();
    let workers = data_workers(opts);
    let mut open: Option<OpenExtent> = None;
    let mut done_bytes = 0u64;
    let total_bytes: u64 = scan
        .inodes
        .iter()
        .map(|i| match &i.content {
            Content::InlineFile => i.size,
            Content::Ranges(r) => r.iter().map(|r| r.1 - r.0).sum(),
            _ => 0,
        })
        .sum();
    let mut consume = |job: DataJob, done: Result<JobDone>| -> Result<()> {
        let i = &scan.inodes[job.inode];
        match (job.kind, done?) {
            (JobKind::Inline, JobDone::Inline(Content::Inline(data, compression))) => {
                out.fs.insert((i.subvol, Key::new(i.ino, EXTENT_DATA_KEY, 0)), inline_extent(gen, i.size, compression, data));
                out.nbytes[job.inode] = i.size;
                done_bytes += i.size;
            }
            (JobKind::Piece { pos, len, .. }, JobDone::Piece { compressed: Some((c, ram, kind)), sums, .. }) => {
                let disk_len = c.len() as u64;
                let (logical, _) = sink.reserve(disk_len, true)?;
                sink.write(logical, &c)?;
                out.sums(logical, &sums, sector, csum_size);
                out.extent(scan, job.inode, pos, (logical, disk_len), ram, kind, len)?;
                done_bytes += len;
            }
            (JobKind::Piece { pos, len, range_end, compress, .. }, JobDone::Piece { compressed: None, raw, sums, source }) => {
                // Where these bytes also lie: the host file, or a contiguous
                // archive member.
                let from: Option<(&File, u64)> = match (&source, &scan.data) {
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
                        Some(o) if o.inode == job.inode && o.file_pos + o.used == pos + off => o,
                        _ => {
                            let want = if compress.is_some() { len - off } else { (range_end - pos - off).min(MAX_EXTENT_SIZE) };
                            let (logical, granted) = sink.reserve(want, false)?;
                            open.insert(OpenExtent { inode: job.inode, file_pos: pos + off, logical, granted, used: 0 })
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
                    out.sums(at, sector_slice(&sums, off, off + n, sector, csum_size), sector, csum_size);
                    cur.used += n;
                    off += n;
                    if cur.used == cur.granted {
                        if let Some(o) = open.take() {
                            out.extent(scan, o.inode, o.file_pos, (o.logical, o.granted), o.granted, COMPRESS_NONE, o.granted)?;
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
    ordered_map(
        job_batches(data_jobs(scan)),
        workers,
        4 * workers,
        |batch| batch.iter().map(|job| run_job(scan, job, dry)).collect::<Vec<_>>(),
        |batch, results| batch.into_iter().zip(results).try_for_each(|(job, done)| consume(job, done)),
    )?;
    if let Some(o) = open {
        return Err(Error::Invalid(format!("data pass: extent at {} left open (internal)", o.logical)));
    }
    let DataOut { mut fs, mut extent_items, extents, sector_csums, nbytes } = out;
    let append = |fs: &mut BTreeMap<(u64, Key), Vec<u8>>, key: (u64, Key), data: &[u8]| fs.entry(key).or_default().extend_from_slice(data);

    // ---- items, in inode order ----
    for (idx, i) in scan.inodes.iter().enumerate() {
        let tree = i.subvol;
        let k = |objectid: u64, item_type: u8, offset: u64| (tree, Key::new(objectid, item_type, offset));
        let mut nbytes = nbytes[idx];
        match &i.content {
            Content::None | Content::InlineFile => {}
            Content::Inline(data, compression) => {
                let ram = if i.kind == FileType::Symlink { data.len() as u64 } else { i.size };
                fs.insert(k(i.ino, EXTENT_DATA_KEY, 0), inline_extent(gen, ram, *compression, data.clone()));
                nbytes = ram;
            }
            Content::Ranges(ranges) => {
                // Without NO_HOLES every hole has an extent item of its own.
                let mut file_end = 0u64;
                for &(start, end) in ranges {
                    if !opts.no_holes && start > file_end {
                        let v = regular_extent(gen, start - file_end, 0, 0, 0, start - file_end);
                        fs.insert(k(i.ino, EXTENT_DATA_KEY, file_end), v);
                    }
                    file_end = end;
                }
                let size_end = round_up(i.size, sector);
                if !opts.no_holes && size_end > file_end {
                    let v = regular_extent(gen, size_end - file_end, 0, 0, 0, size_end - file_end);
                    fs.insert(k(i.ino, EXTENT_DATA_KEY, file_end), v);
                }
            }
        }
        if matches!(i.content, Content::None) && i.kind == FileType::Regular && i.size > 0 && !opts.no_holes {
            // An all-hole file still needs its hole described without NO_HOLES.
            let len = round_up(i.size, sector);
            fs.insert(k(i.ino, EXTENT_DATA_KEY, 0), regular_extent(gen, len, 0, 0, 0, len));
        }
        let item = inode_item(i, opts, nbytes);
        fs.insert(k(i.ino, INODE_ITEM_KEY, 0), encode::inode_item(&item));
        let max_item = crate::tree::builder::max_item_size(opts.nodesize);
        for (parent, index, name) in &i.names {
            let entry = InodeRefEntry { parent: *parent, index: *index, name: name.clone() };
            let v = encode::inode_refs(std::slice::from_ref(&entry))?;
            let key = k(i.ino, INODE_REF_KEY, *parent);
            let held = fs.get(&key).map_or(0, Vec::len);
            if held > 0 && held + v.len() > max_item {
                // The INODE_REF item for this directory is full (many hard links in one
                // directory): like the kernel, continue in INODE_EXTREF items.
                let x = encode::inode_extrefs(std::slice::from_ref(&entry))?;
                append(&mut fs, k(i.ino, INODE_EXTREF_KEY, extref_hash(*parent, name)), &x);
            } else {
                append(&mut fs, key, &v);
            }
        }
        for (name, value) in &i.xattrs {
            let v = encode::dir_item(&DirEntry {
                location: Key::MIN,
                transid: gen,
                dir_type: FT_XATTR,
                name: name.clone(),
                data: value.clone(),
            })?;
            append(&mut fs, k(i.ino, XATTR_ITEM_KEY, name_hash(name)), &v);
        }
        for (name, location, kind, index) in &i.entries {
            let v = encode::dir_item(&DirEntry {
                location: *location,
                transid: gen,
                dir_type: kind.dir_type(),
                name: name.clone(),
                data: Vec::new(),
            })?;
            append(&mut fs, k(i.ino, DIR_ITEM_KEY, name_hash(name)), &v);
            fs.insert(k(i.ino, DIR_INDEX_KEY, *index), v);
        }
    }
    let max_item = crate::tree::builder::max_item_size(opts.nodesize);
    let mut fs_trees: Vec<(u64, Vec<TreeItem>)> = Vec::new();
    for ((tree, key), v) in fs {
        if v.len() > max_item {
            return Err(Error::Unsupported(format!(
                "item {key} of inode {} in subvolume {tree} is {} bytes, more than a {}-byte tree block holds (too many names or hash collisions)",
                key.objectid,
                v.len(),
                opts.nodesize
            )));
        }
        match fs_trees.last_mut() {
            Some((t, items)) if *t == tree => items.push(TreeItem::new(key, v)),
            _ => fs_trees.push((tree, vec![TreeItem::new(key, v)])),
        }
    }
    extent_items.sort_by_key(|i| i.key);
    let csum_items = csum_runs(sector_csums, sector, opts)?;
    Ok(DataResult { fs_trees, extent_items, csum_items, extents })
}

/// Merge per-sector csums into EXTENT_CSUM items over contiguous sectors.
fn csum_runs(mut sectors: Vec<(u64, Vec<u8>)>, sector: u64, opts: &ScanOptions) -> Result<Vec<TreeItem>> {
    sectors.sort_by_key(|s| s.0);
    let max = max_csum_item_bytes(opts.nodesize, opts.csum.size());
    let mut items: Vec<TreeItem> = Vec::new();
    let mut next = u64::MAX;
    for (logical, c) in sectors {
        match items.last_mut() {
            Some(it) if logical == next && it.data.len() + c.len() <= max => it.data.extend_from_slice(&c),
            _ => items.push(TreeItem::new(Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, logical), c)),
        }
        next = logical + sector;
    }
    items.into_iter().map(|it| Ok(TreeItem::new(it.key, encode::csum_item(it.data, opts.csum)?))).collect()
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
    use crate::format::CsumType;
    use crate::ops::rootdir::scan::{scan, test_opts, SubvolSpec};
    use std::path::PathBuf;

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
        let ino = |sv: u64, name: &str| {
            scan.inodes.iter().find(|i| i.subvol == sv && i.names.iter().any(|n| n.2 == name.as_bytes())).map(|i| (i.ino, i.names.len()))
        };
        assert_eq!(ino(256, "f"), Some((257, 1)));
        // z: f and g are one inode (257), y is a subvolume, not an inode of z.
        assert_eq!(ino(257, "f"), Some((257, 2)));
        assert_eq!(ino(257, "g"), Some((257, 2)));
        assert_eq!(ino(258, ".."), Some((256, 1)));
        assert_eq!(scan.warnings.len(), 1, "{:?}", scan.warnings);
        let z_top = scan.inodes.iter().find(|i| i.subvol == 257 && i.ino == 256).unwrap();
        let y_entry = z_top.entries.iter().find(|e| e.0 == b"y").unwrap();
        assert_eq!(y_entry.1, Key::new(258, ROOT_ITEM_KEY, 0));
        // --compress zstd:z reaches z's files; none:z/y switches it off below.
        assert_eq!(z_top.compress.map(|c| c.0), Some(Compression::Zstd));
        assert_eq!(scan.inodes.iter().find(|i| i.subvol == 258).unwrap().compress, None);
        let r = write_data(&scan, &mut CountingSink::default(), &mut |_, _| {}).unwrap();
        assert_eq!(r.fs_trees.iter().map(|t| t.0).collect::<Vec<_>>(), vec![5, 256, 257, 258]);
    }

    #[test]
    fn csum_items_merge_contiguous_sectors_and_split_at_the_limit() {
        let opts = ScanOptions { csum: CsumType::Sha256, ..test_opts() };
        let mut sectors: Vec<(u64, Vec<u8>)> = (0..300u64).map(|i| ((1 << 20) + i * 4096, vec![i as u8; 32])).collect();
        sectors.push((1 << 30, vec![1; 32]));
        let items = csum_runs(sectors, 4096, &opts).unwrap();
        let max = max_csum_item_bytes(4096, 32);
        assert!(items.iter().all(|i| i.data.len() <= max));
        assert_eq!(items.iter().map(|i| i.data.len()).sum::<usize>(), 301 * 32);
        assert_eq!(items.last().map(|i| i.key.offset), Some(1 << 30));
        // Consecutive items continue where the previous one ended.
        assert_eq!(items[1].key.offset, (1 << 20) + (items[0].data.len() as u64 / 32) * 4096);
    }
}
