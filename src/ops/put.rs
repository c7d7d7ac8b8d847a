//! `put`: host files, directories and symlinks copied into a filesystem,
//! in one transaction.
//!
//! The host side runs ahead on worker threads: a walk lists the trees in
//! copy order, and workers stat each entry, read its xattrs and symlink
//! target, and read small files whole. This thread takes their results in
//! walk order and makes the inodes, names, extents and checksums, so the
//! image does not depend on the number of workers or on which finished
//! first; what runs ahead is bounded (a few batches, each with at most
//! [`BATCH_PREREAD`] bytes of file data).

use std::fs::Metadata;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::limits;
use crate::format::*;
use crate::fs::direct::{Bounce, PAGE};
use crate::fs::path::ImagePath;
use crate::fs::txn::{Place, Transaction, WriteOpts, WriteReport};
use crate::fs::InodeId;
use crate::ops::host::HostId;
use crate::ops::pipeline::ordered_map;
use crate::ops::write::{begin, dir_at, slash_means_dir, split, WRITE_STEP};
use crate::volumes::OpenOptions;

/// Copy host files, directories (recursively) and symlinks into the
/// filesystem, in one transaction: `put IMAGE SRC... DEST`. With one SRC and
/// a DEST that does not exist, SRC is copied *as* DEST; otherwise DEST must be
/// a directory and each SRC goes into it under its own name.
pub fn put<'p>(opts: &OpenOptions, srcs: &[PathBuf], dest: impl Into<ImagePath<'p>>) -> Result<(u64, Vec<String>)> {
    put_with_progress(opts, srcs, dest, &|_, _| {})
}

/// [`put`], telling `progress` the data bytes copied so far and in all as it goes.
pub fn put_with_progress<'p>(
    opts: &OpenOptions,
    srcs: &[PathBuf],
    dest: impl Into<ImagePath<'p>>,
    progress: &dyn Fn(u64, u64),
) -> Result<(u64, Vec<String>)> {
    let mut tx = begin(opts)?;
    let files = put_in_with(&mut tx, srcs, dest.into(), progress, host_workers())?;
    let warnings = tx.commit_with_warnings()?;
    Ok((files, warnings))
}

/// [`put`] inside a running transaction (not committed); the files copied.
#[cfg(test)]
pub(crate) fn put_in<'p>(tx: &mut Transaction, srcs: &[PathBuf], dest: impl Into<ImagePath<'p>>) -> Result<u64> {
    put_in_with(tx, srcs, dest.into(), &|_, _| {}, host_workers())
}

/// Threads that run the host side ahead: one per core (at most 8).
fn host_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

fn put_in_with(tx: &mut Transaction, srcs: &[PathBuf], dest: ImagePath<'_>, progress: &dyn Fn(u64, u64), workers: usize) -> Result<u64> {
    // Fail before writing anything when the data cannot fit, or when a
    // name, symlink target or xattr is beyond what the kernel accepts.
    let fs = tx.fs();
    let (ss, nodesize, csum) = (fs.sectorsize, fs.sb.nodesize.get(), fs.csum.size());
    let mut need = HostNeed::default();
    for s in srcs {
        host_scan(s, ss, nodesize, csum, &mut need)?;
    }
    tx.store.ensure_space(need.data, need.metadata())?;
    let need = need.data;
    let targets: Vec<(Place, Vec<u8>, &PathBuf)> = match tx.resolve(dest)? {
        Some(p) if p.dir_type == FT_DIR => srcs
            .iter()
            .map(|s| {
                let name = s
                    .file_name()
                    .map(|n| n.as_encoded_bytes().to_vec())
                    .ok_or_else(|| Error::Invalid(format!("{}: no file name", s.display())))?;
                tx.ensure_writable(p.root())?;
                Ok((p, name, s))
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(Error::Invalid(format!("{dest} exists and is not a directory"))),
        None if srcs.len() == 1 => {
            let is_dir = std::fs::symlink_metadata(&srcs[0]).is_ok_and(|m| m.is_dir());
            slash_means_dir(dest, is_dir)?;
            let (d, n) = split(dest)?;
            vec![(dir_at(tx, d, false)?, n, &srcs[0])]
        }
        None => return Err(Error::NotFound(format!("{dest}: no such directory"))),
    };
    for (_, name, src) in &targets {
        limits::check_entry_name(name).map_err(|e| Error::Invalid(format!("{}: {e}", src.display())))?;
    }
    let mut st = PutState { files: 0, copied: Copied::new(), bytes: 0, total: need, progress, open: Vec::new() };
    let ss = u64::from(ss);
    let walk = Walk {
        targets: targets.into_iter().map(|(at, name, src)| (at, name, src.clone())).collect::<Vec<_>>().into_iter(),
        stack: Vec::new(),
        failed: false,
    };
    ordered_map(
        batches(walk),
        workers,
        2 * workers,
        |batch| prepare_batch(batch, ss),
        |batch, prepared| {
            for (job, p) in batch.drain(..).zip(prepared.drain(..)) {
                put_job(tx, job, p, &mut st)?;
            }
            Ok(())
        },
    )?;
    Ok(st.files)
}

/// What a put carries from file to file: files copied, hard links seen, data
/// bytes written (of `total`, for `progress`).
struct PutState<'a> {
    files: u64,
    copied: Copied,
    bytes: u64,
    total: u64,
    progress: &'a dyn Fn(u64, u64),
    /// The directories made and not finished yet, the innermost last.
    open: Vec<OpenDir>,
}

/// What a host tree takes once copied in: data bytes (each data range
/// rounded to sectors; holes take nothing) and the bytes of the tree items
/// that describe it (inodes, names, inline data, extents, checksums, xattrs).
#[derive(Default)]
struct HostNeed {
    data: u64,
    items: u64,
}

impl HostNeed {
    /// Tree block bytes for the items: half as much again for leaves not
    /// full after splits, the nodes above them and the copies of the blocks
    /// on the way down to each change. An estimate that errs high, so that a
    /// put that cannot fit fails before it writes (the kernel's reservations
    /// err the same way): /usr/share's 43k files estimate 80 MiB, and take
    /// 55 MiB once committed.
    fn metadata(&self) -> u64 {
        self.items.saturating_add(self.items / 2).saturating_add(1 << 20)
    }
}

/// An item's header in a leaf.
const ITEM_HEADER: u64 = 25;

/// Add what host path `top` and everything below it takes to `need`, after
/// checking that every name, symlink target and xattr is within the
/// kernel's limits and that every file can be read (and holds no bytes past
/// its size, as /proc files do). Iterative (a stack of directories still to
/// list): a deep host tree must not overflow the thread's stack.
fn host_scan(top: &Path, ss: u32, nodesize: u32, csum: usize, need: &mut HostNeed) -> Result<()> {
    let stat = |p: &Path| std::fs::symlink_metadata(p).map_err(|e| Error::io(p, "stat", e));
    let meta = stat(top)?;
    scan_entry(top, &meta, ss, nodesize, csum, need)?;
    // Directories still to list; the other entries are looked at as their
    // directory is read, so a directory of a million files is never held.
    let mut dirs: Vec<PathBuf> = if meta.is_dir() { vec![top.to_path_buf()] } else { Vec::new() };
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, "readdir", e))? {
            let e = e.map_err(|e| Error::io(&d, "readdir", e))?;
            let p = e.path();
            limits::check_entry_name(e.file_name().as_encoded_bytes()).map_err(|err| Error::Invalid(format!("{}: {err}", p.display())))?;
            let meta = stat(&p)?;
            scan_entry(&p, &meta, ss, nodesize, csum, need)?;
            if meta.is_dir() {
                dirs.push(p);
            }
        }
    }
    Ok(())
}

/// [`host_scan`]'s look at one entry, `meta` its lstat.
fn scan_entry(p: &Path, meta: &Metadata, ss: u32, nodesize: u32, csum: usize, need: &mut HostNeed) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ss64 = u64::from(ss);
    let what = |e: Error| Error::Invalid(format!("{}: {e}", p.display()));
    // Its name three times (dir item, dir index, inode ref) and its inode.
    let name = p.file_name().map_or(0, |n| n.len() as u64);
    let mut items = 3 * (name + ITEM_HEADER) + 70 + 160 + ITEM_HEADER;
    for (name, v) in crate::ops::host::read_xattrs(p)? {
        limits::check_xattr(&name, Some(&v), nodesize).map_err(what)?;
        items += 30 + (name.len() + v.len()) as u64 + ITEM_HEADER;
    }
    if meta.is_symlink() {
        // EINVAL: no longer a symlink, since the stat just before.
        let t = std::fs::read_link(p).map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::INVAL.raw_os_error() => {
                crate::ops::host::changed(p, "no longer the symlink first looked at")
            }
            _ => Error::io(p, "readlink", e),
        })?;
        limits::check_symlink_target(t.as_os_str().as_encoded_bytes(), nodesize, ss).map_err(what)?;
        items += 21 + t.as_os_str().len() as u64 + ITEM_HEADER;
    } else if meta.is_file() {
        let size = meta.len();
        let whole = size.div_ceil(ss64).saturating_mul(ss64);
        // A file whose blocks cover its size has no hole to leave out:
        // its size, in sectors, bounds what it takes, and a check that
        // it can be read does for opening it. A file that may be sparse
        // is opened and asked for its data ranges; one with no blocks at
        // all (empty, or a /proc or /sys file, which says 0 or 4096) is
        // also asked whether it holds bytes past its size, which the
        // copy would refuse after writing what came before it.
        let data = if meta.blocks().saturating_mul(512) >= size && meta.blocks() > 0 {
            rustix::fs::accessat(rustix::fs::CWD, p, rustix::fs::Access::READ_OK, rustix::fs::AtFlags::EACCESS)
                .map_err(|e| Error::io(p, "open", e.into()))?;
            whole
        } else {
            let f = crate::ops::host::open_source(p, (meta.dev(), meta.ino()))?;
            if meta.blocks() == 0 {
                past_size(&f, p, size)?;
            }
            crate::ops::host::data_ranges(&f, p, size, ss64)?.iter().map(|r| r.1 - r.0).sum()
        };
        need.data = need.data.saturating_add(data);
        items += if size <= crate::fs::txn::MAX_INLINE && size < ss64 {
            21 + size + ITEM_HEADER
        } else {
            // Extents of at most 128 MiB: a file extent item and an extent
            // item each, and a checksum per sector.
            let extents = data.div_ceil(128 << 20).max(1);
            extents * 2 * (53 + ITEM_HEADER) + (data / ss64) * csum as u64
        };
    }
    need.items = need.items.saturating_add(items);
    Ok(())
}

/// A copied file's size is what was copied: one with bytes past it (/proc
/// and /sys files say 0 or 4096, a file grows while copied) is refused, not
/// cut short.
fn past_size(f: &std::fs::File, src: &Path, size: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut past = [0u8; 1];
    if f.read_at(&mut past, size).map_err(|e| Error::io(src, format!("read at {size}"), e))? != 0 {
        return Err(Error::Invalid(format!(
            "{}: holds bytes past its size ({size}), as /proc and /sys files do or a file written while it is copied; not copied",
            src.display()
        )));
    }
    Ok(())
}

/// Host files copied so far, by (st_dev, st_ino), for hard links inside the
/// copied trees: the second name links to the inode the first made.
type Copied = std::collections::HashMap<HostId, u64>;

/// Entries handed to a worker at once: one small file is far less work than
/// handing it between threads.
const BATCH: usize = 64;

/// File data a worker reads ahead for one batch, at most; a file is read
/// ahead only whole, so one larger than this (or than what the batch has
/// left) is read here, in steps, as it is copied.
const BATCH_PREREAD: u64 = 2 << 20;

/// One step of the walk, in the order the entries are copied: each host
/// directory's entries by name, depth first, a directory finished once
/// its entries are in.
enum PutJob {
    /// Copy host path `src` as `name`: into `at` for a SRC argument, into
    /// the innermost open directory otherwise. `dir`: the walk listed it as a
    /// directory, and its entries follow (then a `Leave`).
    /// `id`: its (device, inode) as the walk saw it from its directory
    /// (`None` for a SRC argument that could not be stat'ed): what is copied
    /// must be that file, not one put in its place or reached through a
    /// directory swapped for a symlink meanwhile.
    Entry { at: Option<Place>, name: Vec<u8>, src: PathBuf, dir: bool, id: Option<HostId> },
    /// The innermost open directory has all its entries.
    Leave,
    /// The walk could not list a directory; nothing after it.
    Failed(Error),
}

/// What a worker found for an entry.
struct Prepared {
    meta: Metadata,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    kind: Kind,
}

enum Kind {
    Dir,
    Symlink(Vec<u8>),
    /// A regular file. `ahead`: its data ranges (holes stay holes) already
    /// read, as (file offset, bytes), and no byte found past its size;
    /// `None`: opened and read while it is copied.
    File {
        ahead: Option<Vec<(u64, Bounce)>>,
    },
    /// Fifos, sockets, character and block devices.
    Other,
}

/// A directory made and not finished: its owner, mode, times and xattrs go
/// on once its entries are in (adding entries stamps it).
struct OpenDir {
    root: u64,
    ino: u64,
    meta: Metadata,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The walk of the host trees to copy, in copy order. Iterative (a stack of
/// each open directory's remaining entries, sorted by name): a deep host tree
/// must not overflow the thread's stack.
struct Walk {
    targets: std::vec::IntoIter<(Place, Vec<u8>, PathBuf)>,
    stack: Vec<crate::ops::host::Listing>,
    failed: bool,
}

impl Walk {
    /// The job for one entry; a directory's entries are listed now, so that
    /// a directory that cannot be read stops the walk where it is.
    fn entry(&mut self, at: Option<Place>, name: Vec<u8>, src: PathBuf, dir: bool, id: Option<HostId>) -> PutJob {
        if let (true, Some(id)) = (dir, id) {
            match crate::ops::host::Listing::read(&src, id, false) {
                Ok(kids) => self.stack.push(kids),
                Err(e) => {
                    self.failed = true;
                    return PutJob::Failed(e);
                }
            }
        }
        PutJob::Entry { at, name, src, dir, id }
    }
}

impl Iterator for Walk {
    type Item = PutJob;
    fn next(&mut self) -> Option<PutJob> {
        if self.failed {
            return None;
        }
        if let Some(top) = self.stack.last_mut() {
            return Some(match top.next() {
                Some(e) => self.entry(None, e.name, e.path, e.is_dir, Some(e.id)),
                None => {
                    self.stack.pop();
                    PutJob::Leave
                }
            });
        }
        let (at, name, src) = self.targets.next()?;
        // One that cannot be stat'ed is no directory here: the worker's own
        // stat reports it.
        let m = std::fs::symlink_metadata(&src).ok();
        let dir = m.as_ref().is_some_and(|m| m.is_dir());
        let id = m.map(|m| (std::os::unix::fs::MetadataExt::dev(&m), std::os::unix::fs::MetadataExt::ino(&m)));
        Some(self.entry(Some(at), name, src, dir, id))
    }
}

/// The walk's jobs in batches of [`BATCH`].
fn batches(mut walk: Walk) -> impl Iterator<Item = Vec<PutJob>> + Send {
    std::iter::from_fn(move || {
        let batch: Vec<PutJob> = walk.by_ref().take(BATCH).collect();
        (!batch.is_empty()).then_some(batch)
    })
}

/// A worker's part for a batch: each entry's stat, xattrs, symlink target,
/// and small files' data (at most [`BATCH_PREREAD`] bytes in all).
fn prepare_batch(batch: &[PutJob], ss: u64) -> Vec<Option<Result<Prepared>>> {
    let mut budget = BATCH_PREREAD;
    batch
        .iter()
        .map(|job| match job {
            PutJob::Entry { src, id, .. } => Some(prepare(src, *id, ss, &mut budget)),
            PutJob::Leave | PutJob::Failed(_) => None,
        })
        .collect()
}

fn prepare(src: &Path, expect: Option<HostId>, ss: u64, budget: &mut u64) -> Result<Prepared> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(src).map_err(|e| Error::io(src, "stat", e))?;
    let id = (meta.dev(), meta.ino());
    if expect.is_some_and(|e| e != id) {
        return Err(crate::ops::host::changed(src, crate::ops::host::ANOTHER_FILE));
    }
    // Its symlink target and xattrs are read from the inode just checked,
    // not by path again.
    let xattrs = crate::ops::host::xattrs_of(src, id, false)?;
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink(crate::ops::host::Pinned::new(src, id, false)?.read_link()?)
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        // Counted as the pages that would hold it (a batch of tiny files
        // takes a page each), by its size: holes are not known before it is
        // opened, and only a file read ahead is opened here, so that the
        // batches in flight hold no descriptors.
        let size = meta.len();
        let pages = size.next_multiple_of(PAGE as u64);
        let ahead = if pages <= *budget {
            *budget -= pages;
            let mut read = Vec::new();
            read_data(src, id, size, ss, u64::MAX, |pos, pages| {
                read.push((pos, pages));
                Ok(())
            })?;
            Some(read)
        } else {
            None
        };
        Kind::File { ahead }
    } else {
        Kind::Other
    };
    Ok(Prepared { meta, xattrs, kind })
}

/// Read the data of regular file `src` (which a stat found to be `id`, of
/// `size` bytes): each data range (holes stay holes) in pieces of at most
/// `step` bytes, handed to `f` with their file offsets; then refused if it
/// holds bytes past `size`.
fn read_data(src: &Path, id: HostId, size: u64, ss: u64, step: u64, mut f: impl FnMut(u64, Bounce) -> Result<()>) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let file = crate::ops::host::open_source(src, id)?;
    for (start, end) in crate::ops::host::data_ranges(&file, src, size, ss)? {
        let mut pos = start;
        let end = end.min(size);
        while pos < end {
            let n = (end - pos).min(step);
            let mut pages = Bounce::zeroed(usize_of(n)?);
            file.read_exact_at(pages.bytes_mut(), pos).map_err(|e| Error::io(src, format!("read at {pos}"), e))?;
            f(pos, pages)?;
            pos += n;
        }
    }
    past_size(&file, src, size)
}

/// A host byte count as a buffer length.
fn usize_of(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::Invalid(format!("{n} bytes do not fit in memory on this host")))
}

/// Copy one entry in, with what `mkfs --rootdir` keeps: type, mode (set-id
/// bits too), owner, nanosecond atime/mtime/ctime, xattrs, device numbers,
/// symlink targets, hard links and holes. A directory is only made here and
/// finished at its `Leave`.
fn put_job(tx: &mut Transaction, job: PutJob, prepared: Option<Result<Prepared>>, st: &mut PutState<'_>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (at, name, src, listed_dir) = match job {
        PutJob::Failed(e) => return Err(e),
        PutJob::Leave => {
            let d = st.open.pop().ok_or_else(|| Error::Internal("put: a directory finished that was never made".into()))?;
            return put_finish(tx, d.root, d.ino, &d.meta, d.xattrs, &mut st.copied);
        }
        PutJob::Entry { at, name, src, dir, .. } => (at, name, src, dir),
    };
    // One transaction however large the put: before each entry, its changed
    // tree blocks are written out once past a budget, not held to the commit.
    tx.write_back_if_over()?;
    let (root, dir) = match (at, st.open.last()) {
        (Some(p), _) => (p.root(), p.ino()),
        (None, Some(d)) => (d.root, d.ino),
        (None, None) => return Err(Error::Internal("put: an entry outside every directory".into())),
    };
    let Prepared { meta, xattrs, kind } = prepared.ok_or_else(|| Error::Internal("put: an entry the workers did not look at".into()))??;
    // The walk descends into what it listed as a directory: one that is
    // something else by the time it is copied (or the reverse) was changed
    // meanwhile, and its entries would go astray.
    if meta.is_dir() != listed_dir {
        return Err(Error::Invalid(format!("{}: changed type while being copied; not copied", src.display())));
    }
    let id = (meta.dev(), meta.ino());
    if !meta.is_dir() && meta.nlink() > 1 {
        if let Some(&ino) = st.copied.get(&id) {
            return tx.link(root, ino, dir, &name).map(|_| ());
        }
    }
    let parent = InodeId { subvol: root, ino: dir };
    let ino = match kind {
        Kind::Symlink(t) => tx.symlink(root, dir, &name, &t)?,
        Kind::Dir => {
            let ino = tx.create(parent, &name, meta.mode(), 0)?.ino;
            st.open.push(OpenDir { root, ino, meta, xattrs });
            return Ok(());
        }
        Kind::File { ahead } => {
            let ino = tx.create(parent, &name, meta.mode(), 0)?.ino;
            let size = meta.len();
            let ss = u64::from(tx.fs().sectorsize);
            let wopts = WriteOpts::default();
            let mut report = WriteReport::default();
            // The new inode's size: where the last write ended.
            let mut written_to = 0;
            let mut wrote = |tx: &mut Transaction, pos: u64, pages: Bounce, st: &mut PutState<'_>| -> Result<()> {
                let n = pages.len() as u64;
                // Pages handed over start on a sector and end on one or at
                // the file's end: the engine writes them as they are.
                tx.write_owned(root, ino, pos, pages, false, &wopts, &mut report)?;
                written_to = pos + n;
                st.bytes = st.bytes.saturating_add(n);
                (st.progress)(st.bytes, st.total);
                Ok(())
            };
            match ahead {
                Some(read) => {
                    for (pos, pages) in read {
                        wrote(tx, pos, pages, st)?;
                    }
                }
                None => read_data(&src, id, size, ss, WRITE_STEP as u64, |pos, pages| wrote(tx, pos, pages, st))?,
            }
            // A file ending in a hole (or all hole) still has its full size.
            if written_to < size && tx.read_inode(root, ino)?.size.get() < size {
                tx.truncate(root, ino, size)?;
            }
            st.files += 1;
            ino
        }
        Kind::Other => {
            let ino = tx.create(parent, &name, meta.mode(), 0)?.ino;
            let mut it = tx.read_inode(root, ino)?;
            it.rdev = crate::ops::host::host_rdev_to_btrfs(meta.rdev()).into();
            tx.put_inode(root, ino, &it)?;
            ino
        }
    };
    put_finish(tx, root, ino, &meta, xattrs, &mut st.copied)
}

/// The xattrs, owner, mode and times of a host entry onto inode `ino`.
fn put_finish(
    tx: &mut Transaction,
    root: u64,
    ino: u64,
    meta: &Metadata,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    copied: &mut Copied,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for (n, v) in xattrs {
        tx.set_xattr(root, ino, &n, Some(&v))?;
    }
    // Owner and times last: adding entries and xattrs stamps the inode.
    let mut it = tx.read_inode(root, ino)?;
    let ts = |sec: i64, nsec: i64| crate::format::Timespec { sec: (sec as u64).into(), nsec: (nsec.clamp(0, 999_999_999) as u32).into() };
    it.uid = meta.uid().into();
    it.gid = meta.gid().into();
    it.mode = meta.mode().into();
    it.atime = ts(meta.atime(), meta.atime_nsec());
    it.mtime = ts(meta.mtime(), meta.mtime_nsec());
    it.ctime = ts(meta.ctime(), meta.ctime_nsec());
    tx.put_inode(root, ino, &it)?;
    if meta.nlink() > 1 && !meta.is_dir() {
        copied.insert((meta.dev(), meta.ino()), ino);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Filesystem;
    use crate::volumes::OpenOptions;

    /// A put of many plain files (one SRC each, no directory to walk)
    /// writes its tree blocks out past the budget as a put of one directory
    /// does; an attacker's pass found them all held to the commit (60k
    /// arguments: 569 MiB).
    #[test]
    fn put_of_many_file_arguments_writes_back_between_them() {
        let Some((_tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(1, &[]) else { return };
        let host = tempfile::tempdir().unwrap();
        let srcs: Vec<PathBuf> = (0..60u8)
            .map(|i| {
                let p = host.path().join(format!("f{i}"));
                std::fs::write(&p, vec![i; 100 + usize::from(i)]).unwrap();
                p
            })
            .collect();
        let o = OpenOptions { image: imgs[0].clone(), devices: imgs.to_vec(), writable: true, ..Default::default() };
        let mut tx = Transaction::begin(Filesystem::open(&o).unwrap()).unwrap();
        tx.write_back_at = 0;
        assert_eq!(put_in(&mut tx, &srcs, "/").unwrap(), 60);
        assert!(!tx.written_out.is_empty(), "nothing written out before the commit");
        tx.commit().unwrap();
        let out = std::process::Command::new("btrfs").args(["check", "--readonly"]).arg(&imgs[0]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let fs = Filesystem::open(&OpenOptions { writable: false, ..o }).unwrap();
        for i in 0..60u8 {
            let e = fs.resolve(format!("/f{i}").as_str()).unwrap();
            assert_eq!(fs.read_file_bytes(e.id).unwrap(), vec![i; 100 + usize::from(i)], "f{i}");
        }
    }

    /// A host tree that crosses every seam of the pipeline: batches of
    /// [`BATCH`] entries, directories opened in one batch and finished in
    /// another, files read ahead and files too large for a batch's budget
    /// (read here in steps), sparse files, hard links across batches,
    /// symlinks and a fifo. Returns every regular file's path under `top`.
    fn seam_tree(top: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut file = |p: PathBuf, data: &[u8]| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
            files.push(p);
        };
        for i in 0..150u32 {
            let len = (i as usize * 977) % 9000;
            file(top.join(format!("a/f{i:03}")), &vec![(i % 251) as u8 + 1; len]);
        }
        // Three of 1.5 MiB in a row: the first fits a batch's budget, the
        // next ones do not; then one over the budget on its own.
        for i in 0..3u8 {
            file(top.join(format!("a/m{i}")), &vec![i + 7; 3 << 19]);
        }
        file(top.join("b/big"), &(0..(5u32 << 20) + 123).map(|i| (i % 253) as u8).collect::<Vec<_>>());
        for d in 0..4 {
            let deep: PathBuf = (0..=d).map(|l| format!("d{l}")).collect();
            file(top.join("c").join(&deep).join("leaf"), format!("depth {d}").as_bytes());
        }
        // Sparse: holes at the start, in the middle and at the end; too
        // large to be read ahead.
        let sparse = top.join("c/sparse");
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(&sparse).unwrap();
            f.set_len(3 << 20).unwrap();
            f.write_all_at(&[0xabu8; 5000], 300_000).unwrap();
            f.write_all_at(&[0xcdu8; 4096], 2 << 20).unwrap();
        }
        files.push(sparse);
        // And one small enough to be read ahead, holes and all.
        let small = top.join("c/sparse-small");
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(&small).unwrap();
            f.set_len(64 << 10).unwrap();
            f.write_all_at(&[0x5au8; 3000], 20_000).unwrap();
        }
        files.push(small);
        std::fs::hard_link(top.join("a/f007"), top.join("z-link")).unwrap();
        std::fs::hard_link(top.join("b/big"), top.join("c/d0/big-link")).unwrap();
        std::os::unix::fs::symlink("a/f001", top.join("sym")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, top.join("fifo"), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o640), 0)
            .unwrap();
        files
    }

    /// The image a put makes depends neither on the number of workers nor
    /// on which finished first, and every file reads back as it was.
    #[test]
    fn put_is_the_same_whatever_the_workers() {
        let Some((tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(1, &["-U", "8e3f2a6c-57d1-4c39-a0c5-5a0e3b1f2d4e"]) else { return };
        let host = tempfile::tempdir().unwrap();
        let top = host.path().join("tree");
        let files = seam_tree(&top);
        let mut images = Vec::new();
        for workers in [1, 2, 3, 8] {
            let img = tmp.path().join(format!("w{workers}.img"));
            std::fs::copy(&imgs[0], &img).unwrap();
            let o = OpenOptions { image: img.clone(), devices: vec![img.clone()], writable: true, ..Default::default() };
            let mut tx = Transaction::begin(Filesystem::open(&o).unwrap()).unwrap();
            tx.now = crate::format::Timespec::new(1_700_000_000, 5);
            let n = put_in_with(&mut tx, std::slice::from_ref(&top), "/t".into(), &|_, _| {}, workers).unwrap();
            assert_eq!(n, files.len() as u64, "{workers} workers: files copied");
            tx.commit().unwrap();
            images.push((workers, std::fs::read(&img).unwrap()));
        }
        // Read back only now: reading the host files sets their atime, which
        // a later put would copy.
        let img = tmp.path().join("w2.img");
        let out = std::process::Command::new("btrfs").args(["check", "--readonly"]).arg(&img).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let fs = Filesystem::open(&OpenOptions { image: img.clone(), devices: vec![img], writable: false, ..Default::default() }).unwrap();
        for f in &files {
            let rel = f.strip_prefix(&top).unwrap().to_str().unwrap();
            let e = fs.resolve(format!("/t/{rel}").as_str()).unwrap();
            let (got, want) = (fs.read_file_bytes(e.id).unwrap(), std::fs::read(f).unwrap());
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            assert!(got == want, "{rel}: read back {} bytes, host has {}, first difference at {first:?}", got.len(), want.len());
        }
        // Holes stay holes, read ahead or not: only the sectors holding data
        // have extents with disk bytes.
        for (path, data) in [("/t/c/sparse-small", vec![(16384, 8192)]), ("/t/c/sparse", vec![(299_008, 8192), (2 << 20, 4096)])] {
            let e = fs.resolve(path).unwrap();
            let stored: Vec<(u64, u64)> = fs
                .file_extents(e.id)
                .unwrap()
                .into_iter()
                .filter_map(|(at, x)| match x.kind {
                    crate::format::items::FileExtentKind::Regular { disk_bytenr, num_bytes, .. } if disk_bytenr != 0 => {
                        Some((at, num_bytes))
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(stored, data, "{path}: extents holding data");
        }
        let a = fs.resolve("/t/a/f007").unwrap().id;
        assert_eq!(fs.resolve("/t/z-link").unwrap().id, a, "hard link across batches");
        assert_eq!(fs.resolve("/t/c/d0/big-link").unwrap().id, fs.resolve("/t/b/big").unwrap().id);
        let (_, first) = &images[0];
        for (workers, bytes) in &images[1..] {
            assert!(bytes == first, "the image made with {workers} workers differs from the one made with 1");
        }
    }

    fn job_names(walk: &mut Walk, top: &Path) -> Vec<String> {
        walk.map(|j| match j {
            PutJob::Entry { src, dir, .. } => format!("{}{}", src.strip_prefix(top).unwrap().display(), if dir { "/" } else { "" }),
            PutJob::Leave => "leave".into(),
            PutJob::Failed(e) => format!("failed: {e}"),
        })
        .collect()
    }

    /// The walk lists entries by name, depth first, each directory left
    /// once its entries are listed; one it cannot read ends the walk there.
    #[test]
    fn walk_lists_in_copy_order_and_stops_at_a_directory_it_cannot_read() {
        let host = tempfile::tempdir().unwrap();
        let top = host.path().join("r");
        for p in ["b/y", "a/x", "c"] {
            std::fs::create_dir_all(top.join(p).parent().unwrap()).unwrap();
            std::fs::write(top.join(p), b"1").unwrap();
        }
        let place = Place { id: InodeId { subvol: 5, ino: 256 }, dir_type: FT_DIR };
        let walk = |t: &Path| Walk { targets: vec![(place, b"r".to_vec(), t.to_path_buf())].into_iter(), stack: Vec::new(), failed: false };
        let mut w = walk(&top);
        assert_eq!(job_names(&mut w, host.path()), ["r/", "r/a/", "r/a/x", "leave", "r/b/", "r/b/y", "leave", "r/c", "leave"]);
        // b goes away after its parent was listed: the walk fails there.
        let mut w = walk(&top);
        assert!(matches!(w.next(), Some(PutJob::Entry { dir: true, .. })));
        std::fs::remove_dir_all(top.join("b")).unwrap();
        let names = job_names(&mut w, host.path());
        assert_eq!(names[..3], ["r/a/", "r/a/x", "leave"]);
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names[3].starts_with("failed: ") && names[3].contains("r/b"), "{names:?}");
    }

    /// A directory swapped for a symlink to a tree of the same shape
    /// outside, after its parent was listed, does not lead the copy there:
    /// the walk refuses to list it, and a worker refuses an entry reached
    /// through it.
    #[test]
    fn a_directory_swapped_for_a_symlink_does_not_lead_outside() {
        use std::os::unix::fs::MetadataExt;
        let host = tempfile::tempdir().unwrap();
        let (top, outside) = (host.path().join("r"), host.path().join("outside"));
        for t in [&top, &outside] {
            for p in ["a/x", "b/y"] {
                std::fs::create_dir_all(t.join(p).parent().unwrap()).unwrap();
                std::fs::write(t.join(p), if t == &top { "in" } else { "secret" }).unwrap();
            }
        }
        let place = Place { id: InodeId { subvol: 5, ino: 256 }, dir_type: FT_DIR };
        let mut w = Walk { targets: vec![(place, b"r".to_vec(), top.clone())].into_iter(), stack: Vec::new(), failed: false };
        assert!(matches!(w.next(), Some(PutJob::Entry { dir: true, .. })));
        // r is listed; its entries' identities are known. Then b is moved
        // aside and a symlink to the outside tree's b put in its place.
        std::fs::rename(top.join("b"), host.path().join("b-aside")).unwrap();
        std::os::unix::fs::symlink(outside.join("b"), top.join("b")).unwrap();
        let names = job_names(&mut w, host.path());
        assert_eq!(names[..3], ["r/a/", "r/a/x", "leave"], "{names:?}");
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names[3].contains("changed while being copied"), "{names:?}");
        // A worker's stat through a directory swapped after the walk listed it.
        let x = std::fs::symlink_metadata(top.join("a/x")).unwrap();
        std::fs::rename(top.join("a"), host.path().join("a-aside")).unwrap();
        std::os::unix::fs::symlink(outside.join("a"), top.join("a")).unwrap();
        let e = prepare(&top.join("a/x"), Some((x.dev(), x.ino())), 4096, &mut BATCH_PREREAD.clone()).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("changed while being copied")), "{e:?}");
    }

    /// A symlink that is something else by the time the pre-scan reads its
    /// target is reported as changed, not as a bare "Invalid argument".
    #[test]
    fn the_scan_names_a_symlink_that_changed() {
        let host = tempfile::tempdir().unwrap();
        let s = host.path().join("s");
        std::os::unix::fs::symlink("t", &s).unwrap();
        let meta = std::fs::symlink_metadata(&s).unwrap();
        std::fs::remove_file(&s).unwrap();
        std::fs::create_dir(&s).unwrap();
        let e = scan_entry(&s, &meta, 4096, 16384, 4, &mut HostNeed::default()).unwrap_err().to_string();
        assert!(e.contains("changed while being copied"), "{e}");
    }

    /// An entry the walk listed as a directory that is something else when
    /// a worker looks at it (or the reverse) is refused: its entries would
    /// go astray.
    #[test]
    fn an_entry_that_changed_type_is_refused() {
        let Some((_tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(1, &[]) else { return };
        let host = tempfile::tempdir().unwrap();
        let (d, f) = (host.path().join("d"), host.path().join("f"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(&f, b"x").unwrap();
        let o = OpenOptions { image: imgs[0].clone(), devices: imgs.to_vec(), writable: true, ..Default::default() };
        let mut tx = Transaction::begin(Filesystem::open(&o).unwrap()).unwrap();
        let at = Some(Place { id: InodeId { subvol: 5, ino: 256 }, dir_type: FT_DIR });
        let mut st = PutState { files: 0, copied: Copied::new(), bytes: 0, total: 0, progress: &|_, _| {}, open: Vec::new() };
        for (src, listed_dir) in [(&d, false), (&f, true)] {
            let job = PutJob::Entry { at, name: b"n".to_vec(), src: src.clone(), dir: listed_dir, id: None };
            let prepared = prepare(src, None, 4096, &mut BATCH_PREREAD.clone());
            let err = put_job(&mut tx, job, Some(prepared), &mut st).unwrap_err().to_string();
            assert!(err.contains("changed type while being copied"), "{err}");
        }
        assert!(tx.lookup_name(5, 256, b"n").unwrap().is_none(), "nothing made");
    }
}
