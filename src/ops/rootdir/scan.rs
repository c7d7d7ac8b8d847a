//! The first pass of `--rootdir`: options, the walk of the source (a host
//! directory or an archive's members) and the items it makes (inodes, names,
//! xattrs, subvolumes); file data waits for the data pass (`data`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::compress::{self, Compression};
use crate::format::encode;
use crate::format::items::{extref_hash, name_hash, DirEntry, FileExtent, FileExtentKind, InodeRefEntry};
use crate::format::ondisk::*;
use crate::format::{CsumType, FileType, Key};
use rustix::fd::OwnedFd;

use crate::ops::host::{
    data_ranges, host_rdev_to_btrfs, io, joined, open_source, open_source_sized, round_up, sector_ranges, HostId, Pinned,
};

use super::ahead::{Ahead, Facts, Found, Ranges};
use super::manifest::{remap_acl, Ownership};
use super::source::SourceFile;
use super::spill::{ItemSorter, RecordReader, RecordWriter, Spill};
use super::tar;

/// The kernel's BTRFS_MAX_EXTENT_SIZE: no uncompressed extent is longer.
pub(crate) const MAX_EXTENT_SIZE: u64 = 128 * 1024 * 1024;
/// Compressed extents cover at most this much file data (BTRFS_MAX_UNCOMPRESSED).
pub(crate) const MAX_UNCOMPRESSED: u64 = 128 * 1024;
/// Uncompressed data is copied through a buffer of this size.
pub(super) const COPY_PIECE: u64 = 4 * 1024 * 1024;
/// The kernel's default `max_inline` mount option.
pub(crate) const DEFAULT_MAX_INLINE: u64 = 2048;

/// Compression of file data: algorithm and level, or None for none.
pub(crate) type Compress = Option<(Compression, Option<i32>)>;

/// How the walk treats file data.
#[derive(Clone, Debug)]
pub(crate) struct ScanOptions {
    pub(crate) sectorsize: u32,
    pub(crate) nodesize: u32,
    /// Compression of every file not under one of `compress_paths`.
    pub(crate) compress: Option<(Compression, Option<i32>)>,
    /// Compression (None: none) for a path relative to the root and everything
    /// beneath it; the longest matching path wins.
    pub(crate) compress_paths: Vec<(PathBuf, Compress)>,
    /// Directories (relative to the root) that become subvolumes.
    pub(crate) subvols: Vec<SubvolSpec>,
    /// The inode otime (creation time) for every inode: the host has no portable one.
    pub(crate) otime: (u64, u32),
    pub(crate) generation: u64,
    pub(crate) no_holes: bool,
    pub(crate) csum: CsumType,
    /// (st_dev, st_ino) of files not to copy: the images being made, should they
    /// live inside the source tree.
    pub(crate) exclude: Vec<(u64, u64)>,
    /// Inode flags (`INODE_NODATASUM`, `INODE_NODATACOW`) for paths relative to
    /// the root: the host has no portable way to carry them. A NODATASUM file
    /// gets no csum items and is never compressed, as the kernel would write it.
    pub(crate) inode_flags: Vec<(PathBuf, u64)>,
    /// The ctime of every inode instead of the host's: ctime cannot be set on the
    /// host, so reproducible images need it replaced.
    pub(crate) ctime: Option<(u64, u32)>,
    /// Reproducible builds (`SOURCE_DATE_EPOCH`): atime and ctime become this
    /// time and any mtime later than it is clamped to it, as reproducible-builds
    /// tools (tar --clamp-mtime) do; older mtimes are kept.
    pub(crate) clamp_time: Option<(u64, u32)>,
    /// Owners, modes and xattrs to store instead of the host's.
    pub(crate) ownership: Ownership,
    /// Worker threads reading, compressing and checksumming file data
    /// (0: one per core). The image is the same for any number.
    pub(crate) threads: usize,
    /// Bytes of tree items (and of the list of files to copy) held in memory
    /// before they are sorted into temporary files. The image does not
    /// depend on it.
    pub(crate) spill_bytes: usize,
}

impl ScanOptions {
    /// Threads for the walk (with a helper when more than one) and the
    /// data pass's workers: one per core unless told.
    pub(super) fn workers(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// A path relative to the root directory, as options name it: `/`, `.` and
/// trailing slashes mean nothing; `..` is refused (it would leave the tree).
pub(crate) fn relative_path(s: &std::ffi::OsStr, what: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(s).components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                return Err(Error::Invalid(format!(
                    "{what} {:?}: `..` is not allowed (paths are relative to the root directory)",
                    crate::name::Name(s.as_bytes())
                )))
            }
            _ => {}
        }
    }
    Ok(out)
}

/// One `--subvol PATH[:ro][:default]`: a directory of the root directory that
/// becomes a subvolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubvolSpec {
    /// Relative to the root directory; never empty (the root is subvolume 5).
    pub(crate) path: PathBuf,
    /// BTRFS_ROOT_SUBVOL_RDONLY in its root item.
    pub(crate) readonly: bool,
    /// The subvolume the kernel mounts when no subvol= or subvolid= is given.
    pub(crate) default: bool,
}

impl SubvolSpec {
    /// Parse `PATH[:ro][:default]` (the suffixes in any order; PATH any bytes).
    pub fn parse(s: &(impl AsRef<std::ffi::OsStr> + ?Sized)) -> Result<SubvolSpec> {
        let s = s.as_ref().as_bytes();
        let (mut rest, mut readonly, mut default) = (s, false, false);
        loop {
            if let Some(r) = rest.strip_suffix(b":ro") {
                readonly = true;
                rest = r;
            } else if let Some(r) = rest.strip_suffix(b":default") {
                default = true;
                rest = r;
            } else {
                break;
            }
        }
        let path = relative_path(std::ffi::OsStr::from_bytes(rest), "--subvol")?;
        if path.as_os_str().is_empty() {
            return Err(Error::Invalid(format!(
                "--subvol {:?}: want PATH[:ro][:default], a directory below the root directory (the root itself is the top-level subvolume)",
                crate::name::Name(s)
            )));
        }
        Ok(SubvolSpec { path, readonly, default })
    }
}

/// A subvolume made by the walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScanSubvol {
    /// Its tree id (256, 257, ... in walk order).
    pub(crate) id: u64,
    /// The subvolume holding the directory it is linked in (5 for the top level).
    pub(crate) parent: u64,
    /// That directory's inode number in `parent`.
    pub(crate) dirid: u64,
    /// The DIR_INDEX of its entry in that directory.
    pub(crate) index: u64,
    pub(crate) name: Vec<u8>,
    /// Relative to the root directory.
    pub(crate) path: PathBuf,
    pub(crate) readonly: bool,
    pub(crate) default: bool,
}

#[derive(Clone, Debug)]
pub(super) enum Content {
    None,
    /// Whole file (or symlink target) stored in the leaf: (bytes as stored, compression).
    Inline(Vec<u8>, u8),
    /// A regular file small enough to live inline: read (and maybe
    /// compressed) when its item is made, not kept from the scan on, so the
    /// contents of many small files are not in memory twice.
    InlineFile,
    /// Sector-aligned data ranges [start, end) of a regular file, holes between them.
    Ranges(Vec<(u64, u64)>),
}

#[derive(Clone, Debug)]
pub(super) struct ScanInode {
    /// The tree (subvolume) the inode lives in.
    pub(super) subvol: u64,
    pub(super) ino: u64,
    pub(super) kind: FileType,
    /// Relative to the root directory (empty for the root itself).
    pub(super) path: PathBuf,
    /// Where the file's bytes begin in the archive (`--rootdir-tar`; 0 for a host file).
    pub(super) offset: u64,
    /// The host file's (device, inode) when the walk saw it: the data pass
    /// opens that file or none (see [`open_source`]).
    pub(super) host_id: HostId,
    /// Data segments of a sparse archive member (see [`SourceFile::sparse`]).
    pub(super) sparse: Option<Arc<[(u64, u64)]>>,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) rdev: u64,
    pub(super) size: u64,
    pub(super) atime: (u64, u32),
    pub(super) mtime: (u64, u32),
    pub(super) ctime: (u64, u32),
    /// INODE_* flags for the inode item.
    pub(super) flags: u64,
    /// How its data is compressed (unless `flags` forbid it).
    pub(super) compress: Compress,
    /// (parent inode, dir index, name), one per hard link.
    pub(super) names: Vec<(u64, u64, Vec<u8>)>,
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) content: Content,
    /// Directories: the bytes of their entries' names, twice (DIR_ITEM and
    /// DIR_INDEX), which is a directory's i_size.
    pub(super) dir_size: u64,
}

/// The source tree as read by [`scan`] or [`scan_tar`]. Memory stays flat
/// whatever its size: the items the walk makes go to an [`ItemSorter`] and
/// the files whose data is to be copied to a [`Spill`], both of which move
/// to temporary files past their budget. Only the directories being walked
/// and inodes with several names (hard links, whose last name may come at
/// the end of the walk) are held.
pub(crate) struct Scan {
    pub(super) opts: ScanOptions,
    /// Where [`write_data`] reads file bytes from.
    pub(super) data: DataSource,
    /// Which of `opts.inode_flags` matched a scanned path (unmatched ones are an error).
    pub(super) flags_used: Vec<bool>,
    /// Likewise for `opts.ownership.manifest`.
    pub(super) manifest_used: Vec<bool>,
    /// Likewise for `opts.compress_paths`.
    pub(super) compress_used: Vec<bool>,
    /// Subvolumes made so far, in id order.
    pub(super) subvols: Vec<ScanSubvol>,
    /// Next free inode number of each subvolume: numbers restart in each tree.
    pub(super) next_ino: BTreeMap<u64, u64>,
    /// The items of the subvolume trees the walk makes, while it walks.
    sorter: ItemSorter,
    /// Those items as sorted runs, once the walk is done.
    pub(super) items: Vec<Spill>,
    /// The files whose data the data pass copies, in inode order (see [`Job`]).
    pub(super) jobs: Spill,
    /// Inodes with several host names, until the walk has found them all.
    pub(super) linked: Vec<Option<ScanInode>>,
    /// File bytes the data pass reads (for its progress).
    pub(super) data_total: u64,
    /// Upper bound of data bytes the regular extents take on disk.
    pub(crate) data_bytes: u64,
    /// Rough upper bound of the fs and csum tree item bytes.
    pub(crate) metadata_bytes: u64,
    pub(crate) files: u64,
    pub(crate) dirs: u64,
    pub(crate) symlinks: u64,
    pub(crate) special: u64,
    pub(crate) hardlinks: u64,
    pub(crate) warnings: Vec<String>,
}

pub(super) fn ts(sec: i64, nsec: i64) -> (u64, u32) {
    // Times before 1970 keep their two's-complement seconds, as the kernel stores them.
    (sec as u64, nsec.clamp(0, 999_999_999) as u32)
}

/// What the walk reads: a host directory (`--rootdir`) or the members of an
/// archive read into memory, data left in the archive (`--rootdir-tar`).
/// Paths are relative to the root directory.
pub(crate) enum Tree<'a> {
    Host(&'a Path),
    Archive(&'a tar::TarTree),
}

impl Tree<'_> {
    /// How messages name a path: the host path, or ARCHIVE:MEMBER.
    fn shown(&self, rel: &Path) -> PathBuf {
        match self {
            Tree::Host(root) => root.join(rel),
            Tree::Archive(t) => t.shown(rel),
        }
    }

    /// The names in directory `rel`, in byte order; for a host tree also
    /// the directory, open, to stat them relative to it (see [`Dir::fd`]).
    fn list(&self, rel: &Path, id: HostId) -> Result<(Vec<Vec<u8>>, Option<OwnedFd>)> {
        match self {
            Tree::Host(root) => {
                let path = root.join(rel);
                let fd = crate::ops::host::open_dir(&path, id, named_root(rel))?;
                Ok((crate::ops::host::sorted_names(&fd, &path)?, Some(fd)))
            }
            Tree::Archive(t) => Ok((t.list(rel), None)),
        }
    }

    /// The file named `name` in the directory being walked (`rel` its path
    /// from the root): for a host tree, stat'ed relative to the directory
    /// open as `dir`, reopened (as the directory `dir_id` names) when the
    /// walk comes back to it: a directory above it swapped for a symlink
    /// meanwhile cannot lead the scan, and the data pass after it, outside
    /// the tree.
    fn stat_in(&self, dir: &mut Option<Arc<OwnedFd>>, dir_rel: &Path, dir_id: HostId, name: &[u8], rel: &Path) -> Result<SourceFile> {
        let root = match self {
            Tree::Host(root) => root,
            Tree::Archive(t) => return t.stat(rel).ok_or_else(|| Error::io(self.shown(rel), "lstat", std::io::ErrorKind::NotFound.into())),
        };
        let fd = match dir {
            Some(fd) => fd,
            None => dir.insert(Arc::new(crate::ops::host::open_dir(&root.join(dir_rel), dir_id, named_root(dir_rel))?)),
        };
        host_stat_at(root, fd, name, rel)
    }

    /// The file at `rel`, or None when there is none.
    fn stat(&self, rel: &Path) -> Result<Option<SourceFile>> {
        let root = match self {
            Tree::Host(root) => root,
            Tree::Archive(t) => return Ok(t.stat(rel)),
        };
        let path = root.join(rel);
        let stat = if named_root(rel) { rustix::fs::stat(&path) } else { rustix::fs::lstat(&path) };
        match stat {
            Ok(st) => Ok(Some(host_source_file(&st))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io(path, "lstat", e.into())),
        }
    }

    /// The target of the symlink `rel`, which a stat found to be `id`: read
    /// from that inode, not by path again (see [`Pinned`]).
    fn read_link(&self, rel: &Path, id: HostId) -> Result<Vec<u8>> {
        match self {
            Tree::Host(root) => Pinned::new(&root.join(rel), id, named_root(rel))?.read_link(),
            Tree::Archive(t) => Ok(t.link_target(rel)),
        }
    }

    /// Extended attributes, sorted by name.
    fn xattrs(&self, rel: &Path, id: HostId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match self {
            Tree::Host(root) => host_xattrs(root, rel, id),
            Tree::Archive(t) => Ok(t.xattrs(rel)),
        }
    }

    /// Sector-aligned data ranges of a regular file `m`: holes stay holes
    /// on the host; an archive member is all data. `xattrs`: whether it has
    /// extended attributes.
    fn data_ranges(&self, rel: &Path, m: &SourceFile, xattrs: bool, sector: u64) -> Result<Vec<(u64, u64)>> {
        let size = m.size;
        match self {
            Tree::Host(root) => host_data_ranges(root, rel, m, xattrs, sector),
            Tree::Archive(t) => Ok(match t.stat(rel).and_then(|f| f.sparse) {
                Some(segments) => sector_ranges(segments.iter().map(|&(o, l)| (o, o + l)), sector),
                None => vec![(0, round_up(size, sector))],
            }),
        }
    }
}

/// The lstat of `name` (at `rel`) in the directory open as `fd`.
fn host_stat_at(root: &Path, fd: &OwnedFd, name: &[u8], rel: &Path) -> Result<SourceFile> {
    let st = crate::ops::host::stat_at(fd, name, || root.join(rel))?;
    Ok(host_source_file(&st))
}

/// The xattrs of host file `rel`, which a stat found to be `id`.
fn host_xattrs(root: &Path, rel: &Path, id: HostId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    crate::ops::host::xattrs_of(&joined(root, rel), id, named_root(rel))
}

/// [`Tree::data_ranges`] of a host file.
fn host_data_ranges(root: &Path, rel: &Path, m: &SourceFile, xattrs: bool, sector: u64) -> Result<Vec<(u64, u64)>> {
    let size = m.size;
    let path = joined(root, rel);
    // A file whose blocks are exactly its size in 4 KiB blocks has no hole
    // to leave out, and a check that it can be read does for opening it (a
    // million small files are a million opens fewer). Blocks also count
    // space past the end (fallocate --keep-size) and an ext4 xattr block,
    // which could hide a hole: a file with more blocks, or with xattrs, is
    // opened and asked, as is one that may be sparse or has no blocks at
    // all (a /proc or /sys file).
    let exact = |b: u64| b > 0 && b.saturating_mul(512) >= size && b.saturating_mul(512) <= round_up(size, 4096);
    if !xattrs && m.blocks.is_some_and(exact) {
        rustix::fs::accessat(rustix::fs::CWD, &path, rustix::fs::Access::READ_OK, rustix::fs::AtFlags::EACCESS)
            .map_err(|e| Error::io(&path, "open", e.into()))?;
        return Ok(vec![(0, round_up(size, sector))]);
    }
    data_ranges(&open_source(&path, m.id)?, &path, size, sector)
}

/// What the walk finds of entry `name` of host directory `dir` open as
/// `fd`: the calls [`Scan::walk_dir`] and [`Scan::add_inode`] make, in
/// their order, for the scan's helper to make ahead of them.
fn host_facts(root: &Path, fd: &OwnedFd, dir: &Path, name: &[u8], sector: u64) -> Facts {
    let rel = joined(dir, Path::new(std::ffi::OsStr::from_bytes(name)));
    let stat = host_stat_at(root, fd, name, &rel);
    let Ok(m) = &stat else { return Facts { stat, found: Found::default() } };
    let xattrs = host_xattrs(root, &rel, m.id);
    let ranges = match &xattrs {
        Ok(x) if FileType::from_mode(m.mode) == Some(FileType::Regular) && m.size > 0 => {
            Some(host_data_ranges(root, &rel, m, !x.is_empty(), sector).map(Ranges::of))
        }
        _ => None,
    };
    Facts { stat, found: Found { xattrs: Some(xattrs), ranges } }
}

/// Where [`write_data`] reads file bytes from.
pub(super) enum DataSource {
    /// The host directory: each file is opened by its path when written.
    Host(PathBuf),
    /// The archive, open once: a member's bytes lie contiguous at its offset.
    Archive { file: File, path: PathBuf },
}

/// The bytes of one file, open for positional reads.
pub(super) struct FileBytes<'a> {
    pub(super) file: FileHandle<'a>,
    /// Added to every offset: where the member's data begins in the archive.
    pub(super) base: u64,
    /// A sparse member's segments as (file offset, length, offset from
    /// `base`): bytes outside them read as zeros.
    pub(super) segments: Option<Vec<(u64, u64, u64)>>,
    /// For errors: the host file, or the archive.
    pub(super) path: PathBuf,
    pub(super) op: String,
}

pub(super) enum FileHandle<'a> {
    Own(File),
    Shared(&'a File),
}

impl FileBytes<'_> {
    /// The host file itself (not an archive's), for copying file to file.
    pub(super) fn into_own_file(self) -> Option<File> {
        match self.file {
            FileHandle::Own(f) => Some(f),
            FileHandle::Shared(_) => None,
        }
    }

    pub(super) fn read_exact_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        let f = match &self.file {
            FileHandle::Own(f) => f,
            FileHandle::Shared(f) => f,
        };
        let Some(segments) = &self.segments else {
            return f.read_exact_at(buf, self.base + at).map_err(|e| Error::io(&self.path, self.op.clone(), e));
        };
        // Holes read as zeros; the segments' bytes come from the archive.
        buf.fill(0);
        let end = at + buf.len() as u64;
        let first = segments.partition_point(|&(off, len, _)| off + len <= at);
        for &(off, len, stored_at) in &segments[first..] {
            if off >= end {
                break;
            }
            let (from, to) = (off.max(at), (off + len).min(end));
            let dst = &mut buf[(from - at) as usize..(to - at) as usize];
            f.read_exact_at(dst, self.base + stored_at + (from - off)).map_err(|e| Error::io(&self.path, self.op.clone(), e))?;
        }
        Ok(())
    }
}

impl DataSource {
    pub(super) fn open(&self, i: &ScanInode) -> Result<FileBytes<'_>> {
        match self {
            DataSource::Host(root) => {
                let path = joined(root, &i.path);
                // The size the walk found is the size copied: a file that
                // grew or shrank since is refused, not cut or padded (its
                // items already say that size).
                let (file, size) = open_source_sized(&path, i.host_id)?;
                if size != i.size {
                    return Err(crate::ops::host::changed(&path, &format!("{size} bytes now, {} when first looked at", i.size)));
                }
                Ok(FileBytes { file: FileHandle::Own(file), base: 0, segments: None, path, op: "read".into() })
            }
            DataSource::Archive { file, path } => Ok(FileBytes {
                file: FileHandle::Shared(file),
                base: i.offset,
                segments: i.sparse.as_ref().map(|sp| {
                    let mut stored = 0u64;
                    sp.iter()
                        .map(|&(off, len)| {
                            stored += len;
                            (off, len, stored - len)
                        })
                        .collect()
                }),
                path: path.clone(),
                op: format!("read member {}", crate::name::Name::of_path(&i.path)),
            }),
        }
    }

    pub(super) fn shown(&self, rel: &Path) -> String {
        match self {
            DataSource::Host(root) => crate::name::Name::of_path(&root.join(rel)).to_string(),
            DataSource::Archive { path, .. } => {
                format!("{}:{}", crate::name::Name::of_path(path), crate::name::Name::of_path(rel))
            }
        }
    }
}

/// Refuse `--subvol` lists mkfs cannot make, before anything is read: each
/// path must be a directory (not a symlink to one) in the tree, named once,
/// and at most one may be the default.
pub(super) fn check_subvols(tree: &Tree<'_>, subvols: &[SubvolSpec]) -> Result<()> {
    for (i, sv) in subvols.iter().enumerate() {
        let shown = crate::name::Name::of_path(&sv.path);
        if subvols[..i].iter().any(|o| o.path == sv.path) {
            return Err(Error::Invalid(format!("--subvol {shown}: given more than once")));
        }
        match tree.stat(&sv.path)? {
            Some(m) if m.is_dir() => {}
            Some(_) => {
                return Err(Error::Invalid(format!(
                    "--subvol {shown}: not a directory ({})",
                    crate::name::Name::of_path(&tree.shown(&sv.path))
                )))
            }
            None => return Err(Error::NotFound(format!("--subvol {shown}: no such directory under the root directory"))),
        }
    }
    if subvols.iter().filter(|s| s.default).count() > 1 {
        return Err(Error::Invalid("--subvol: only one subvolume can be the default".into()));
    }
    Ok(())
}

/// Walk the host directory `root` (the future inode 256 of subvolume 5).
pub(crate) fn scan(root: &Path, opts: &ScanOptions) -> Result<Scan> {
    let meta = std::fs::metadata(root).map_err(io(root, "stat"))?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!("--rootdir {}: not a directory", crate::name::Name::of_path(root))));
    }
    walk(&Tree::Host(root), DataSource::Host(root.to_path_buf()), opts)
}

/// Read a tar archive (`-` for standard input; gzip or zstd compressed too)
/// into the same items [`scan`] makes of the directory it would unpack to.
pub(crate) fn scan_tar(archive: &Path, opts: &ScanOptions) -> Result<Scan> {
    let (file, shown, tree) = tar::read(archive, opts.otime)?;
    let mut opts = opts.clone();
    // Host identities mean nothing inside an archive (see `SourceFile::id`).
    opts.exclude.clear();
    let mut s = walk(&Tree::Archive(&tree), DataSource::Archive { file, path: shown }, &opts)?;
    s.warnings.extend(tree.warnings);
    Ok(s)
}

/// Walk `tree` from its root in bytewise name order, depth first. Subvolumes
/// get tree ids in this walk order, so the ids depend on the tree's shape, not
/// on the order of the `--subvol` options; inode numbers too, so a directory
/// and the archive of it give the same numbers.
pub(super) fn walk(tree: &Tree<'_>, data: DataSource, opts: &ScanOptions) -> Result<Scan> {
    check_subvols(tree, &opts.subvols)?;
    let mut s = Scan {
        opts: opts.clone(),
        data,
        flags_used: vec![false; opts.inode_flags.len()],
        manifest_used: vec![false; opts.ownership.manifest.len()],
        compress_used: vec![false; opts.compress_paths.len()],
        subvols: Vec::new(),
        next_ino: BTreeMap::from([(FS_TREE_OBJECTID, FIRST_FREE_OBJECTID + 1)]),
        sorter: ItemSorter::with_budget(opts.spill_bytes),
        items: Vec::new(),
        jobs: Spill::with_budget(opts.spill_bytes),
        linked: Vec::new(),
        data_total: 0,
        data_bytes: 0,
        metadata_bytes: 0,
        files: 0,
        dirs: 0,
        symlinks: 0,
        special: 0,
        hardlinks: 0,
        warnings: Vec::new(),
    };
    let root = Path::new("");
    let meta = tree.stat(root)?.ok_or_else(|| Error::io(tree.shown(root), "stat", std::io::ErrorKind::NotFound.into()))?;
    let mut top = s.add_inode(tree, root, &meta, FS_TREE_OBJECTID, FIRST_FREE_OBJECTID, None)?;
    top.names.push((FIRST_FREE_OBJECTID, 0, b"..".to_vec()));
    // A host tree's stats, xattrs and data ranges are found ahead of the
    // walk on a helper thread, unless one thread is asked for.
    match tree {
        Tree::Host(root) if opts.workers() > 1 => {
            let sector = u64::from(opts.sectorsize);
            let find = |fd: &OwnedFd, dir: &Path, name: &[u8]| host_facts(root, fd, dir, name, sector);
            super::ahead::with_helper(&find, |ahead| s.walk_dir(tree, top, Some(ahead)))?;
        }
        _ => s.walk_dir(tree, top, None)?,
    }
    // A flag for a path that is not there is a typo, not a no-op: say so.
    if let Some(i) = s.flags_used.iter().position(|u| !u) {
        return Err(Error::NotFound(format!(
            "inode flags for {}: no such path under the root directory",
            crate::name::Name::of_path(&opts.inode_flags[i].0)
        )));
    }
    if let Some(i) = s.compress_used.iter().position(|u| !u) {
        return Err(Error::NotFound(format!(
            "--compress for {}: no such path under the root directory",
            crate::name::Name::of_path(&opts.compress_paths[i].0)
        )));
    }
    // Checked to exist above, so only a path the walk never reached is left:
    // one inside an excluded image or behind a symlink.
    if let Some(sv) = opts.subvols.iter().find(|sv| !s.subvols.iter().any(|m| m.path == sv.path)) {
        return Err(Error::NotFound(format!(
            "--subvol {}: the walk of the root directory does not reach it",
            crate::name::Name::of_path(&sv.path)
        )));
    }
    if let Some(i) = s.manifest_used.iter().position(|u| !u) {
        return Err(Error::NotFound(format!(
            "--manifest entry for {:?}: no such path under the root directory",
            crate::name::Name::of_path(&opts.ownership.manifest[i].path)
        )));
    }
    // Every name of the hard-linked inodes is known now.
    for n in 0..s.linked.len() {
        if let Some(i) = s.linked[n].take() {
            s.emit(&i)?;
            s.linked[n] = Some(i);
        }
    }
    s.items = std::mem::take(&mut s.sorter).finish()?;
    s.jobs.seal()?;
    Ok(s)
}

/// Whether mkfs stores xattr `name` = `value` of an inode of type `ifmt`:
/// what setfattr (and the kernel) would refuse is an error (see
/// `limits::check_xattr_on`, `props::apply`), and an empty btrfs.compression
/// says "no property" (setfattr removes it), so it is not stored.
fn xattr_to_store(name: &[u8], value: &[u8], ifmt: u32) -> Result<bool> {
    crate::format::limits::check_xattr_on(name, Some(value), ifmt)?;
    if name.starts_with(b"btrfs.") {
        let (_, _, empty) = crate::fs::props::apply(name, Some(value), 0)?;
        return Ok(!empty);
    }
    Ok(true)
}

impl Scan {
    /// The subvolumes made, in id order.
    pub(crate) fn subvolumes(&self) -> &[ScanSubvol] {
        &self.subvols
    }

    /// Whether any file may be compressed with `kind`.
    pub(crate) fn uses_compression(&self, kind: Compression) -> bool {
        self.opts.compress.map(|c| c.0) == Some(kind) || self.opts.compress_paths.iter().any(|(_, c)| c.map(|c| c.0) == Some(kind))
    }

    /// Whether any file may be compressed.
    pub(crate) fn any_compression(&self) -> bool {
        self.opts.compress.is_some() || self.opts.compress_paths.iter().any(|(_, c)| c.is_some())
    }

    /// `found`: what the scan's helper found of it (see [`Facts`]).
    fn add_inode(&mut self, tree: &Tree<'_>, rel: &Path, m: &SourceFile, subvol: u64, ino: u64, found: Option<Found>) -> Result<ScanInode> {
        let kind = FileType::from_mode(m.mode).ok_or_else(|| {
            Error::Unsupported(format!("{}: unknown file type {:o}", crate::name::Name::of_path(&tree.shown(rel)), m.mode))
        })?;
        let sector = self.opts.sectorsize as u64;
        let Found { xattrs: found_xattrs, ranges: found_ranges } = found.unwrap_or_default();
        let xattrs = match found_xattrs {
            Some(x) => x?,
            None => tree.xattrs(rel, m.id)?,
        };
        let flags = self.flags_for(rel);
        let wanted = self.compress_for(rel);
        let mut content = Content::None;
        let mut size = 0;
        match kind {
            FileType::Regular => {
                size = m.size;
                self.files += 1;
                if size > 0 {
                    let ranges = match found_ranges {
                        Some(r) => r?.into_vec(),
                        None => tree.data_ranges(rel, m, !xattrs.is_empty(), sector)?,
                    };
                    if size <= DEFAULT_MAX_INLINE && size < sector && !ranges.is_empty() {
                        content = Content::InlineFile;
                        self.data_total += size;
                    } else {
                        self.data_total += ranges.iter().map(|r| r.1 - r.0).sum::<u64>();
                        self.data_bytes += ranges.iter().map(|r| r.1 - r.0).sum::<u64>();
                        let sums = if flags & INODE_NODATASUM != 0 { 0 } else { 1 };
                        let csums = sums * ranges.iter().map(|r| (r.1 - r.0) / sector).sum::<u64>() * self.opts.csum.size() as u64;
                        let pieces = ranges.iter().map(|r| (r.1 - r.0).div_ceil(MAX_UNCOMPRESSED)).sum::<u64>();
                        self.metadata_bytes += csums + pieces * (53 + 53 + 50);
                        content = Content::Ranges(ranges);
                    }
                }
            }
            FileType::Symlink => {
                self.symlinks += 1;
                let t = tree.read_link(rel, m.id)?;
                crate::format::limits::check_symlink_target(&t, self.opts.nodesize, sector as u32)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", crate::name::Name::of_path(&tree.shown(rel)))))?;
                size = t.len() as u64;
                content = Content::Inline(t, COMPRESS_NONE);
            }
            FileType::Directory => self.dirs += 1,
            _ => self.special += 1,
        }
        let mut kept = Vec::new();
        for (n, v) in xattrs {
            if n.is_empty() || n.contains(&0) {
                return Err(Error::Invalid(format!(
                    "{}: an xattr with an empty name or a NUL in its name",
                    crate::name::Name::of_path(&tree.shown(rel))
                )));
            }
            if crate::format::limits::check_xattr(&n, Some(&v), self.opts.nodesize).is_err() {
                self.warnings.push(format!(
                    "{}: xattr {} ({} bytes) does not fit a {}-byte tree block; skipped",
                    crate::name::Name::of_path(&tree.shown(rel)),
                    crate::name::Name(&n),
                    v.len(),
                    self.opts.nodesize
                ));
                continue;
            }
            if !xattr_to_store(&n, &v, m.mode & S_IFMT)
                .map_err(|e| Error::Invalid(format!("{}: {e}", crate::name::Name::of_path(&tree.shown(rel)))))?
            {
                continue;
            }
            self.metadata_bytes += (n.len() + v.len() + 60) as u64;
            kept.push((n, v));
        }
        self.metadata_bytes += 400;
        let rdev = if matches!(kind, FileType::CharDevice | FileType::BlockDevice) { m.rdev } else { 0 };
        let own = &self.opts.ownership;
        let map_id = |id: u32| own.owner_map.iter().find_map(|r| r.map(id)).unwrap_or(id);
        if !own.owner_map.is_empty() {
            // Named users and groups of POSIX ACLs are owners too: shifted
            // alike, as an idmapped mount or a user namespace shifts them.
            for (n, v) in kept.iter_mut() {
                if n.as_slice() == b"system.posix_acl_access" || n.as_slice() == b"system.posix_acl_default" {
                    *v = remap_acl(v, map_id).map_err(|why| {
                        Error::Invalid(format!("{}: {}: {why}", crate::name::Name::of_path(&tree.shown(rel)), crate::name::Name(n)))
                    })?;
                }
            }
        }
        let (mut uid, mut gid) = (map_id(m.uid), map_id(m.gid));
        if own.all_root {
            (uid, gid) = (0, 0);
        }
        let (mut atime, mut mtime) = (m.atime, m.mtime);
        let mut ctime = self.opts.ctime.unwrap_or(m.ctime);
        if let Some(t) = self.opts.clamp_time {
            // atime and ctime say when the build host touched the file: not content.
            (atime, ctime) = (t, t);
            // Compare as signed seconds: pre-1970 times are stored two's complement.
            if (mtime.0 as i64, mtime.1) > (t.0 as i64, t.1) {
                mtime = t;
            }
        }
        let mut inode = ScanInode {
            subvol,
            ino,
            kind,
            path: rel.to_path_buf(),
            offset: m.offset,
            host_id: m.id,
            sparse: m.sparse.clone(),
            mode: m.mode,
            uid,
            gid,
            rdev,
            size,
            atime,
            mtime,
            ctime,
            flags,
            compress: wanted,
            names: Vec::new(),
            xattrs: kept,
            content,
            dir_size: 0,
        };
        self.apply_manifest(&mut inode, rel)?;
        Ok(inode)
    }

    /// Apply the `--manifest` lines for `rel` (one of the names of `ino`).
    fn apply_manifest(&mut self, ino: &mut ScanInode, rel: &Path) -> Result<()> {
        for (i, e) in self.opts.ownership.manifest.iter().enumerate() {
            if e.path.as_path() != rel {
                continue;
            }
            self.manifest_used[i] = true;
            if let Some(m) = e.mode {
                ino.mode = (ino.mode & !0o7777) | m;
            }
            if let Some(u) = e.uid {
                ino.uid = u;
            }
            if let Some(g) = e.gid {
                ino.gid = g;
            }
            for (name, value) in &e.xattrs {
                ino.xattrs.retain(|x| &x.0 != name);
                if let Some(v) = value {
                    let bad = |err: Error| Error::Invalid(format!("--manifest: {}: {err}", self.data.shown(rel)));
                    crate::format::limits::check_xattr(name, Some(v), self.opts.nodesize).map_err(bad)?;
                    if !xattr_to_store(name, v, ino.mode & S_IFMT).map_err(bad)? {
                        continue;
                    }
                    ino.xattrs.push((name.clone(), v.clone()));
                    self.metadata_bytes += (name.len() + v.len() + 60) as u64;
                }
            }
            ino.xattrs.sort();
        }
        Ok(())
    }

    /// The compression asked for `rel`: that of the longest `--compress ...:PATH`
    /// naming it or a directory above it, else the global one. A path named
    /// exactly is marked used.
    fn compress_for(&mut self, rel: &Path) -> Compress {
        let mut best: Option<(usize, Compress)> = None;
        for (i, (p, c)) in self.opts.compress_paths.iter().enumerate() {
            if p.as_path() == rel {
                self.compress_used[i] = true;
            }
            let depth = p.components().count();
            if rel.starts_with(p) && best.is_none_or(|(d, _)| depth >= d) {
                best = Some((depth, *c));
            }
        }
        best.map_or(self.opts.compress, |(_, c)| c)
    }

    /// The inode flags asked for `rel` (marking them used).
    fn flags_for(&mut self, rel: &Path) -> u64 {
        let mut flags = 0u64;
        for (i, (p, f)) in self.opts.inode_flags.iter().enumerate() {
            if p.as_path() == rel {
                flags |= f;
                self.flags_used[i] = true;
            }
        }
        flags
    }

    /// The next free inode number in subvolume `subvol`.
    fn take_ino(&mut self, subvol: u64) -> u64 {
        let next = self.next_ino.entry(subvol).or_insert(FIRST_FREE_OBJECTID + 1);
        *next += 1;
        *next - 1
    }

    /// Make the directory `rel` (named `name` at `index` in directory
    /// `dir_idx`) the top directory of a new subvolume: inode 256 of its own
    /// tree, whose ".." INODE_REF points at itself as in every subvolume.
    #[allow(clippy::too_many_arguments)]
    fn add_subvol(
        &mut self,
        tree: &Tree<'_>,
        spec: SubvolSpec,
        (parent, dirid): (u64, u64),
        index: u64,
        name: &[u8],
        rel: &Path,
        m: &SourceFile,
    ) -> Result<ScanInode> {
        let id = FIRST_FREE_OBJECTID + self.subvols.len() as u64;
        self.subvols.push(ScanSubvol {
            id,
            parent,
            dirid,
            index,
            name: name.to_vec(),
            path: spec.path,
            readonly: spec.readonly,
            default: spec.default,
        });
        self.next_ino.insert(id, FIRST_FREE_OBJECTID + 1);
        // Its own tree: at least one more leaf, and a root item with its refs.
        self.metadata_bytes += self.opts.nodesize as u64 + 1024;
        let mut top = self.add_inode(tree, rel, m, id, FIRST_FREE_OBJECTID, None)?;
        top.names.push((FIRST_FREE_OBJECTID, 0, b"..".to_vec()));
        Ok(top)
    }

    /// Walk directory `top` and everything beneath it, depth first in name
    /// order. Iterative, with an explicit stack of the directories being
    /// walked: a host tree (or an archive's paths) as deep as the host allows
    /// must not overflow the thread's stack. A directory's items are made
    /// when its listing ends (its size counts every name); every other
    /// inode's as soon as its name is known, unless it has more names to
    /// come (a hard link).
    fn walk_dir(&mut self, tree: &Tree<'_>, top: ScanInode, ahead: Option<&Ahead>) -> Result<()> {
        let mut keys = 0u64;
        let mut open = |inode: ScanInode| -> Result<Dir> {
            // DIR_INDEX numbers start at 2 in every directory (0 and 1 are "." and "..").
            let (names, fd) = tree.list(&inode.path, inode.host_id)?;
            let (names, fd, key) = (Arc::new(names), fd.map(Arc::new), keys);
            keys += 1;
            if let Some(a) = ahead {
                a.open(key, &inode.path, names.clone(), fd.clone());
            }
            Ok(Dir { names, next: 0, inode, index: 2, fd, key })
        };
        // Host files with several links: (st_dev, st_ino) → (subvolume, index in `linked`).
        let mut by_id: HashMap<(u64, u64), Vec<(u64, usize)>> = HashMap::new();
        let mut stack = vec![open(top)?];
        while let Some(dir) = stack.last_mut() {
            let names = Arc::clone(&dir.names);
            let Some(name) = names.get(dir.next) else {
                if let Some(done) = stack.pop() {
                    if let Some(a) = ahead {
                        a.leave(done.key);
                        if let Some(up) = stack.last() {
                            a.resume(up.key, up.fd.clone());
                        }
                    }
                    self.emit(&done.inode)?;
                }
                continue;
            };
            let found = ahead.and_then(|a| a.take(dir.key, dir.next));
            dir.next += 1;
            let index = dir.index;
            dir.index += 1;
            let (subvol, dir_ino) = (dir.inode.subvol, dir.inode.ino);
            let rel = joined(&dir.inode.path, Path::new(std::ffi::OsStr::from_bytes(name)));
            let (m, found) = match found {
                Some(Facts { stat, found }) => (stat?, Some(found)),
                None => {
                    let reopened = dir.fd.is_none();
                    let m = tree.stat_in(&mut dir.fd, &dir.inode.path, dir.inode.host_id, name, &rel)?;
                    if let (Some(a), true) = (ahead, reopened) {
                        a.resume(dir.key, dir.fd.clone());
                    }
                    (m, None)
                }
            };
            if self.opts.exclude.contains(&m.id) {
                self.warnings
                    .push(format!("{}: is one of the images being made; not copied", crate::name::Name::of_path(&tree.shown(&rel))));
                continue;
            }
            self.metadata_bytes += (3 * (name.len() + 60)) as u64;
            let spec = if m.is_dir() { self.opts.subvols.iter().find(|s| s.path == rel).cloned() } else { None };
            if let Some(spec) = spec {
                let sv = self.add_subvol(tree, spec, (subvol, dir_ino), index, name, &rel, &m)?;
                self.entry(&mut stack, name, Key::new(sv.subvol, ROOT_ITEM_KEY, 0), FileType::Directory, index)?;
                descend(&mut stack, open(sv)?, ahead);
                continue;
            }
            // A hard link is one inode only within one subvolume: the kernel
            // cannot link across subvolumes, so each subvolume that holds names
            // of the source file gets its own copy (as mkfs.btrfs does).
            let linked = if !m.is_dir() && m.nlink > 1 { by_id.get(&m.id) } else { None };
            let existing = linked.and_then(|l| l.iter().find(|(sv, _)| *sv == subvol)).map(|&(_, i)| i);
            if existing.is_none() && linked.is_some() {
                self.warnings.push(format!(
                    "{}: hard link across a subvolume boundary; stored as a separate copy in subvolume {subvol}",
                    crate::name::Name::of_path(&tree.shown(&rel))
                ));
            }
            if let Some(n) = existing {
                self.hardlinks += 1;
                let mut inode = self.linked[n].take().ok_or_else(|| Error::Invalid("hard link bookkeeping (internal)".into()))?;
                // Flags belong to the inode: any of its names may carry them.
                inode.flags |= self.flags_for(&rel);
                let applied = self.apply_manifest(&mut inode, &rel);
                inode.names.push((dir_ino, index, name.clone()));
                let (ino, kind) = (inode.ino, inode.kind);
                self.linked[n] = Some(inode);
                applied?;
                self.entry(&mut stack, name, Key::new(ino, INODE_ITEM_KEY, 0), kind, index)?;
                continue;
            }
            let ino = self.take_ino(subvol);
            let mut inode = self.add_inode(tree, &rel, &m, subvol, ino, found)?;
            inode.names.push((dir_ino, index, name.clone()));
            let kind = inode.kind;
            self.entry(&mut stack, name, Key::new(ino, INODE_ITEM_KEY, 0), kind, index)?;
            if kind == FileType::Directory {
                descend(&mut stack, open(inode)?, ahead);
            } else if m.nlink > 1 {
                // More names may follow: items at the end of the walk; the
                // data keeps its place in inode order.
                self.push_job(&inode, Some(self.linked.len()))?;
                by_id.entry(m.id).or_default().push((subvol, self.linked.len()));
                self.linked.push(Some(inode));
            } else {
                self.push_job(&inode, None)?;
                self.emit(&inode)?;
            }
        }
        Ok(())
    }

    /// The DIR_ITEM and DIR_INDEX of one name in the directory at the top of
    /// the walk's stack, whose size grows by the name twice.
    fn entry(&mut self, stack: &mut [Dir], name: &[u8], location: Key, kind: FileType, index: u64) -> Result<()> {
        let dir = stack.last_mut().ok_or_else(|| Error::Invalid("directory entry outside a directory (internal)".into()))?;
        dir.inode.dir_size += 2 * name.len() as u64;
        let (subvol, dir) = (dir.inode.subvol, dir.inode.ino);
        let v = encode::dir_item(&DirEntry {
            location,
            transid: self.opts.generation,
            dir_type: kind.dir_type(),
            name: name.to_vec(),
            data: Vec::new(),
        })?;
        // Names whose hashes collide share one DIR_ITEM: the sorter joins them.
        self.sorter.push(subvol, Key::new(dir, DIR_ITEM_KEY, name_hash(name)), &v)?;
        self.sorter.push(subvol, Key::new(dir, DIR_INDEX_KEY, index), &v)
    }

    /// Note a regular file whose data the data pass copies; a hard-linked
    /// one by its place in `linked` (its flags may change with later names).
    fn push_job(&mut self, i: &ScanInode, linked: Option<usize>) -> Result<()> {
        if !matches!(i.content, Content::InlineFile | Content::Ranges(_)) {
            return Ok(());
        }
        let mut w = RecordWriter::default();
        match linked {
            Some(n) => {
                w.u8(1).u64(n as u64);
            }
            None => Job::encode(i, &mut w),
        }
        self.jobs.push(&w.buf)
    }

    /// Every item of inode `i` but its directory entries and file data:
    /// the inode item, its names, xattrs, inline symlink target and (without
    /// NO_HOLES) the extents of its holes.
    fn emit(&mut self, i: &ScanInode) -> Result<()> {
        let opts = &self.opts;
        let (gen, tree, sector) = (opts.generation, i.subvol, opts.sectorsize as u64);
        let k = |item_type: u8, offset: u64| Key::new(i.ino, item_type, offset);
        let sorter = &mut self.sorter;
        let nbytes = match &i.content {
            Content::None => 0,
            Content::InlineFile => i.size,
            Content::Inline(data, compression) => {
                let ram = if i.kind == FileType::Symlink { data.len() as u64 } else { i.size };
                sorter.push(tree, k(EXTENT_DATA_KEY, 0), &inline_extent(gen, ram, *compression, data.clone()))?;
                ram
            }
            Content::Ranges(ranges) => {
                // Without NO_HOLES every hole has an extent item of its own.
                let mut file_end = 0u64;
                for &(start, end) in ranges {
                    if !opts.no_holes && start > file_end {
                        let v = regular_extent(gen, start - file_end, 0, 0, 0, start - file_end);
                        sorter.push(tree, k(EXTENT_DATA_KEY, file_end), &v)?;
                    }
                    file_end = end;
                }
                let size_end = round_up(i.size, sector);
                if !opts.no_holes && size_end > file_end {
                    let v = regular_extent(gen, size_end - file_end, 0, 0, 0, size_end - file_end);
                    sorter.push(tree, k(EXTENT_DATA_KEY, file_end), &v)?;
                }
                ranges.iter().map(|r| r.1 - r.0).sum()
            }
        };
        if matches!(i.content, Content::None) && i.kind == FileType::Regular && i.size > 0 && !opts.no_holes {
            // An all-hole file still needs its hole described without NO_HOLES.
            let len = round_up(i.size, sector);
            sorter.push(tree, k(EXTENT_DATA_KEY, 0), &regular_extent(gen, len, 0, 0, 0, len))?;
        }
        sorter.push(tree, k(INODE_ITEM_KEY, 0), &encode::inode_item(&inode_item(i, opts, nbytes)))?;
        let max_item = crate::tree::builder::max_item_size(opts.nodesize);
        // Bytes of the INODE_REF item under each parent so far.
        let mut held: Vec<(u64, usize)> = Vec::new();
        for (parent, index, name) in &i.names {
            let entry = InodeRefEntry { parent: *parent, index: *index, name: name.clone() };
            let v = encode::inode_refs(std::slice::from_ref(&entry))?;
            let h = match held.iter_mut().find(|h| h.0 == *parent) {
                Some(h) => h,
                None => {
                    held.push((*parent, 0));
                    held.last_mut().ok_or_else(|| Error::Invalid("inode refs (internal)".into()))?
                }
            };
            if h.1 > 0 && h.1 + v.len() > max_item {
                // The INODE_REF item for this directory is full (many hard links in one
                // directory): like the kernel, continue in INODE_EXTREF items.
                let x = encode::inode_extrefs(std::slice::from_ref(&entry))?;
                sorter.push(tree, k(INODE_EXTREF_KEY, extref_hash(*parent, name)), &x)?;
            } else {
                h.1 += v.len();
                sorter.push(tree, k(INODE_REF_KEY, *parent), &v)?;
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
            sorter.push(tree, k(XATTR_ITEM_KEY, name_hash(name)), &v)?;
        }
        Ok(())
    }
}

/// Whether `rel` is the root directory itself: the one the user named, which
/// is followed through a symlink too; nothing below it is.
fn named_root(rel: &Path) -> bool {
    rel.as_os_str().is_empty()
}

/// A host stat as a [`SourceFile`]. The kernel's stat fields differ in type
/// between architectures: plain casts.
#[allow(clippy::unnecessary_cast)]
fn host_source_file(st: &rustix::fs::Stat) -> SourceFile {
    SourceFile {
        mode: st.st_mode as u32,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        rdev: host_rdev_to_btrfs(st.st_rdev as u64),
        size: st.st_size as u64,
        atime: ts(st.st_atime as i64, st.st_atime_nsec as i64),
        mtime: ts(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: ts(st.st_ctime as i64, st.st_ctime_nsec as i64),
        nlink: st.st_nlink as u64,
        id: (st.st_dev as u64, st.st_ino as u64),
        offset: 0,
        sparse: None,
        blocks: Some(st.st_blocks as u64),
    }
}

/// Walk into directory `child`: the one it is in closes its descriptor
/// meanwhile (see [`Dir::fd`]).
fn descend(stack: &mut Vec<Dir>, child: Dir, ahead: Option<&Ahead>) {
    if let Some(d) = stack.last_mut() {
        d.fd = None;
        if let Some(a) = ahead {
            a.close(d.key);
        }
    }
    stack.push(child);
}

/// A directory being walked: its inode, its names in byte order and the
/// DIR_INDEX number of the next one.
struct Dir {
    inode: ScanInode,
    /// Its names, shared with the scan's helper, and the next one's place.
    names: Arc<Vec<Vec<u8>>>,
    next: usize,
    index: u64,
    /// A host directory, open while its entries are stat'ed; closed while
    /// the walk is below it (one descriptor at a time, whatever the depth)
    /// and reopened by identity when it comes back.
    fd: Option<Arc<OwnedFd>>,
    /// How the scan's helper knows it.
    key: u64,
}

/// What the data pass needs of one file, as the walk notes it in
/// [`Scan::jobs`]: its place, how to read it, its size and data ranges, and
/// how to store them.
pub(super) struct Job;

impl Job {
    fn encode(i: &ScanInode, w: &mut RecordWriter) {
        w.u8(0).u64(i.subvol).u64(i.ino).u64(i.size).u64(i.flags).u64(i.offset).u64(i.host_id.0).u64(i.host_id.1);
        match i.compress {
            None => w.u8(0),
            Some((kind, None)) => w.u8(1).u8(kind.raw()),
            Some((kind, Some(level))) => w.u8(2).u8(kind.raw()).u32(level as u32),
        };
        let pairs = |w: &mut RecordWriter, v: &[(u64, u64)]| {
            w.u32(v.len() as u32);
            for &(a, b) in v {
                w.u64(a).u64(b);
            }
        };
        match &i.sparse {
            None => {
                w.u8(0);
            }
            Some(sp) => {
                w.u8(1);
                pairs(w, sp);
            }
        }
        match &i.content {
            Content::Ranges(r) => {
                w.u8(1);
                pairs(w, r);
            }
            _ => {
                w.u8(0);
            }
        }
        w.bytes(i.path.as_os_str().as_bytes());
    }

    /// The inode a job record names (a hard-linked one from `linked`).
    pub(super) fn decode(rec: &[u8], linked: &[Option<ScanInode>]) -> Result<ScanInode> {
        let mut r = RecordReader::new(rec);
        if r.u8()? == 1 {
            let n = r.u64()? as usize;
            return linked
                .get(n)
                .cloned()
                .flatten()
                .ok_or_else(|| Error::Invalid("data pass: a hard link's inode is missing (internal)".into()));
        }
        let (subvol, ino, size, flags, offset) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let host_id = (r.u64()?, r.u64()?);
        let compression = |raw: u8| Compression::from_raw(raw).map_err(|e| Error::Invalid(format!("data pass: {e} (internal)")));
        let compress = match r.u8()? {
            0 => None,
            1 => Some((compression(r.u8()?)?, None)),
            _ => Some((compression(r.u8()?)?, Some(r.u32()? as i32))),
        };
        let pairs = |r: &mut RecordReader| -> Result<Vec<(u64, u64)>> { (0..r.u32()?).map(|_| Ok((r.u64()?, r.u64()?))).collect() };
        let sparse = match r.u8()? {
            0 => None,
            _ => Some(Arc::from(pairs(&mut r)?)),
        };
        let content = match r.u8()? {
            0 => Content::InlineFile,
            _ => Content::Ranges(pairs(&mut r)?),
        };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(r.bytes()?));
        Ok(ScanInode {
            subvol,
            ino,
            kind: FileType::Regular,
            path,
            offset,
            host_id,
            sparse,
            mode: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            size,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: (0, 0),
            flags,
            compress,
            names: Vec::new(),
            xattrs: Vec::new(),
            content,
            dir_size: 0,
        })
    }
}

/// The inline EXTENT_DATA item of a small file of bytes `buf`: small files
/// live in the leaf; compressed there too when that is smaller, as the
/// kernel does.
pub(super) fn inline_file_item(gen: u64, buf: Vec<u8>, compress: Option<(Compression, Option<i32>)>, sectorsize: u32) -> Vec<u8> {
    let ram = buf.len() as u64;
    if let Some((kind, level)) = compress {
        if let Ok(c) = compress::encode(kind, &buf, sectorsize, level) {
            if c.len() < buf.len() {
                return inline_extent(gen, ram, kind.raw(), c);
            }
        }
    }
    inline_extent(gen, ram, COMPRESS_NONE, buf)
}

pub(super) fn inode_item(i: &ScanInode, opts: &ScanOptions, nbytes: u64) -> InodeItem {
    // A directory's i_size counts every name twice (DIR_ITEM and DIR_INDEX),
    // subvolume entries included, as the kernel and btrfs check count it.
    let size = match i.kind {
        FileType::Directory => i.dir_size,
        _ => i.size,
    };
    let nlink = if i.kind == FileType::Directory { 1 } else { i.names.len() as u32 };
    let t = |(s, n): (u64, u32)| Timespec::new(s, n);
    InodeItem {
        generation: opts.generation.into(),
        transid: opts.generation.into(),
        size: size.into(),
        nbytes: nbytes.into(),
        block_group: 0.into(),
        nlink: nlink.into(),
        uid: i.uid.into(),
        gid: i.gid.into(),
        mode: i.mode.into(),
        rdev: i.rdev.into(),
        flags: i.flags.into(),
        sequence: 0.into(),
        reserved: [0.into(); 4],
        atime: t(i.atime),
        ctime: t(i.ctime),
        mtime: t(i.mtime),
        otime: t(opts.otime),
    }
}

/// An inline EXTENT_DATA item holding `data` (compressed with `compression`,
/// standing for `ram` file bytes).
pub(super) fn inline_extent(gen: u64, ram: u64, compression: u8, data: Vec<u8>) -> Vec<u8> {
    encode::file_extent(&FileExtent {
        generation: gen,
        ram_bytes: ram,
        compression,
        encryption: 0,
        other_encoding: 0,
        kind: FileExtentKind::Inline { data },
    })
}

/// A regular EXTENT_DATA item naming `num_bytes` file bytes from the start
/// of the extent at `disk_bytenr` (0: a hole).
pub(super) fn regular_extent(gen: u64, ram: u64, compression: u8, disk_bytenr: u64, disk_num_bytes: u64, num_bytes: u64) -> Vec<u8> {
    encode::file_extent(&FileExtent {
        generation: gen,
        ram_bytes: ram,
        compression,
        encryption: 0,
        other_encoding: 0,
        kind: FileExtentKind::Regular { prealloc: false, disk_bytenr, disk_num_bytes, offset: 0, num_bytes },
    })
}

/// Largest csum item payload in bytes (the kernel's MAX_CSUM_ITEMS, in sectors × csum size).
pub(super) fn max_csum_item_bytes(nodesize: u32, csum_size: usize) -> usize {
    ((crate::tree::builder::leaf_data_size(nodesize) - 2 * 25) / csum_size - 1) * csum_size
}

/// Options for tests: 4 KiB sectors and nodes, crc32c, no compression.
#[cfg(test)]
pub(super) fn test_opts() -> ScanOptions {
    ScanOptions {
        sectorsize: 4096,
        nodesize: 4096,
        compress: None,
        compress_paths: Vec::new(),
        subvols: Vec::new(),
        otime: (0, 0),
        generation: 1,
        no_holes: true,
        csum: CsumType::Crc32c,
        exclude: Vec::new(),
        inode_flags: Vec::new(),
        ctime: None,
        clamp_time: None,
        ownership: Ownership::default(),
        threads: 0,
        spill_bytes: super::spill::SPILL_BUDGET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory swapped for a symlink (to a tree of the same shape
    /// outside) or for another directory after the walk took its identity
    /// is not listed: the scan would copy the outside tree's names and then
    /// its files.
    #[test]
    fn a_swapped_directory_is_not_listed() {
        use std::os::unix::fs::MetadataExt;
        let host = tempfile::tempdir().unwrap();
        let (root, outside) = (host.path().join("r"), host.path().join("outside"));
        for t in [&root, &outside] {
            std::fs::create_dir_all(t.join("b")).unwrap();
            std::fs::write(t.join("b/y"), "y").unwrap();
        }
        let tree = Tree::Host(&root);
        let b = std::fs::symlink_metadata(root.join("b")).unwrap();
        let id = (b.dev(), b.ino());
        let (names, fd) = tree.list(Path::new("b"), id).unwrap();
        let mut fd = fd.map(Arc::new);
        assert_eq!(names, [b"y".to_vec()]);
        let y = std::fs::symlink_metadata(root.join("b/y")).unwrap();
        std::fs::rename(root.join("b"), host.path().join("b-aside")).unwrap();
        std::os::unix::fs::symlink(outside.join("b"), root.join("b")).unwrap();
        let e = tree.list(Path::new("b"), id).unwrap_err().to_string();
        assert!(e.contains("changed while being copied"), "{e}");
        // An entry is stat'ed relative to the directory held open: the one
        // listed, not the outside one its path now leads to; reopened after
        // the swap, it is refused.
        let (b, by) = (Path::new("b"), Path::new("b/y"));
        let m = tree.stat_in(&mut fd, b, id, b"y", by).unwrap();
        assert_eq!(m.id, (y.dev(), y.ino()), "the listed directory's y");
        let e = tree.stat_in(&mut None, b, id, b"y", by).unwrap_err().to_string();
        assert!(e.contains("changed while being copied"), "{e}");
        std::fs::remove_file(root.join("b")).unwrap();
        std::fs::rename(outside.join("b"), root.join("b")).unwrap();
        let e = tree.list(Path::new("b"), id).unwrap_err().to_string();
        assert!(e.contains("changed while being copied"), "{e}");
    }

    #[test]
    fn subvol_specs_parse() {
        let p = |s: &str| SubvolSpec::parse(s).unwrap();
        assert_eq!(p("a/b"), SubvolSpec { path: "a/b".into(), readonly: false, default: false });
        assert_eq!(p("./a/b/:ro"), SubvolSpec { path: "a/b".into(), readonly: true, default: false });
        assert_eq!(p("/x:default:ro"), SubvolSpec { path: "x".into(), readonly: true, default: true });
        assert_eq!(p("x:y:ro").path, PathBuf::from("x:y"));
        let raw = std::ffi::OsStr::from_bytes(b"d\xff/e:ro");
        assert_eq!(
            SubvolSpec::parse(raw).unwrap(),
            SubvolSpec { path: std::ffi::OsStr::from_bytes(b"d\xff/e").into(), readonly: true, default: false }
        );
        for bad in ["", "/", ".:ro", "a/../b", ":default"] {
            assert!(SubvolSpec::parse(bad).is_err(), "{bad:?}");
        }
    }
}
