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
const WRITE_STEP: usize = 16 << 20;

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

/// Copy host files, directories (recursively) and symlinks into the
/// filesystem, in one transaction: `put IMAGE SRC... DEST`. With one SRC and
/// a DEST that does not exist, SRC is copied *as* DEST; otherwise DEST must be
/// a directory and each SRC goes into it under its own name.
pub fn put<'p>(opts: &OpenOptions, srcs: &[std::path::PathBuf], dest: impl Into<ImagePath<'p>>) -> Result<(u64, Vec<String>)> {
    put_with_progress(opts, srcs, dest, &|_, _| {})
}

/// [`put`], telling `progress` the data bytes copied so far and in all as it goes.
pub fn put_with_progress<'p>(
    opts: &OpenOptions,
    srcs: &[std::path::PathBuf],
    dest: impl Into<ImagePath<'p>>,
    progress: &dyn Fn(u64, u64),
) -> Result<(u64, Vec<String>)> {
    let mut tx = begin(opts)?;
    let files = put_in_with(&mut tx, srcs, dest.into(), progress)?;
    let warnings = tx.commit_with_warnings()?;
    Ok((files, warnings))
}

/// [`put`] inside a running transaction (not committed); the files copied.
#[cfg(test)]
pub(crate) fn put_in<'p>(tx: &mut Transaction, srcs: &[std::path::PathBuf], dest: impl Into<ImagePath<'p>>) -> Result<u64> {
    put_in_with(tx, srcs, dest.into(), &|_, _| {})
}

fn put_in_with(tx: &mut Transaction, srcs: &[std::path::PathBuf], dest: ImagePath<'_>, progress: &dyn Fn(u64, u64)) -> Result<u64> {
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
    let targets: Vec<(Place, Vec<u8>, &std::path::PathBuf)> = match tx.resolve(dest)? {
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
    let mut st = PutState { files: 0, copied: Copied::new(), bytes: 0, total: need, progress };
    for (dir, name, src) in targets {
        put_tree(tx, dir, &name, src, &mut st)?;
    }
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
/// its size, as /proc files do). Iterative (a stack of paths still to look
/// at): a deep host tree must not overflow the thread's stack.
fn host_scan(top: &Path, ss: u32, nodesize: u32, csum: usize, need: &mut HostNeed) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ss64 = u64::from(ss);
    let mut todo = vec![top.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).map_err(|e| Error::io(&p, "stat", e))?;
        let what = |e: Error| Error::Invalid(format!("{}: {e}", p.display()));
        // Its name three times (dir item, dir index, inode ref) and its inode.
        let name = p.file_name().map_or(0, |n| n.len() as u64);
        let mut items = 3 * (name + ITEM_HEADER) + 70 + 160 + ITEM_HEADER;
        for (name, v) in crate::ops::host::read_xattrs(&p)? {
            limits::check_xattr(&name, Some(&v), nodesize).map_err(what)?;
            items += 30 + (name.len() + v.len()) as u64 + ITEM_HEADER;
        }
        if meta.is_symlink() {
            let t = std::fs::read_link(&p).map_err(|e| Error::io(&p, "readlink", e))?;
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
                rustix::fs::accessat(rustix::fs::CWD, &p, rustix::fs::Access::READ_OK, rustix::fs::AtFlags::EACCESS)
                    .map_err(|e| Error::io(&p, "open", e.into()))?;
                whole
            } else {
                let f = crate::ops::host::open_source(&p)?;
                if meta.blocks() == 0 {
                    past_size(&f, &p, size)?;
                }
                crate::ops::host::data_ranges(&f, &p, size, ss64)?.iter().map(|r| r.1 - r.0).sum()
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
        } else if meta.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| Error::io(&p, "readdir", e))? {
                let e = e.map_err(|e| Error::io(&p, "readdir", e))?;
                limits::check_entry_name(e.file_name().as_encoded_bytes())
                    .map_err(|err| Error::Invalid(format!("{}: {err}", e.path().display())))?;
                todo.push(e.path());
            }
        }
        need.items = need.items.saturating_add(items);
    }
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
type Copied = std::collections::HashMap<(u64, u64), u64>;

/// A host directory being copied in: made, its entries not all copied yet.
struct PutDir {
    root: u64,
    ino: u64,
    src: std::path::PathBuf,
    meta: std::fs::Metadata,
    kids: std::vec::IntoIter<std::fs::DirEntry>,
}

/// Copy host path `src` in as `at/name` and, for a directory, everything
/// beneath it (in name order; each directory's xattrs, owner and times once
/// its entries are in). Iterative, with an explicit stack of the directories
/// being copied: a deep host tree must not overflow the thread's stack.
fn put_tree(tx: &mut Transaction, at: Place, name: &[u8], src: &Path, st: &mut PutState<'_>) -> Result<()> {
    let mut stack: Vec<PutDir> = put_one(tx, at, name, src, st)?.into_iter().collect();
    while let Some(top) = stack.last_mut() {
        match top.kids.next() {
            Some(k) => {
                let at = Place { id: InodeId { subvol: top.root, ino: top.ino }, dir_type: FT_DIR };
                if let Some(d) = put_one(tx, at, k.file_name().as_encoded_bytes(), &k.path(), st)? {
                    stack.push(d);
                }
            }
            None => {
                if let Some(d) = stack.pop() {
                    put_finish(tx, d.root, d.ino, &d.src, &d.meta, &mut st.copied)?;
                }
            }
        }
    }
    Ok(())
}

/// Copy one host path in as `at/name` with what `mkfs --rootdir` keeps:
/// type, mode (set-id bits too), owner, nanosecond atime/mtime/ctime, xattrs,
/// device numbers, symlink targets, hard links and holes (data ranges via
/// SEEK_DATA/SEEK_HOLE, read in bounded steps). A directory is only made:
/// returned with its entries for [`put_tree`] to copy and then finish.
fn put_one(tx: &mut Transaction, at: Place, name: &[u8], src: &Path, st: &mut PutState<'_>) -> Result<Option<PutDir>> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    // One transaction however large the put: before each entry (an argument
    // or a directory's child), its changed tree blocks are written out once
    // past a budget, not held to the commit.
    tx.write_back_if_over()?;
    let (root, dir) = (at.root(), at.ino());
    let meta = std::fs::symlink_metadata(src).map_err(|e| Error::io(src, "stat", e))?;
    let id = (meta.dev(), meta.ino());
    if !meta.is_dir() && meta.nlink() > 1 {
        if let Some(&ino) = st.copied.get(&id) {
            return tx.link(root, ino, dir, name).map(|_| None);
        }
    }
    let mode = meta.mode();
    let ft = meta.file_type();
    let ino = if ft.is_symlink() {
        let t = std::fs::read_link(src).map_err(|e| Error::io(src, "readlink", e))?;
        tx.symlink(root, dir, name, t.as_os_str().as_encoded_bytes())?
    } else if ft.is_dir() {
        let ino = tx.create(InodeId { subvol: root, ino: dir }, name, mode, 0)?.ino;
        let mut kids: Vec<_> = std::fs::read_dir(src)
            .map_err(|e| Error::io(src, "readdir", e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(src, "readdir", e))?;
        // One name per entry, not one per comparison (file_name allocates).
        kids.sort_by_cached_key(|e| e.file_name());
        return Ok(Some(PutDir { root, ino, src: src.to_path_buf(), meta, kids: kids.into_iter() }));
    } else if ft.is_file() {
        let ino = tx.create(InodeId { subvol: root, ino: dir }, name, mode, 0)?.ino;
        let f = crate::ops::host::open_source(src)?;
        let size = meta.len();
        let ss = tx.fs().sectorsize as u64;
        let mut report = WriteReport::default();
        let mut buf = Vec::new();
        // The new inode's size: where the last write ended.
        let mut written_to = 0;
        for (start, end) in crate::ops::host::data_ranges(&f, src, size, ss)? {
            let mut pos = start;
            let end = end.min(size);
            while pos < end {
                let n = ((end - pos) as usize).min(WRITE_STEP);
                buf.resize(n, 0);
                f.read_exact_at(&mut buf, pos).map_err(|e| Error::io(src, format!("read at {pos}"), e))?;
                tx.write_at(InodeId { subvol: root, ino }, pos, &buf, &WriteOpts::default(), &mut report)?;
                pos += n as u64;
                written_to = pos;
                st.bytes = st.bytes.saturating_add(n as u64);
                (st.progress)(st.bytes, st.total);
            }
        }
        past_size(&f, src, size)?;
        // A file ending in a hole (or all hole) still has its full size.
        if written_to < size && tx.read_inode(root, ino)?.size.get() < size {
            tx.truncate(root, ino, size)?;
        }
        st.files += 1;
        ino
    } else {
        // Fifos, sockets, character and block devices: an inode with rdev.
        let ino = tx.create(InodeId { subvol: root, ino: dir }, name, mode, 0)?.ino;
        let mut it = tx.read_inode(root, ino)?;
        it.rdev = crate::ops::host::host_rdev_to_btrfs(meta.rdev()).into();
        tx.put_inode(root, ino, &it)?;
        ino
    };
    put_finish(tx, root, ino, src, &meta, &mut st.copied)?;
    Ok(None)
}

/// The xattrs, owner, mode and times of host path `src` onto inode `ino`.
fn put_finish(tx: &mut Transaction, root: u64, ino: u64, src: &Path, meta: &std::fs::Metadata, copied: &mut Copied) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (mode, id) = (meta.mode(), (meta.dev(), meta.ino()));
    for (n, v) in crate::ops::host::read_xattrs(src)? {
        tx.set_xattr(root, ino, &n, Some(&v))?;
    }
    // Owner and times last: adding entries and xattrs stamps the inode.
    let mut it = tx.read_inode(root, ino)?;
    let ts = |sec: i64, nsec: i64| crate::format::Timespec { sec: (sec as u64).into(), nsec: (nsec.clamp(0, 999_999_999) as u32).into() };
    it.uid = meta.uid().into();
    it.gid = meta.gid().into();
    it.mode = mode.into();
    it.atime = ts(meta.atime(), meta.atime_nsec());
    it.mtime = ts(meta.mtime(), meta.mtime_nsec());
    it.ctime = ts(meta.ctime(), meta.ctime_nsec());
    tx.put_inode(root, ino, &it)?;
    if meta.nlink() > 1 && !meta.is_dir() {
        copied.insert(id, ino);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Filesystem;
    use crate::volumes::OpenOptions;

    /// A put of many plain files (one SRC each, which never enters
    /// put_tree's loop over a directory) writes its tree blocks out past the
    /// budget as a put of one directory does; an attacker's pass found them
    /// all held to the commit (60k arguments: 569 MiB).
    #[test]
    fn put_of_many_file_arguments_writes_back_between_them() {
        let Some((_tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(1, &[]) else { return };
        let host = tempfile::tempdir().unwrap();
        let srcs: Vec<std::path::PathBuf> = (0..60u8)
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
}
