//! Commands that change a filesystem: write, mkdir, rm, mv, ln, setfattr.
//! Each runs one transaction and commits it; on any error nothing is
//! committed and the image is unchanged. Each returns the warnings the
//! filesystem gathered (a device that failed a read, quota counts left to a
//! rescan) for the caller to show.

use std::io::Read;
use std::path::Path;

use crate::error::{CorruptKind, Error, Result};
use crate::format::limits;
use crate::format::*;
use crate::fs::direct::{Bounce, PagePool, PAGE};
use crate::fs::path::ImagePath;
use crate::fs::txn::Transaction;
use crate::fs::txn::{BioHook, CompressOpts, Place, SetAttr, WriteOpts, WriteReport};
use crate::fs::Filesystem;
use crate::fs::InodeId;
use crate::volumes::OpenOptions;

/// What `btrs write` should do besides writing the bytes.
#[derive(Clone, Debug, Default)]
pub struct WriteRequest {
    pub offset: u64,
    /// Cut the file to `offset` before writing (so it ends with the new bytes).
    pub truncate: bool,
    pub parents: bool,
    pub nodatasum: bool,
    pub nodatacow: bool,
    pub max_bio: Option<usize>,
    /// Use the direct writer (bounce pages, parallel bios, O_DIRECT).
    pub direct: bool,
    /// Commit after every this many bytes (rounded up to whole steps of
    /// 16 MiB) and go on in a new transaction; `None`: every 1 GiB.
    pub commit_every: Option<u64>,
    /// Told of every data bio as it is submitted and completed.
    pub on_bio: Option<BioHook>,
    /// Compress the data (the kernel's compress= / compress-force=).
    pub compress: Option<CompressOpts>,
}

pub(crate) fn begin(opts: &OpenOptions) -> Result<Transaction> {
    let mut o = opts.clone();
    o.writable = true;
    Transaction::begin(Filesystem::open(&o)?)
}

/// Split "/a/b/c" into ("/a/b", "c"), the name checked.
pub(crate) fn split(path: ImagePath<'_>) -> Result<(ImagePath<'_>, Vec<u8>)> {
    let (dir, name) = path.parent_and_name();
    if name.is_empty() || name == b"." || name == b".." {
        return Err(Error::Invalid(format!("{path}: not a name")));
    }
    limits::check_entry_name(name).map_err(|e| Error::Invalid(format!("{path}: {e}")))?;
    Ok((dir, name.to_vec()))
}

/// [`split`] for a new entry that is not a directory: a path ending in "/"
/// names one (the kernel's ENOTDIR otherwise).
pub(crate) fn split_nondir(path: ImagePath<'_>) -> Result<(ImagePath<'_>, Vec<u8>)> {
    slash_means_dir(path, false)?;
    split(path)
}

/// The directory at `path` (through subvolumes), made (with parents) when
/// `parents`; the subvolume it is in must be writable.
pub(crate) fn dir_at(tx: &mut Transaction, path: ImagePath<'_>, parents: bool) -> Result<Place> {
    let mut cur = Place { id: InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID }, dir_type: FT_DIR };
    // ".." as the read side walks it (`fs::path::walk`): back where the path came from.
    let mut up: Vec<Place> = Vec::new();
    for comp in path.components() {
        if comp == b".." {
            cur = up.pop().unwrap_or(cur);
            continue;
        }
        up.push(cur);
        cur = match tx.lookup(cur.root(), cur.ino(), comp)? {
            Some(p) if p.dir_type == FT_DIR => p,
            Some(_) => return Err(Error::Invalid(crate::fs::path::not_dir(path, comp))),
            None if parents => {
                limits::check_entry_name(comp).map_err(|e| Error::Invalid(format!("{path}: {e}")))?;
                tx.ensure_writable(cur.root())?;
                let id = tx.create(cur.id, comp, S_IFDIR | 0o755, 0)?;
                Place { id, dir_type: FT_DIR }
            }
            None => return Err(Error::NotFound(format!("{path}: no directory {}", ImagePath::from(comp)))),
        };
    }
    tx.ensure_writable(cur.root())?;
    Ok(cur)
}

/// Where an existing path leads, in a writable subvolume.
fn existing(tx: &mut Transaction, path: ImagePath<'_>) -> Result<Place> {
    // (A path ending in "/" that leads to a non-directory: `resolve`'s walk refuses it.)
    let p = tx.resolve(path)?.ok_or_else(|| Error::NotFound(path.to_string()))?;
    tx.ensure_writable(p.root())?;
    Ok(p)
}

/// A path ending in `/` names a directory (the kernel's ENOTDIR otherwise;
/// btrs follows no symlink, so a symlink to one does not do).
pub(crate) fn slash_means_dir(path: ImagePath<'_>, is_dir: bool) -> Result<()> {
    if path.names_dir() && !is_dir {
        return Err(Error::Invalid(format!("{path}: not a directory (a path ending in / names one; btrs follows no symlink)")));
    }
    Ok(())
}

/// Bytes read from the input and handed to the engine at a time: bounds the
/// memory a write needs whatever the input size (each step is at most one
/// extent's worth of engine pages plus the read buffer).
pub(crate) const WRITE_STEP: usize = 16 << 20;

/// Step buffers in circulation: one the reader fills, one the engine
/// records, and two whose direct bios may still be running, so neither
/// device waits for the other, for the engine or for the reader. (Three and
/// four measured alike within this machine's noise; four leaves a step of
/// slack for a device that falls behind, at 16 MiB more memory.)
const STEP_BUFFERS: usize = 4;

/// Bytes after which a long write commits and goes on in a new transaction,
/// so the dirty tree blocks (checksums above all) held in memory stay
/// bounded whatever the input size; each commit is crash-safe, so a crash
/// leaves the file with a prefix of the new bytes, like the kernel's periodic
/// commits.
const COMMIT_EVERY: u64 = 1 << 30;

/// Whether a commit is due: `every` bytes handed to the engine since the last.
fn commit_due(done: u64, last: u64, every: u64) -> bool {
    done - last >= every.max(1)
}

/// Write the bytes of `input` into file `path` (created when missing),
/// streaming: `len_hint` (a host file's size) lets the space check run before
/// anything is written; `progress` is told the bytes done after each step.
pub fn write<'p>(
    opts: &OpenOptions,
    path: impl Into<ImagePath<'p>>,
    input: Box<dyn Read + Send>,
    len_hint: Option<u64>,
    req: &WriteRequest,
    progress: &mut dyn FnMut(u64),
) -> Result<WriteReport> {
    // The kernel stops at the largest file size (EFBIG): refused before
    // anything is written when the size is known, else before the step past it.
    limits::check_file_range(req.offset, len_hint.unwrap_or(0))?;
    check_direct_compress(req)?;
    let path = path.into();
    split_nondir(path)?;
    let (tx, mut report) = write_in(begin(opts)?, path, input, len_hint, req, progress)?;
    report.notices.extend(tx.commit_with_warnings()?);
    Ok(report)
}

/// The kernel never compresses direct writes; asking for both is an error.
fn check_direct_compress(req: &WriteRequest) -> Result<()> {
    if req.direct && req.compress.is_some() {
        return Err(Error::Invalid("direct writes are never compressed (the kernel's are not either): --direct with --compress".into()));
    }
    Ok(())
}

/// [`write`] inside a running transaction, which is handed back uncommitted
/// (after the commits `req.commit_every` asked for); on an error the
/// transaction is gone and nothing since its last commit is kept.
pub(crate) fn write_in<'p>(
    mut tx: Transaction,
    path: impl Into<ImagePath<'p>>,
    mut input: Box<dyn Read + Send>,
    len_hint: Option<u64>,
    req: &WriteRequest,
    progress: &mut dyn FnMut(u64),
) -> Result<(Transaction, WriteReport)> {
    limits::check_file_range(req.offset, len_hint.unwrap_or(0))?;
    check_direct_compress(req)?;
    let path = path.into();
    let (dir, name) = split_nondir(path)?;
    let Place { id: InodeId { subvol: root, ino: d }, .. } = dir_at(&mut tx, dir, req.parents)?;
    let ino = match tx.lookup_name(root, d, &name)? {
        Some((ino, FT_REG_FILE)) => ino,
        Some(_) => return Err(Error::Invalid(format!("{path} is not a regular file"))),
        None => {
            let mut flags = 0;
            if req.nodatasum {
                flags |= INODE_NODATASUM;
            }
            if req.nodatacow {
                flags |= INODE_NODATACOW | INODE_NODATASUM;
            }
            tx.create(InodeId { subvol: root, ino: d }, &name, S_IFREG | 0o644, flags)?.ino
        }
    };
    tx.name_inode(root, ino, path);
    if req.truncate {
        tx.truncate(root, ino, req.offset)?;
    }
    // A write that cannot fit fails before any byte reaches the images.
    if let Some(len) = len_hint {
        tx.store.ensure_data_space(len)?;
    }
    let mut report = WriteReport::default();
    let wopts =
        WriteOpts { max_bio: req.max_bio.unwrap_or(WriteOpts::default().max_bio), on_bio: req.on_bio.clone(), compress: req.compress };
    let mut done = 0u64;
    let mut last_commit = 0u64;
    let every = req.commit_every.unwrap_or(COMMIT_EVERY);
    // The input is read straight into engine pages, a step ahead on a
    // thread of its own, while the engine writes the steps before. The
    // pages are handed over, so the engine writes them to every mirror as
    // they are (no second copy) and nothing can change them meanwhile; they
    // come back to the pool when written (for direct writes, when their
    // last bio is done). The reader is not joined: on an error it may sit
    // in a read of standard input until the process ends.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Result<Bounce>>(1);
    // An input of known size smaller than a step gets buffers of its size:
    // zeroing four 16 MiB steps costs more than a small write itself.
    let step = len_hint.map_or(WRITE_STEP, |n| usize::try_from(n).unwrap_or(WRITE_STEP).clamp(PAGE, WRITE_STEP).next_multiple_of(PAGE));
    let pool = PagePool::new(STEP_BUFFERS, step);
    let reader = move || {
        while let Some(mut pages) = pool.take() {
            pages.set_len(pages.capacity());
            let r = fill(&mut *input, pages.bytes_mut()).map(|n| {
                pages.set_len(n);
                pages
            });
            let end = !matches!(&r, Ok(p) if !p.is_empty());
            if full_tx.send(r).is_err() || end {
                break;
            }
        }
    };
    std::thread::Builder::new()
        .name("write-reader".into())
        .spawn(reader)
        .map_err(|e| Error::io("<threads>", "start the input reader thread", e))?;
    loop {
        // The reader ends with an empty step (or an error): a channel closed
        // before that means it died (panicked), and what came so far is not
        // the whole input.
        let Ok(pages) = full_rx.recv() else {
            return Err(Error::Internal("the input reader thread ended before the input did (panicked)".into()));
        };
        let pages = pages?;
        let n = pages.len();
        if n == 0 {
            break;
        }
        let at = req.offset + done;
        limits::check_file_range(at, n as u64)?;
        tx.write_owned(root, ino, at, pages, req.direct, &wopts, &mut report)?;
        done += n as u64;
        progress(done);
        if commit_due(done, last_commit, every) {
            tx = tx.commit_and_continue()?;
            last_commit = done;
        }
    }
    Ok((tx, report))
}

/// Read until `buf` is full or the input ends; the byte count.
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("<input>", "read", e)),
        }
    }
    Ok(n)
}

pub fn mkdir<'p>(opts: &OpenOptions, path: impl Into<ImagePath<'p>>, parents: bool) -> Result<Vec<String>> {
    mkdir_mode(opts, path, parents, None)
}

/// `mkdir [-p] [-m MODE]`: as coreutils, MODE (permission bits) is the new
/// directory's; parents made by -p get 0755, and an existing directory
/// with -p is left as it is.
pub fn mkdir_mode<'p>(opts: &OpenOptions, path: impl Into<ImagePath<'p>>, parents: bool, mode: Option<u32>) -> Result<Vec<String>> {
    if let Some(m) = mode.filter(|m| m & !0o7777 != 0) {
        return Err(Error::Invalid(format!("mode {m:#o} has bits beyond 07777")));
    }
    let mut tx = begin(opts)?;
    mkdir_in(&mut tx, path.into(), parents, mode)?;
    tx.commit_with_warnings()
}

/// [`mkdir_mode`] inside a running transaction (not committed). Like every
/// `*_in` command: on an error the caller drops the transaction, as the
/// command does.
pub(crate) fn mkdir_in<'p>(tx: &mut Transaction, path: impl Into<ImagePath<'p>>, parents: bool, mode: Option<u32>) -> Result<()> {
    let path = path.into();
    if parents {
        match tx.resolve(path)? {
            // -p on a directory that exists writes nothing: no matter that its
            // subvolume is read-only (attacker's pass: `mkdir -p /ro-subvol` failed).
            Some(p) if p.dir_type == FT_DIR => return Ok(()),
            // Something else there: dir_at names it as the component that is not a directory.
            Some(_) => return dir_at(tx, path, true).map(drop),
            None => {}
        }
    }
    let (d, name) = if parents {
        // As `mkdir -p` makes each missing component in turn: what stops it
        // on the way (a read-only subvolume) comes before the last name is
        // looked at (model seed 2601: a 256-byte last name under a read-only root).
        let d = dir_at(tx, path.parent_and_name().0, true)?;
        (d, split(path)?.1)
    } else {
        let (dir, name) = split(path)?;
        (dir_at(tx, dir, false)?, name)
    };
    tx.create(d.id, &name, S_IFDIR | mode.unwrap_or(0o755), 0)?;
    Ok(())
}

/// `chmod`, `chown` and `touch` of existing paths: one transaction for all
/// of them, nothing written when any fails.
pub fn set_attr<P: AsRef<[u8]>>(opts: &OpenOptions, paths: &[P], change: &SetAttr) -> Result<Vec<String>> {
    let mut tx = begin(opts)?;
    set_attr_in(&mut tx, paths, change)?;
    tx.commit_with_warnings()
}

/// [`set_attr`] inside a running transaction (not committed). Symlinks
/// are not followed: `chown` and `touch` change the link itself (as
/// `chown -h`, `touch -h`).
pub(crate) fn set_attr_in<P: AsRef<[u8]>>(tx: &mut Transaction, paths: &[P], change: &SetAttr) -> Result<()> {
    for path in paths {
        let path = ImagePath::new(path);
        let p = existing(tx, path)?;
        tx.name_inode(p.root(), p.ino(), path);
        tx.set_attr(p.root(), p.ino(), change)?;
    }
    Ok(())
}

/// `chmod`: each path's permission bits become `mode(old st_mode)`.
pub fn chmod<P: AsRef<[u8]>>(opts: &OpenOptions, paths: &[P], mode: &dyn Fn(u32) -> u32) -> Result<Vec<String>> {
    let mut tx = begin(opts)?;
    chmod_in(&mut tx, paths, mode)?;
    tx.commit_with_warnings()
}

/// [`chmod`] inside a running transaction (not committed). A symlink is
/// refused: btrs follows none, and a link's own mode is always 0777 (the
/// kernel has no lchmod).
pub(crate) fn chmod_in<P: AsRef<[u8]>>(tx: &mut Transaction, paths: &[P], mode: &dyn Fn(u32) -> u32) -> Result<()> {
    for path in paths {
        let path = ImagePath::new(path);
        let p = existing(tx, path)?;
        if p.dir_type == FT_SYMLINK {
            return Err(Error::Invalid(format!(
                "{path}: a symbolic link's mode is always 0777 (btrs follows no symlink; change its target's path)"
            )));
        }
        tx.name_inode(p.root(), p.ino(), path);
        let old = tx.read_inode(p.root(), p.ino())?.mode.get();
        let change = SetAttr { mode: Some(mode(old)), ..Default::default() };
        tx.set_attr(p.root(), p.ino(), &change)?;
    }
    Ok(())
}

/// `touch`: set the times of each path (made as an empty regular file,
/// mode 0644, when missing, unless `no_create`, which skips it as
/// coreutils' -c does).
pub fn touch<P: AsRef<[u8]>>(opts: &OpenOptions, paths: &[P], change: &SetAttr, no_create: bool) -> Result<Vec<String>> {
    let mut tx = begin(opts)?;
    for path in paths {
        let path = ImagePath::new(path);
        let p = match tx.resolve(path)? {
            Some(p) => {
                tx.ensure_writable(p.root())?;
                p
            }
            None if no_create => continue,
            None => Place { id: new_empty_file(&mut tx, path)?, dir_type: FT_REG_FILE },
        };
        tx.name_inode(p.root(), p.ino(), path);
        tx.set_attr(p.root(), p.ino(), change)?;
    }
    tx.commit_with_warnings()
}

/// An empty regular file (mode 0644) at missing `path`, as `touch` and
/// `truncate` make one.
fn new_empty_file(tx: &mut Transaction, path: ImagePath<'_>) -> Result<InodeId> {
    slash_means_dir(path, false)?;
    let (dir, name) = split(path)?;
    let d = dir_at(tx, dir, false)?;
    tx.create(d.id, &name, S_IFREG | 0o644, 0)
}

/// A size as coreutils' `truncate -s` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TruncateSize {
    /// Exactly this size.
    Set(u64),
    /// `+N`: grow by N.
    Grow(u64),
    /// `-N`: shrink by N (to 0 at least).
    Shrink(u64),
    /// `<N`: at most N.
    AtMost(u64),
    /// `>N`: at least N.
    AtLeast(u64),
}

impl TruncateSize {
    fn apply(self, old: u64) -> Option<u64> {
        Some(match self {
            TruncateSize::Set(n) => n,
            TruncateSize::Grow(n) => old.checked_add(n)?,
            TruncateSize::Shrink(n) => old.saturating_sub(n),
            TruncateSize::AtMost(n) => old.min(n),
            TruncateSize::AtLeast(n) => old.max(n),
        })
    }
}

/// `truncate -s SIZE`: set each regular file's size (made when missing
/// unless `no_create`), dropping data past it or extending with a hole.
pub fn truncate<P: AsRef<[u8]>>(opts: &OpenOptions, paths: &[P], size: TruncateSize, no_create: bool) -> Result<Vec<String>> {
    let mut tx = begin(opts)?;
    for path in paths {
        let path = ImagePath::new(path);
        let (root, ino) = match tx.resolve(path)? {
            Some(p) if p.dir_type == FT_REG_FILE => {
                tx.ensure_writable(p.root())?;
                (p.root(), p.ino())
            }
            Some(_) => return Err(Error::Invalid(format!("{path} is not a regular file"))),
            None if no_create => continue,
            None => {
                let id = new_empty_file(&mut tx, path)?;
                (id.subvol, id.ino)
            }
        };
        tx.name_inode(root, ino, path);
        let old = tx.read_inode(root, ino)?.size.get();
        let new = size
            .apply(old)
            .ok_or_else(|| Error::Invalid(format!("{path}: {old} bytes grown by {size:?} is past the largest file size")))?;
        tx.truncate(root, ino, new)?;
    }
    tx.commit_with_warnings()
}

/// Remove `dir/name` and, when it is a directory, everything beneath it
/// (children before their directory). Iterative, with an explicit stack: a
/// tree as deep as `mkdir -p` can make must not overflow the thread's stack.
/// A directory met twice means a crafted loop (an entry naming an ancestor)
/// or an aliased directory: an error, and the transaction commits nothing.
fn rm_tree(tx: &mut Transaction, root: u64, dir: u64, name: &[u8]) -> Result<()> {
    struct Level {
        parent: u64,
        name: Vec<u8>,
        /// The directory's inode; None for a non-directory.
        ino: Option<u64>,
        /// Its children's names, in DIR_INDEX order, not yet removed.
        kids: std::vec::IntoIter<Vec<u8>>,
    }
    let mut seen = std::collections::HashSet::new();
    let mut open = |tx: &mut Transaction, parent: u64, name: Vec<u8>| -> Result<Level> {
        let Some((ino, FT_DIR)) = tx.lookup_name(root, parent, &name)? else {
            return Ok(Level { parent, name, ino: None, kids: Vec::new().into_iter() });
        };
        if !seen.insert(ino) {
            return Err(Error::corrupt(
                CorruptKind::Loop,
                format!("directory {ino} of tree {root}"),
                format!(
                    "reached twice (entry {:?} in directory {parent}): a directory loop or an aliased directory",
                    crate::name::Name(&name)
                ),
            ));
        }
        let mut kids = Vec::new();
        for (_, body) in tx.range(root, Key::new(ino, DIR_INDEX_KEY, 0), Key::new(ino, DIR_INDEX_KEY, u64::MAX))? {
            kids.extend(crate::format::items::parse_dir_items(&body)?.into_iter().map(|e| e.name));
        }
        Ok(Level { parent, name, ino: Some(ino), kids: kids.into_iter() })
    };
    let mut stack = vec![open(tx, dir, name.to_vec())?];
    while let Some(top) = stack.last_mut() {
        // As a put: changed tree blocks written out past a budget.
        tx.write_back_if_over()?;
        match (top.ino, top.kids.next()) {
            (Some(ino), Some(kid)) => {
                let level = open(tx, ino, kid)?;
                stack.push(level);
            }
            _ => {
                let done = stack.pop().ok_or_else(|| Error::Invalid("rm: empty stack (internal)".into()))?;
                tx.unlink(root, done.parent, &done.name)?;
            }
        }
    }
    Ok(())
}

pub fn rm<P: AsRef<[u8]>>(opts: &OpenOptions, paths: &[P], recursive: bool) -> Result<Vec<String>> {
    rm_forced(opts, paths, recursive, false)
}

/// `rm [-r] [-f]`: with `force`, paths that do not exist are skipped
/// silently (coreutils' -f); every other error still fails the command.
pub fn rm_forced<P: AsRef<[u8]>>(opts: &OpenOptions, paths: &[P], recursive: bool, force: bool) -> Result<Vec<String>> {
    let mut tx = begin(opts)?;
    if force {
        let mut present = Vec::with_capacity(paths.len());
        for p in paths {
            if missing(&mut tx, ImagePath::new(p))? {
                continue;
            }
            present.push(ImagePath::new(p));
        }
        rm_in(&mut tx, &present, recursive)?;
    } else {
        rm_in(&mut tx, paths, recursive)?;
    }
    tx.commit_with_warnings()
}

/// Whether `path` names nothing: its last component is absent from a
/// directory that exists, or a directory on the way is missing. A
/// component that is not a directory is an error (coreutils' rm -f says
/// so too), and so is a name that is not one.
fn missing(tx: &mut Transaction, path: ImagePath<'_>) -> Result<bool> {
    split(path)?;
    Ok(tx.resolve(path)?.is_none())
}

/// [`rm`] inside a running transaction (not committed).
pub(crate) fn rm_in<P: AsRef<[u8]>>(tx: &mut Transaction, paths: &[P], recursive: bool) -> Result<()> {
    for path in paths {
        let path = ImagePath::new(path);
        let (dir, name) = split(path)?;
        let d = dir_at(tx, dir, false)?;
        if let Some((_, ft)) = tx.lookup_name(d.root(), d.ino(), &name)? {
            slash_means_dir(path, ft == FT_DIR)?;
        }
        if recursive {
            rm_tree(tx, d.root(), d.ino(), &name)?;
        } else {
            tx.unlink(d.root(), d.ino(), &name)?;
        }
    }
    Ok(())
}

pub fn mv<'p>(opts: &OpenOptions, src: impl Into<ImagePath<'p>>, dst: impl Into<ImagePath<'p>>) -> Result<Vec<String>> {
    let mut tx = begin(opts)?;
    mv_in(&mut tx, src.into(), dst.into())?;
    tx.commit_with_warnings()
}

/// [`mv`] inside a running transaction (not committed).
pub(crate) fn mv_in<'p>(tx: &mut Transaction, src: impl Into<ImagePath<'p>>, dst: impl Into<ImagePath<'p>>) -> Result<()> {
    let src = src.into();
    let dst = dst.into();
    let (sd, sn) = split(src)?;
    let sdir = dir_at(tx, sd, false)?;
    // Into an existing directory: keep the name.
    let (ddir, dn, new_name) = match tx.resolve(dst)? {
        Some(p) if p.dir_type == FT_DIR => {
            tx.ensure_writable(p.root())?;
            (p, sn.clone(), false)
        }
        _ => {
            let (dd, dn) = split(dst)?;
            (dir_at(tx, dd, false)?, dn, true)
        }
    };
    if ddir.root() != sdir.root() {
        // The kernel's EXDEV: inodes belong to one tree; a move across is a copy.
        return Err(Error::Invalid(format!("{src} and {dst} are in different subvolumes")));
    }
    // rename(2): a path ending in "/" names a directory, on either side
    // (attacker's pass: `mv /g /f/` replaced the file f). Looked at only
    // then, so that the rename's own refusals keep their order.
    if src.names_dir() || (new_name && dst.names_dir()) {
        if let Some((_, ft)) = tx.lookup_name(sdir.root(), sdir.ino(), &sn)? {
            slash_means_dir(src, ft == FT_DIR)?;
            if new_name {
                slash_means_dir(dst, ft == FT_DIR)?;
            }
        }
    }
    tx.rename(sdir.root(), sdir.ino(), &sn, ddir.ino(), &dn)
}

pub fn ln<'p>(opts: &OpenOptions, target: impl Into<ImagePath<'p>>, link: impl Into<ImagePath<'p>>, symbolic: bool) -> Result<Vec<String>> {
    let mut tx = begin(opts)?;
    ln_in(&mut tx, target.into(), link.into(), symbolic)?;
    tx.commit_with_warnings()
}

/// [`ln`] inside a running transaction (not committed).
pub(crate) fn ln_in<'p>(
    tx: &mut Transaction,
    target: impl Into<ImagePath<'p>>,
    link: impl Into<ImagePath<'p>>,
    symbolic: bool,
) -> Result<()> {
    let target = target.into();
    let link = link.into();
    let (ld, ln) = split_nondir(link)?;
    let dir = dir_at(tx, ld, false)?;
    if symbolic {
        tx.symlink(dir.root(), dir.ino(), &ln, target.as_bytes())?;
    } else {
        let t = existing(tx, target)?;
        if t.root() != dir.root() {
            return Err(Error::Invalid(format!("{target} and {link} are in different subvolumes")));
        }
        tx.link(dir.root(), t.ino(), dir.ino(), &ln)?;
    }
    Ok(())
}

pub fn setfattr<'p>(opts: &OpenOptions, path: impl Into<ImagePath<'p>>, name: &[u8], value: Option<&[u8]>) -> Result<Vec<String>> {
    let mut tx = begin(opts)?;
    setfattr_in(&mut tx, path.into(), name, value)?;
    tx.commit_with_warnings()
}

/// [`setfattr`] inside a running transaction (not committed).
pub(crate) fn setfattr_in<'p>(tx: &mut Transaction, path: impl Into<ImagePath<'p>>, name: &[u8], value: Option<&[u8]>) -> Result<()> {
    let path = path.into();
    let p = existing(tx, path)?;
    tx.set_xattr(p.root(), p.ino(), name, value)
}

/// `btrs chattr IMAGE PATH MODE`: the inode's new flags, as `lsattr` shows them.
pub fn chattr<'p>(opts: &OpenOptions, path: impl Into<ImagePath<'p>>, mode: &crate::fs::txn::AttrChange) -> Result<(String, Vec<String>)> {
    let path = path.into();
    let mut tx = begin(opts)?;
    let p = existing(&mut tx, path)?;
    tx.name_inode(p.root(), p.ino(), path);
    let flags = tx.change_attrs(p.root(), p.ino(), mode)?;
    Ok((crate::fs::txn::lsattr_string(flags), tx.commit_with_warnings()?))
}

/// Open the input of `btrs write`: a host file (with its size, for the space
/// check) or standard input.
pub fn open_input(from: Option<&Path>) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    match from {
        Some(p) if p != Path::new("-") => {
            let f = std::fs::File::open(p).map_err(|e| Error::io(p, "open", e))?;
            let meta = f.metadata().map_err(|e| Error::io(p, "stat", e))?;
            if meta.is_dir() {
                return Err(Error::Invalid(format!("--from {}: a directory, not a file (`btrs put` copies directories)", p.display())));
            }
            let len = meta.is_file().then_some(meta.len());
            Ok((Box::new(f), len))
        }
        _ => Ok((Box::new(std::io::stdin()), None)),
    }
}
