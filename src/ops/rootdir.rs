//! `mkfs --rootdir`: walk a host directory into the items of the top-level
//! subvolume and of the subvolumes `--subvol` makes (inodes, names, xattrs,
//! file extents) and write file data into data chunks through a [`DataSink`].
//!
//! Two passes: [`scan`] reads the host tree's shape and metadata (it has to,
//! before mkfs can size chunks), and [`write_data`] then copies file data and
//! returns the items that refer to it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::path::{Path, PathBuf};

use zerocopy::IntoBytes;

use crate::error::{Error, Result};
use crate::format::items::name_hash;
use crate::format::ondisk::*;
use crate::format::{CsumType, FileType, Key};
use crate::ops::pipeline::ordered_map;
use crate::format::compress::{self, Compression};
use crate::tree::builder::TreeItem;

/// The kernel's BTRFS_MAX_EXTENT_SIZE: no uncompressed extent is longer.
pub const MAX_EXTENT_SIZE: u64 = 128 * 1024 * 1024;
/// Compressed extents cover at most this much file data (BTRFS_MAX_UNCOMPRESSED).
pub const MAX_UNCOMPRESSED: u64 = 128 * 1024;
/// Uncompressed data is copied through a buffer of this size.
const COPY_PIECE: u64 = 4 * 1024 * 1024;
/// The kernel's default `max_inline` mount option.
pub const DEFAULT_MAX_INLINE: u64 = 2048;

/// Compression of file data: algorithm and level, or None for none.
pub type Compress = Option<(Compression, Option<i32>)>;

/// How the walk treats file data.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub sectorsize: u32,
    pub nodesize: u32,
    /// Compression of every file not under one of `compress_paths`.
    pub compress: Option<(Compression, Option<i32>)>,
    /// Compression (None: none) for a path relative to the root and everything
    /// beneath it; the longest matching path wins.
    pub compress_paths: Vec<(PathBuf, Compress)>,
    /// Directories (relative to the root) that become subvolumes.
    pub subvols: Vec<SubvolSpec>,
    /// The inode otime (creation time) for every inode: the host has no portable one.
    pub otime: (u64, u32),
    pub generation: u64,
    pub no_holes: bool,
    pub csum: CsumType,
    /// (st_dev, st_ino) of files not to copy: the images being made, should they
    /// live inside the source tree.
    pub exclude: Vec<(u64, u64)>,
    /// Inode flags (`INODE_NODATASUM`, `INODE_NODATACOW`) for paths relative to
    /// the root: the host has no portable way to carry them. A NODATASUM file
    /// gets no csum items and is never compressed, as the kernel would write it.
    pub inode_flags: Vec<(PathBuf, u64)>,
    /// The ctime of every inode instead of the host's: ctime cannot be set on the
    /// host, so reproducible images need it replaced.
    pub ctime: Option<(u64, u32)>,
    /// Reproducible builds (`SOURCE_DATE_EPOCH`): atime and ctime become this
    /// time and any mtime later than it is clamped to it, as reproducible-builds
    /// tools (tar --clamp-mtime) do; older mtimes are kept.
    pub clamp_time: Option<(u64, u32)>,
    /// Owners, modes and xattrs to store instead of the host's.
    pub ownership: Ownership,
    /// Worker threads reading, compressing and checksumming file data
    /// (0: one per core). The image is the same for any number.
    pub threads: usize,
}

/// One `--owner-map FROM:TO:COUNT` range: ids FROM..FROM+COUNT become TO..TO+COUNT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub from: u32,
    pub to: u32,
    pub count: u32,
}

impl IdMap {
    /// Parse `FROM:TO:COUNT` (decimal).
    pub fn parse(s: &str) -> Result<IdMap> {
        let bad = || Error::Invalid(format!("--owner-map {s:?}: want FROM:TO:COUNT (decimal ids)"));
        let mut it = s.split(':').map(|p| p.trim().parse::<u32>());
        let (from, to, count) = match (it.next(), it.next(), it.next(), it.next()) {
            (Some(Ok(f)), Some(Ok(t)), Some(Ok(c)), None) => (f, t, c),
            _ => return Err(bad()),
        };
        if count == 0 || from.checked_add(count - 1).is_none() || to.checked_add(count - 1).is_none() {
            return Err(Error::Invalid(format!("--owner-map {s:?}: empty range or ids past 4294967295")));
        }
        Ok(IdMap { from, to, count })
    }

    fn map(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.from)?;
        (off < self.count).then(|| self.to + off)
    }
}

/// A system.posix_acl_* value (version 2, then 8-byte tag/perm/id entries)
/// with the ids of named user (tag 2) and group (tag 8) entries passed
/// through `map`, re-sorted as the kernel requires.
fn remap_acl(v: &[u8], map: impl Fn(u32) -> u32) -> std::result::Result<Vec<u8>, String> {
    if v.len() < 4 || (v.len() - 4) % 8 != 0 || v[..4] != 2u32.to_le_bytes() {
        return Err("not a version 2 POSIX ACL".into());
    }
    let mut entries: Vec<(u16, u32, u16)> = v[4..]
        .chunks_exact(8)
        .map(|e| {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let perm = u16::from_le_bytes([e[2], e[3]]);
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            (tag, if tag == 2 || tag == 8 { map(id) } else { id }, perm)
        })
        .collect();
    entries.sort_by_key(|&(tag, id, _)| (tag, id));
    if entries.windows(2).any(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1)) {
        return Err("--owner-map maps two named entries to one id".into());
    }
    let mut out = v[..4].to_vec();
    for (tag, id, perm) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

/// A path relative to the root directory, as options name it: `/`, `.` and
/// trailing slashes mean nothing; `..` is refused (it would leave the tree).
pub fn relative_path(s: &str, what: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(s).components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                return Err(Error::Invalid(format!("{what} {s:?}: `..` is not allowed (paths are relative to the root directory)")))
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
    pub path: PathBuf,
    /// BTRFS_ROOT_SUBVOL_RDONLY in its root item.
    pub readonly: bool,
    /// The subvolume the kernel mounts when no subvol= or subvolid= is given.
    pub default: bool,
}

impl SubvolSpec {
    /// Parse `PATH[:ro][:default]` (the suffixes in any order).
    pub fn parse(s: &str) -> Result<SubvolSpec> {
        let (mut rest, mut readonly, mut default) = (s, false, false);
        loop {
            if let Some(r) = rest.strip_suffix(":ro") {
                readonly = true;
                rest = r;
            } else if let Some(r) = rest.strip_suffix(":default") {
                default = true;
                rest = r;
            } else {
                break;
            }
        }
        let path = relative_path(rest, "--subvol")?;
        if path.as_os_str().is_empty() {
            return Err(Error::Invalid(format!(
                "--subvol {s:?}: want PATH[:ro][:default], a directory below the root directory (the root itself is the top-level subvolume)"
            )));
        }
        Ok(SubvolSpec { path, readonly, default })
    }
}

/// A subvolume made by the walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanSubvol {
    /// Its tree id (256, 257, ... in walk order).
    pub id: u64,
    /// The subvolume holding the directory it is linked in (5 for the top level).
    pub parent: u64,
    /// That directory's inode number in `parent`.
    pub dirid: u64,
    /// The DIR_INDEX of its entry in that directory.
    pub index: u64,
    pub name: Vec<u8>,
    /// Relative to the root directory.
    pub path: PathBuf,
    pub readonly: bool,
    pub default: bool,
}

/// One line of a `--manifest` file, for one path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Relative to the root directory; empty for the root itself.
    pub path: PathBuf,
    /// Permission bits (07777) replacing the source's; the file type is kept.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// (name, Some(value)) sets an xattr, (name, None) drops the source's.
    pub xattrs: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What `--all-root`, `--owner-map` and `--manifest` ask, applied in that
/// order of increasing precedence: map ranges first, then all-root, then the
/// manifest's per-path values. This is how image builders get root-owned
/// files and set-uid modes without running as root or under fakeroot.
#[derive(Clone, Debug, Default)]
pub struct Ownership {
    pub all_root: bool,
    pub owner_map: Vec<IdMap>,
    pub manifest: Vec<ManifestEntry>,
}

/// Undo fstab-style octal escapes (`\040` for a space, `\\` for a backslash)
/// so manifest paths can hold whitespace.
fn unescape(field: &str, lineno: usize) -> Result<Vec<u8>> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            let oct = b.get(i + 1..i + 4).and_then(|o| std::str::from_utf8(o).ok()).and_then(|o| u8::from_str_radix(o, 8).ok());
            match oct {
                Some(v) => {
                    out.push(v);
                    i += 4;
                }
                None => return Err(Error::Invalid(format!("manifest line {lineno}: bad escape in {field:?} (use \\NNN octal or \\\\)"))),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Parse a `--manifest` file's text. See the `--manifest` help for the syntax.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>> {
    let mut out: Vec<ManifestEntry> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (path_field, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        let rest = rest.trim_start();
        let path = unescape(path_field, lineno)?;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&path));
        // "/", "." and "./x" all name paths under the root directory.
        let path: PathBuf = path.components().filter(|c| matches!(c, std::path::Component::Normal(_))).collect();
        let idx = match out.iter().position(|e| e.path == path) {
            Some(i) => i,
            None => {
                out.push(ManifestEntry { path, ..Default::default() });
                out.len() - 1
            }
        };
        let e = &mut out[idx];
        if let Some(x) = rest.strip_prefix("xattr").filter(|r| r.starts_with([' ', '\t'])) {
            let x = x.trim_start();
            if let Some(name) = x.strip_prefix('-') {
                e.xattrs.push((name.trim_end().as_bytes().to_vec(), None));
                continue;
            }
            let (name, value) =
                x.split_once('=').ok_or_else(|| Error::Invalid(format!("manifest line {lineno}: want `PATH xattr NAME=VALUE`")))?;
            if name.is_empty() || name.len() > NAME_LEN || !name.contains('.') {
                return Err(Error::Invalid(format!("manifest line {lineno}: bad xattr name {name:?} (want e.g. security.selinux)")));
            }
            let value = match value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
                Some(hex) => {
                    let hex = hex.trim_end();
                    if hex.len() % 2 != 0 {
                        return Err(Error::Invalid(format!("manifest line {lineno}: odd number of hex digits")));
                    }
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                        .collect::<std::result::Result<Vec<u8>, _>>()
                        .map_err(|_| Error::Invalid(format!("manifest line {lineno}: bad hex value")))?
                }
                None => value.as_bytes().to_vec(),
            };
            e.xattrs.push((name.as_bytes().to_vec(), Some(value)));
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() != 3 {
            return Err(Error::Invalid(format!(
                "manifest line {lineno}: want `PATH MODE UID GID` or `PATH xattr NAME=VALUE`, got {raw:?}"
            )));
        }
        let num = |v: &str, radix: u32, what: &str| -> Result<Option<u32>> {
            if v == "-" {
                return Ok(None);
            }
            u32::from_str_radix(v, radix).map(Some).map_err(|_| Error::Invalid(format!("manifest line {lineno}: bad {what} {v:?}")))
        };
        if let Some(m) = num(f[0], 8, "mode (octal)")? {
            if m > 0o7777 {
                return Err(Error::Invalid(format!("manifest line {lineno}: mode {m:o} has more than permission bits (07777)")));
            }
            e.mode = Some(m);
        }
        if let Some(u) = num(f[1], 10, "uid")? {
            e.uid = Some(u);
        }
        if let Some(g) = num(f[2], 10, "gid")? {
            e.gid = Some(g);
        }
    }
    Ok(out)
}

#[derive(Clone, Debug)]
enum Content {
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
struct ScanInode {
    /// The tree (subvolume) the inode lives in.
    subvol: u64,
    ino: u64,
    kind: FileType,
    /// Relative to the root directory (empty for the root itself).
    path: PathBuf,
    /// Where the file's bytes begin in the archive (`--rootdir-tar`; 0 for a host file).
    offset: u64,
    /// Data segments of a sparse archive member (see [`SourceFile::sparse`]).
    sparse: Option<Arc<[(u64, u64)]>>,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: u64,
    atime: (u64, u32),
    mtime: (u64, u32),
    ctime: (u64, u32),
    /// INODE_* flags for the inode item.
    flags: u64,
    /// How its data is compressed (unless `flags` forbid it).
    compress: Compress,
    /// (parent inode, dir index, name), one per hard link.
    names: Vec<(u64, u64, Vec<u8>)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    content: Content,
    /// Directories: (name, location key, type, index). The location is the
    /// child's INODE_ITEM, or the ROOT_ITEM of a subvolume linked here.
    entries: Vec<(Vec<u8>, Key, FileType, u64)>,
}

/// The source tree as read by [`scan`] or [`scan_tar`].
pub struct Scan {
    inodes: Vec<ScanInode>,
    opts: ScanOptions,
    /// Where [`write_data`] reads file bytes from.
    data: DataSource,
    /// Which of `opts.inode_flags` matched a scanned path (unmatched ones are an error).
    flags_used: Vec<bool>,
    /// Likewise for `opts.ownership.manifest`.
    manifest_used: Vec<bool>,
    /// Likewise for `opts.compress_paths`.
    compress_used: Vec<bool>,
    /// Subvolumes made so far, in id order.
    subvols: Vec<ScanSubvol>,
    /// Next free inode number of each subvolume: numbers restart in each tree.
    next_ino: BTreeMap<u64, u64>,
    /// Upper bound of data bytes the regular extents take on disk.
    pub data_bytes: u64,
    /// Rough upper bound of the fs and csum tree item bytes.
    pub metadata_bytes: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub special: u64,
    pub hardlinks: u64,
    pub warnings: Vec<String>,
}

/// Where [`write_data`] puts file data: the data chunks of the new filesystem.
pub trait DataSink {
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
pub struct CountingSink {
    pub next: u64,
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
pub struct DataResult {
    /// The items of every subvolume tree: (tree id, sorted items), 5 first.
    pub fs_trees: Vec<(u64, Vec<TreeItem>)>,
    /// EXTENT_ITEMs for data extents.
    pub extent_items: Vec<TreeItem>,
    /// EXTENT_CSUM items.
    pub csum_items: Vec<TreeItem>,
    /// (logical, disk bytes) of every data extent, for block group accounting.
    pub extents: Vec<(u64, u64)>,
    pub bytes: u64,
}

fn ts(sec: i64, nsec: i64) -> (u64, u32) {
    // Times before 1970 keep their two's-complement seconds, as the kernel stores them.
    (sec as u64, nsec.clamp(0, 999_999_999) as u32)
}

fn io(path: &Path, op: &str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    let op = op.to_string();
    move |e| Error::io(path, op, e)
}

/// Linux dev_t (glibc encoding) to the kernel's internal MKDEV (major << 20 | minor),
/// which is what btrfs stores in the inode's rdev.
pub(crate) fn host_rdev_to_btrfs(rdev: u64) -> u64 {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    ((major & 0xfff) << 20) | (minor & 0xf_ffff)
}

/// Open a source file for reading without touching its atime (O_NOATIME needs
/// ownership or CAP_FOWNER; fall back to a plain open), so that making an image
/// does not change the tree it is made from and two runs see the same times.
pub(crate) fn open_source(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let noatime = rustix::fs::OFlags::NOATIME.bits() as i32;
    match std::fs::OpenOptions::new().read(true).custom_flags(noatime).open(path) {
        Ok(f) => Ok(f),
        Err(_) => File::open(path).map_err(io(path, "open")),
    }
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Data ranges of a file, sector aligned, via SEEK_DATA/SEEK_HOLE so holes stay holes.
pub(crate) fn data_ranges(file: &File, path: &Path, size: u64, sector: u64) -> Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(file, SeekFrom::Data(pos as i64)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: treat the file as all data.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => {
                out = vec![(0, round_up(size, sector))];
                break;
            }
            Err(e) => return Err(Error::io(path, "seek data", e.into())),
        };
        if start >= size {
            break;
        }
        let end = match seek(file, SeekFrom::Hole(start as i64)) {
            Ok(e) => e.min(size),
            Err(e) => return Err(Error::io(path, "seek hole", e.into())),
        };
        out.push((start, end));
        pos = end.max(start + 1);
    }
    Ok(sector_ranges(out.into_iter(), sector))
}

/// Byte ranges (in order) widened to whole sectors, touching ones merged.
fn sector_ranges(ranges: impl Iterator<Item = (u64, u64)>, sector: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in ranges {
        let (s, e) = (start / sector * sector, round_up(end, sector));
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

pub(crate) fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    // The xattr crate uses the l*xattr calls: symlinks' own attributes, not their targets'.
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => return Ok(out),
        Err(e) => return Err(Error::io(path, "listxattr", e)),
    };
    for name in names {
        if let Some(v) = xattr::get(path, &name).map_err(io(path, "getxattr"))? {
            out.push((name.as_bytes().to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// One file of the source tree as the walk reads it: what `lstat` says of a
/// host file, or what a tar header and its PAX records say of a member.
#[derive(Clone, Debug)]
pub(crate) struct SourceFile {
    /// File type and permission bits, as in st_mode.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number as btrfs stores it (the kernel's MKDEV: major << 20 | minor).
    pub rdev: u64,
    pub size: u64,
    pub atime: (u64, u32),
    pub mtime: (u64, u32),
    pub ctime: (u64, u32),
    /// How many names the file has.
    pub nlink: u64,
    /// An identity all of its names share: names with one identity are hard
    /// links to one inode (host: st_dev and st_ino).
    pub id: (u64, u64),
    /// Where the file's bytes begin in the archive (0 for a host file).
    pub offset: u64,
    /// A sparse archive member's (file offset, length) data segments, stored
    /// one after the other from `offset`; None: all data, contiguous.
    pub sparse: Option<Arc<[(u64, u64)]>>,
}

impl SourceFile {
    fn is_dir(&self) -> bool {
        FileType::from_mode(self.mode) == Some(FileType::Directory)
    }
}

/// What the walk reads: a host directory (`--rootdir`) or the members of an
/// archive read into memory, data left in the archive (`--rootdir-tar`).
/// Paths are relative to the root directory.
pub(crate) enum Tree<'a> {
    Host(&'a Path),
    Archive(&'a crate::ops::rootdir_tar::TarTree),
}

impl Tree<'_> {
    /// How messages name a path: the host path, or ARCHIVE:MEMBER.
    fn shown(&self, rel: &Path) -> PathBuf {
        match self {
            Tree::Host(root) => root.join(rel),
            Tree::Archive(t) => t.shown(rel),
        }
    }

    /// The names in directory `rel`, in byte order.
    fn list(&self, rel: &Path) -> Result<Vec<Vec<u8>>> {
        match self {
            Tree::Host(root) => {
                let dir = root.join(rel);
                let mut names = Vec::new();
                for e in std::fs::read_dir(&dir).map_err(io(&dir, "readdir"))? {
                    names.push(e.map_err(io(&dir, "readdir"))?.file_name().as_bytes().to_vec());
                }
                names.sort();
                Ok(names)
            }
            Tree::Archive(t) => Ok(t.list(rel)),
        }
    }

    /// The file at `rel`, or None when there is none.
    fn stat(&self, rel: &Path) -> Result<Option<SourceFile>> {
        let root = match self {
            Tree::Host(root) => root,
            Tree::Archive(t) => return Ok(t.stat(rel)),
        };
        let path = root.join(rel);
        let m = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, "lstat", e)),
        };
        Ok(Some(SourceFile {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            rdev: host_rdev_to_btrfs(m.rdev()),
            size: m.size(),
            atime: ts(m.atime(), m.atime_nsec()),
            mtime: ts(m.mtime(), m.mtime_nsec()),
            ctime: ts(m.ctime(), m.ctime_nsec()),
            nlink: m.nlink(),
            id: (m.dev(), m.ino()),
            offset: 0,
            sparse: None,
        }))
    }

    fn read_link(&self, rel: &Path) -> Result<Vec<u8>> {
        match self {
            Tree::Host(root) => {
                let path = root.join(rel);
                Ok(std::fs::read_link(&path).map_err(io(&path, "readlink"))?.as_os_str().as_bytes().to_vec())
            }
            Tree::Archive(t) => Ok(t.link_target(rel)),
        }
    }

    /// Extended attributes, sorted by name.
    fn xattrs(&self, rel: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match self {
            Tree::Host(root) => read_xattrs(&root.join(rel)),
            Tree::Archive(t) => Ok(t.xattrs(rel)),
        }
    }

    /// Sector-aligned data ranges of a regular file of `size` bytes: holes
    /// stay holes on the host; an archive member is all data.
    fn data_ranges(&self, rel: &Path, size: u64, sector: u64) -> Result<Vec<(u64, u64)>> {
        match self {
            Tree::Host(root) => {
                let path = root.join(rel);
                data_ranges(&open_source(&path)?, &path, size, sector)
            }
            Tree::Archive(t) => Ok(match t.stat(rel).and_then(|f| f.sparse) {
                Some(segments) => sector_ranges(segments.iter().map(|&(o, l)| (o, o + l)), sector),
                None => vec![(0, round_up(size, sector))],
            }),
        }
    }
}

/// Where [`write_data`] reads file bytes from.
enum DataSource {
    /// The host directory: each file is opened by its path when written.
    Host(PathBuf),
    /// The archive, open once: a member's bytes lie contiguous at its offset.
    Archive { file: File, path: PathBuf },
}

/// The bytes of one file, open for positional reads.
struct FileBytes<'a> {
    file: FileHandle<'a>,
    /// Added to every offset: where the member's data begins in the archive.
    base: u64,
    /// A sparse member's segments as (file offset, length, offset from
    /// `base`): bytes outside them read as zeros.
    segments: Option<Vec<(u64, u64, u64)>>,
    /// For errors: the host file, or the archive.
    path: PathBuf,
    op: String,
}

enum FileHandle<'a> {
    Own(File),
    Shared(&'a File),
}

impl FileBytes<'_> {
    /// The host file itself (not an archive's), for copying file to file.
    fn into_own_file(self) -> Option<File> {
        match self.file {
            FileHandle::Own(f) => Some(f),
            FileHandle::Shared(_) => None,
        }
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
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
    fn open(&self, i: &ScanInode) -> Result<FileBytes<'_>> {
        match self {
            DataSource::Host(root) => {
                let path = root.join(&i.path);
                Ok(FileBytes { file: FileHandle::Own(open_source(&path)?), base: 0, segments: None, path, op: "read".into() })
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
                op: format!("read member {}", i.path.display()),
            }),
        }
    }

    fn shown(&self, rel: &Path) -> String {
        match self {
            DataSource::Host(root) => root.join(rel).display().to_string(),
            DataSource::Archive { path, .. } => format!("{}:{}", path.display(), rel.display()),
        }
    }
}

/// Refuse `--subvol` lists mkfs cannot make, before anything is read: each
/// path must be a directory (not a symlink to one) in the tree, named once,
/// and at most one may be the default.
fn check_subvols(tree: &Tree<'_>, subvols: &[SubvolSpec]) -> Result<()> {
    for (i, sv) in subvols.iter().enumerate() {
        let shown = sv.path.display();
        if subvols[..i].iter().any(|o| o.path == sv.path) {
            return Err(Error::Invalid(format!("--subvol {shown}: given more than once")));
        }
        match tree.stat(&sv.path)? {
            Some(m) if m.is_dir() => {}
            Some(_) => return Err(Error::Invalid(format!("--subvol {shown}: not a directory ({})", tree.shown(&sv.path).display()))),
            None => return Err(Error::NotFound(format!("--subvol {shown}: no such directory under the root directory"))),
        }
    }
    if subvols.iter().filter(|s| s.default).count() > 1 {
        return Err(Error::Invalid("--subvol: only one subvolume can be the default".into()));
    }
    Ok(())
}

/// Walk the host directory `root` (the future inode 256 of subvolume 5).
pub fn scan(root: &Path, opts: &ScanOptions) -> Result<Scan> {
    let meta = std::fs::metadata(root).map_err(io(root, "stat"))?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!("--rootdir {}: not a directory", root.display())));
    }
    walk(&Tree::Host(root), DataSource::Host(root.to_path_buf()), opts)
}

/// Read a tar archive (`-` for standard input; gzip or zstd compressed too)
/// into the same items [`scan`] makes of the directory it would unpack to.
pub fn scan_tar(archive: &Path, opts: &ScanOptions) -> Result<Scan> {
    let (file, shown, tree) = crate::ops::rootdir_tar::read(archive, opts.otime)?;
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
fn walk(tree: &Tree<'_>, data: DataSource, opts: &ScanOptions) -> Result<Scan> {
    check_subvols(tree, &opts.subvols)?;
    let mut s = Scan {
        inodes: Vec::new(),
        opts: opts.clone(),
        data,
        flags_used: vec![false; opts.inode_flags.len()],
        manifest_used: vec![false; opts.ownership.manifest.len()],
        compress_used: vec![false; opts.compress_paths.len()],
        subvols: Vec::new(),
        next_ino: BTreeMap::from([(FS_TREE_OBJECTID, FIRST_FREE_OBJECTID + 1)]),
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
    let mut by_id: HashMap<(u64, u64), Vec<(u64, usize)>> = HashMap::new();
    let root_idx = s.add_inode(tree, root, &meta, FS_TREE_OBJECTID, FIRST_FREE_OBJECTID)?;
    s.inodes[root_idx].names.push((FIRST_FREE_OBJECTID, 0, b"..".to_vec()));
    s.walk_dir(tree, root_idx, &mut by_id)?;
    // A flag for a path that is not there is a typo, not a no-op: say so.
    if let Some(i) = s.flags_used.iter().position(|u| !u) {
        return Err(Error::NotFound(format!("inode flags for {}: no such path under the root directory", opts.inode_flags[i].0.display())));
    }
    if let Some(i) = s.compress_used.iter().position(|u| !u) {
        return Err(Error::NotFound(format!("--compress for {}: no such path under the root directory", opts.compress_paths[i].0.display())));
    }
    // Checked to exist above, so only a path the walk never reached is left:
    // one inside an excluded image or behind a symlink.
    if let Some(sv) = opts.subvols.iter().find(|sv| !s.subvols.iter().any(|m| m.path == sv.path)) {
        return Err(Error::NotFound(format!("--subvol {}: the walk of the root directory does not reach it", sv.path.display())));
    }
    if let Some(i) = s.manifest_used.iter().position(|u| !u) {
        return Err(Error::NotFound(format!(
            "--manifest entry for {:?}: no such path under the root directory",
            opts.ownership.manifest[i].path.display()
        )));
    }
    Ok(s)
}

impl Scan {
    /// The subvolumes made, in id order.
    pub fn subvolumes(&self) -> &[ScanSubvol] {
        &self.subvols
    }

    /// Whether any file may be compressed with `kind`.
    pub fn uses_compression(&self, kind: Compression) -> bool {
        self.opts.compress.map(|c| c.0) == Some(kind) || self.opts.compress_paths.iter().any(|(_, c)| c.map(|c| c.0) == Some(kind))
    }

    /// Whether any file may be compressed.
    pub fn any_compression(&self) -> bool {
        self.opts.compress.is_some() || self.opts.compress_paths.iter().any(|(_, c)| c.is_some())
    }

    fn add_inode(&mut self, tree: &Tree<'_>, rel: &Path, m: &SourceFile, subvol: u64, ino: u64) -> Result<usize> {
        let kind = FileType::from_mode(m.mode)
            .ok_or_else(|| Error::Unsupported(format!("{}: unknown file type {:o}", tree.shown(rel).display(), m.mode)))?;
        let sector = self.opts.sectorsize as u64;
        let flags = self.flags_for(rel);
        let wanted = self.compress_for(rel);
        let mut content = Content::None;
        let mut size = 0;
        match kind {
            FileType::Regular => {
                size = m.size;
                self.files += 1;
                if size > 0 {
                    let ranges = tree.data_ranges(rel, size, sector)?;
                    if size <= DEFAULT_MAX_INLINE && size < sector && !ranges.is_empty() {
                        content = Content::InlineFile;
                    } else {
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
                let t = tree.read_link(rel)?;
                crate::format::limits::check_symlink_target(&t, self.opts.nodesize, sector as u32)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", tree.shown(rel).display())))?;
                size = t.len() as u64;
                content = Content::Inline(t, COMPRESS_NONE);
            }
            FileType::Directory => self.dirs += 1,
            _ => self.special += 1,
        }
        let xattrs = tree.xattrs(rel)?;
        let mut kept = Vec::new();
        for (n, v) in xattrs {
            if n.is_empty() || n.contains(&0) {
                return Err(Error::Invalid(format!("{}: an xattr with an empty name or a NUL in its name", tree.shown(rel).display())));
            }
            if crate::format::limits::check_xattr(&n, Some(&v), self.opts.nodesize).is_err() {
                self.warnings.push(format!(
                    "{}: xattr {} ({} bytes) does not fit a {}-byte tree block; skipped",
                    tree.shown(rel).display(),
                    String::from_utf8_lossy(&n),
                    v.len(),
                    self.opts.nodesize
                ));
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
                        Error::Invalid(format!("{}: {}: {why}", tree.shown(rel).display(), String::from_utf8_lossy(n)))
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
        self.inodes.push(ScanInode {
            subvol,
            ino,
            kind,
            path: rel.to_path_buf(),
            offset: m.offset,
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
            entries: Vec::new(),
        });
        let idx = self.inodes.len() - 1;
        self.apply_manifest(idx, rel)?;
        Ok(idx)
    }

    /// Apply the `--manifest` lines for `rel` (one of the names of inode `idx`).
    fn apply_manifest(&mut self, idx: usize, rel: &Path) -> Result<()> {
        for (i, e) in self.opts.ownership.manifest.iter().enumerate() {
            if e.path.as_path() != rel {
                continue;
            }
            self.manifest_used[i] = true;
            let ino = &mut self.inodes[idx];
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
                    crate::format::limits::check_xattr(name, Some(v), self.opts.nodesize)
                        .map_err(|err| Error::Invalid(format!("--manifest: {}: {err}", self.data.shown(rel))))?;
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
        dir_idx: usize,
        index: u64,
        name: &[u8],
        rel: &Path,
        m: &SourceFile,
    ) -> Result<usize> {
        let id = FIRST_FREE_OBJECTID + self.subvols.len() as u64;
        let (parent, dirid) = (self.inodes[dir_idx].subvol, self.inodes[dir_idx].ino);
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
        let idx = self.add_inode(tree, rel, m, id, FIRST_FREE_OBJECTID)?;
        self.inodes[idx].names.push((FIRST_FREE_OBJECTID, 0, b"..".to_vec()));
        Ok(idx)
    }

    /// Walk directory `dir_idx` and everything beneath it, depth first in
    /// name order. Iterative, with an explicit stack of the directories being
    /// walked: a host tree (or an archive's paths) as deep as the host allows
    /// must not overflow the thread's stack.
    fn walk_dir(&mut self, tree: &Tree<'_>, dir_idx: usize, by_id: &mut HashMap<(u64, u64), Vec<(u64, usize)>>) -> Result<()> {
        /// A directory being walked: its inode, its names in byte order and
        /// the DIR_INDEX number of the next one.
        struct Dir {
            idx: usize,
            names: std::vec::IntoIter<Vec<u8>>,
            index: u64,
        }
        let open = |s: &Scan, idx: usize| -> Result<Dir> {
            // DIR_INDEX numbers start at 2 in every directory (0 and 1 are "." and "..").
            Ok(Dir { idx, names: tree.list(&s.inodes[idx].path)?.into_iter(), index: 2 })
        };
        let mut stack = vec![open(self, dir_idx)?];
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.next() else {
                stack.pop();
                continue;
            };
            let (dir_idx, index) = (top.idx, top.index);
            top.index += 1;
            let dir_rel = &self.inodes[dir_idx].path;
            let (subvol, dir_ino) = (self.inodes[dir_idx].subvol, self.inodes[dir_idx].ino);
            let rel = dir_rel.join(std::ffi::OsStr::from_bytes(&name));
            let m = tree.stat(&rel)?.ok_or_else(|| Error::io(tree.shown(&rel), "lstat", std::io::ErrorKind::NotFound.into()))?;
            if self.opts.exclude.contains(&m.id) {
                self.warnings.push(format!("{}: is one of the images being made; not copied", tree.shown(&rel).display()));
                continue;
            }
            self.metadata_bytes += (3 * (name.len() + 60)) as u64;
            let spec = if m.is_dir() { self.opts.subvols.iter().find(|s| s.path == rel).cloned() } else { None };
            if let Some(spec) = spec {
                let idx = self.add_subvol(tree, spec, dir_idx, index, &name, &rel, &m)?;
                let location = Key::new(self.inodes[idx].subvol, ROOT_ITEM_KEY, 0);
                self.inodes[dir_idx].entries.push((name, location, FileType::Directory, index));
                stack.push(open(self, idx)?);
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
                    tree.shown(&rel).display()
                ));
            }
            let idx = match existing {
                Some(i) => {
                    self.hardlinks += 1;
                    // Flags belong to the inode: any of its names may carry them.
                    let more = self.flags_for(&rel);
                    self.inodes[i].flags |= more;
                    self.apply_manifest(i, &rel)?;
                    i
                }
                None => {
                    let ino = self.take_ino(subvol);
                    let i = self.add_inode(tree, &rel, &m, subvol, ino)?;
                    if !m.is_dir() && m.nlink > 1 {
                        by_id.entry(m.id).or_default().push((subvol, i));
                    }
                    i
                }
            };
            let (child_ino, kind) = (self.inodes[idx].ino, self.inodes[idx].kind);
            self.inodes[idx].names.push((dir_ino, index, name.clone()));
            self.inodes[dir_idx].entries.push((name, Key::new(child_ino, INODE_ITEM_KEY, 0), kind, index));
            if existing.is_none() && kind == FileType::Directory {
                stack.push(open(self, idx)?);
            }
        }
        Ok(())
    }
}

/// Small files live in the leaf; compressed there too when that is smaller, as the kernel does.
fn inline_content(buf: Vec<u8>, compress: Option<(Compression, Option<i32>)>, sectorsize: u32) -> Content {
    if let Some((kind, level)) = compress {
        if let Ok(c) = compress::encode(kind, &buf, sectorsize, level) {
            if c.len() < buf.len() {
                return Content::Inline(c, kind.raw());
            }
        }
    }
    Content::Inline(buf, COMPRESS_NONE)
}

fn inode_item(i: &ScanInode, opts: &ScanOptions, nbytes: u64) -> InodeItem {
    // A directory's i_size counts every name twice (DIR_ITEM and DIR_INDEX),
    // subvolume entries included, as the kernel and btrfs check count it.
    let size = match i.kind {
        FileType::Directory => i.entries.iter().map(|e| e.0.len() as u64 * 2).sum(),
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

fn dir_item_bytes(location: Key, transid: u64, name: &[u8], data: &[u8], dir_type: u8) -> Vec<u8> {
    let d = DirItem {
        location: location.to_disk(),
        transid: transid.into(),
        data_len: (data.len() as u16).into(),
        name_len: (name.len() as u16).into(),
        dir_type,
    };
    let mut v = d.as_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(data);
    v
}

fn file_extent_bytes(gen: u64, ram: u64, compression: u8, ty: u8) -> Vec<u8> {
    FileExtentHeader {
        generation: gen.into(),
        ram_bytes: ram.into(),
        compression,
        encryption: 0,
        other_encoding: 0.into(),
        extent_type: ty,
    }
    .as_bytes()
    .to_vec()
}

fn regular_extent(gen: u64, ram: u64, compression: u8, disk_bytenr: u64, disk_num_bytes: u64, num_bytes: u64) -> Vec<u8> {
    let mut v = file_extent_bytes(gen, ram, compression, FILE_EXTENT_REG);
    v.extend_from_slice(
        FileExtentBody {
            disk_bytenr: disk_bytenr.into(),
            disk_num_bytes: disk_num_bytes.into(),
            offset: 0.into(),
            num_bytes: num_bytes.into(),
        }
        .as_bytes(),
    );
    v
}

/// Largest csum item payload in bytes (the kernel's MAX_CSUM_ITEMS, in sectors × csum size).
fn max_csum_item_bytes(nodesize: u32, csum_size: usize) -> usize {
    ((crate::tree::builder::leaf_data_size(nodesize) - 2 * 25) / csum_size - 1) * csum_size
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
                    return Ok(JobDone::Piece { compressed: Some((c, round_up(avail as u64, sector as u64), kind.raw())), raw: Vec::new(), sums, source: None });
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
    bytes: u64,
    /// File bytes each inode's extents cover.
    nbytes: Vec<u64>,
}

impl DataOut {
    /// A regular extent of `covered` file bytes at `file_pos`, on disk at `disk`.
    #[allow(clippy::too_many_arguments)]
    fn extent(&mut self, scan: &Scan, inode: usize, file_pos: u64, disk: (u64, u64), ram: u64, comp: u8, covered: u64) {
        let i = &scan.inodes[inode];
        let gen = scan.opts.generation;
        self.fs.insert((i.subvol, Key::new(i.ino, EXTENT_DATA_KEY, file_pos)), regular_extent(gen, ram, comp, disk.0, disk.1, covered));
        self.extent_items.push(TreeItem::new(Key::new(disk.0, EXTENT_ITEM_KEY, disk.1), data_extent_item(gen, i.subvol, i.ino, file_pos)));
        self.extents.push(disk);
        self.bytes += disk.1;
        self.nbytes[inode] += covered;
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
pub fn write_data(scan: &Scan, sink: &mut dyn DataSink, progress: &mut dyn FnMut(u64, u64)) -> Result<DataResult> {
    let opts = &scan.opts;
    let gen = opts.generation;
    let sector = opts.sectorsize as u64;
    let csum_size = opts.csum.size();
    let mut out = DataOut { fs: BTreeMap::new(), extent_items: Vec::new(), extents: Vec::new(), sector_csums: Vec::new(), bytes: 0, nbytes: vec![0u64; scan.inodes.len()] };

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
                let mut v = file_extent_bytes(gen, i.size, compression, FILE_EXTENT_INLINE);
                v.extend_from_slice(&data);
                out.fs.insert((i.subvol, Key::new(i.ino, EXTENT_DATA_KEY, 0)), v);
                out.nbytes[job.inode] = i.size;
                done_bytes += i.size;
            }
            (JobKind::Piece { pos, len, .. }, JobDone::Piece { compressed: Some((c, ram, kind)), sums, .. }) => {
                let disk_len = c.len() as u64;
                let (logical, _) = sink.reserve(disk_len, true)?;
                sink.write(logical, &c)?;
                out.sums(logical, &sums, sector, csum_size);
                out.extent(scan, job.inode, pos, (logical, disk_len), ram, kind, len);
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
                            out.extent(scan, o.inode, o.file_pos, (o.logical, o.granted), o.granted, COMPRESS_NONE, o.granted);
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
    let DataOut { mut fs, mut extent_items, extents, sector_csums, bytes, nbytes } = out;
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
                let mut v = file_extent_bytes(gen, ram, *compression, FILE_EXTENT_INLINE);
                v.extend_from_slice(data);
                fs.insert(k(i.ino, EXTENT_DATA_KEY, 0), v);
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
        fs.insert(k(i.ino, INODE_ITEM_KEY, 0), item.as_bytes().to_vec());
        let max_item = crate::tree::builder::max_item_size(opts.nodesize);
        for (parent, index, name) in &i.names {
            let mut v = InodeRef { index: (*index).into(), name_len: (name.len() as u16).into() }.as_bytes().to_vec();
            v.extend_from_slice(name);
            let key = k(i.ino, INODE_REF_KEY, *parent);
            let held = fs.get(&key).map_or(0, Vec::len);
            if held > 0 && held + v.len() > max_item {
                // The INODE_REF item for this directory is full (many hard links in one
                // directory): like the kernel, continue in INODE_EXTREF items.
                let mut x = InodeExtref { parent_objectid: (*parent).into(), index: (*index).into(), name_len: (name.len() as u16).into() }
                    .as_bytes()
                    .to_vec();
                x.extend_from_slice(name);
                append(&mut fs, k(i.ino, INODE_EXTREF_KEY, crate::format::items::extref_hash(*parent, name)), &x);
            } else {
                append(&mut fs, key, &v);
            }
        }
        for (name, value) in &i.xattrs {
            let v = dir_item_bytes(Key::MIN, gen, name, value, FT_XATTR);
            append(&mut fs, k(i.ino, XATTR_ITEM_KEY, name_hash(name)), &v);
        }
        for (name, location, kind, index) in &i.entries {
            let v = dir_item_bytes(*location, gen, name, &[], kind.dir_type());
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
    let csum_items = csum_runs(sector_csums, sector, opts);
    Ok(DataResult { fs_trees, extent_items, csum_items, extents, bytes })
}

/// Merge per-sector csums into EXTENT_CSUM items over contiguous sectors.
fn csum_runs(mut sectors: Vec<(u64, Vec<u8>)>, sector: u64, opts: &ScanOptions) -> Vec<TreeItem> {
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
    items
}

/// EXTENT_ITEM of a data extent with its one inline EXTENT_DATA_REF.
pub fn data_extent_item(gen: u64, root: u64, objectid: u64, offset: u64) -> Vec<u8> {
    let mut v = ExtentItem { refs: 1.into(), generation: gen.into(), flags: EXTENT_FLAG_DATA.into() }.as_bytes().to_vec();
    v.push(EXTENT_DATA_REF_KEY);
    v.extend_from_slice(
        ExtentDataRef { root: root.into(), objectid: objectid.into(), offset: offset.into(), count: 1.into() }.as_bytes(),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_parse() {
        let m = parse_manifest(
            "# c\n\n/ 0755 0 0\n./a\\040b 4755 - 7\n/etc xattr security.selinux=x:y z\n/etc xattr user.h=0x00ff\n/etc xattr -user.gone\n",
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].path.as_os_str().len(), m[0].mode, m[0].uid), (0, Some(0o755), Some(0)));
        assert_eq!((m[1].path.to_str(), m[1].mode, m[1].uid, m[1].gid), (Some("a b"), Some(0o4755), None, Some(7)));
        assert_eq!(m[2].xattrs[0], (b"security.selinux".to_vec(), Some(b"x:y z".to_vec())));
        assert_eq!(m[2].xattrs[1].1, Some(vec![0, 255]));
        assert_eq!(m[2].xattrs[2], (b"user.gone".to_vec(), None));
        for bad in ["/a 8 0 0", "/a 0755 0", "/a 0755 x 0", "/a xattr noequals", "/a xattr user.h=0xabc", "/a 17777 0 0"] {
            assert!(parse_manifest(bad).is_err(), "{bad}");
        }
        assert_eq!(IdMap::parse("1000:0:10").unwrap().map(1009), Some(9));
        assert_eq!(IdMap::parse("1000:0:10").unwrap().map(1010), None);
        assert!(IdMap::parse("1:2").is_err() && IdMap::parse("1:2:0").is_err() && IdMap::parse("4294967295:0:2").is_err());
    }

    #[test]
    fn subvol_specs_parse() {
        let p = |s: &str| SubvolSpec::parse(s).unwrap();
        assert_eq!(p("a/b"), SubvolSpec { path: "a/b".into(), readonly: false, default: false });
        assert_eq!(p("./a/b/:ro"), SubvolSpec { path: "a/b".into(), readonly: true, default: false });
        assert_eq!(p("/x:default:ro"), SubvolSpec { path: "x".into(), readonly: true, default: true });
        assert_eq!(p("x:y:ro").path, PathBuf::from("x:y"));
        for bad in ["", "/", ".:ro", "a/../b", ":default"] {
            assert!(SubvolSpec::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn test_opts() -> ScanOptions {
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
        }
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
    fn owner_map_shifts_named_acl_entries() {
        let entry = |tag: u16, perm: u16, id: u32| [tag.to_le_bytes().as_slice(), &perm.to_le_bytes(), &id.to_le_bytes()].concat();
        let acl = |es: &[(u16, u16, u32)]| {
            let mut v = 2u32.to_le_bytes().to_vec();
            for &(t, p, i) in es {
                v.extend(entry(t, p, i));
            }
            v
        };
        let none = u32::MAX;
        let map = IdMap { from: 1000, to: 0, count: 10 };
        let f = |id: u32| map.map(id).unwrap_or(id);
        // uid 1001 becomes 1 and sorts before 500; the *_OBJ entries keep the undefined id.
        let v = acl(&[(1, 6, none), (2, 4, 500), (2, 5, 1001), (4, 4, none), (8, 7, 1002), (0x10, 7, none), (0x20, 0, none)]);
        let want = acl(&[(1, 6, none), (2, 5, 1), (2, 4, 500), (4, 4, none), (8, 7, 2), (0x10, 7, none), (0x20, 0, none)]);
        assert_eq!(remap_acl(&v, f).unwrap(), want);
        // Two named users landing on one id cannot be an ACL.
        assert!(remap_acl(&acl(&[(1, 6, none), (2, 4, 1), (2, 5, 1001), (4, 4, none), (0x10, 7, none), (0x20, 0, none)]), f).is_err());
        assert!(remap_acl(&[2, 0, 0, 0, 1], f).is_err());
        assert!(remap_acl(&[1, 0, 0, 0], f).is_err());
    }

    #[test]
    fn rdev_is_stored_as_kernel_mkdev() {
        // glibc makedev(8, 300) and makedev(259, 70000).
        let glibc = |major: u64, minor: u64| ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12);
        assert_eq!(host_rdev_to_btrfs(glibc(8, 300)), (8 << 20) | 300);
        assert_eq!(host_rdev_to_btrfs(glibc(259, 70000)), (259 << 20) | 70000);
    }

    #[test]
    fn csum_items_merge_contiguous_sectors_and_split_at_the_limit() {
        let opts = ScanOptions { csum: CsumType::Sha256, ..test_opts() };
        let mut sectors: Vec<(u64, Vec<u8>)> = (0..300u64).map(|i| ((1 << 20) + i * 4096, vec![i as u8; 32])).collect();
        sectors.push((1 << 30, vec![1; 32]));
        let items = csum_runs(sectors, 4096, &opts);
        let max = max_csum_item_bytes(4096, 32);
        assert!(items.iter().all(|i| i.data.len() <= max));
        assert_eq!(items.iter().map(|i| i.data.len()).sum::<usize>(), 301 * 32);
        assert_eq!(items.last().map(|i| i.key.offset), Some(1 << 30));
        // Consecutive items continue where the previous one ended.
        assert_eq!(items[1].key.offset, (1 << 20) + (items[0].data.len() as u64 / 32) * 4096);
    }
}
