//! `extract`: copy a subtree of the filesystem out to the host, keeping file
//! types, modes (setuid included), owners, nanosecond mtimes, symlink targets,
//! hardlinks, xattrs, device numbers and holes.
//!
//! The image decides every name below DEST, so nothing below DEST is looked up
//! by path: each host directory is an open handle, entries are made relative to
//! it (`mkdirat`, `openat` with `O_CREAT|O_EXCL|O_NOFOLLOW`, `symlinkat`,
//! `mknodat`, `linkat`) and their metadata is set through a handle or with
//! `AT_SYMLINK_NOFOLLOW`. A symlink the image (or the host, when merging into
//! an existing DEST) puts below DEST is never followed, so nothing outside
//! DEST is created or changed whatever the image holds. An entry that cannot
//! be extracted (a bad or duplicate name, a name taken on the host, unreadable
//! data) is counted in `ExtractStats::failures` and the rest goes on.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::error::{CorruptKind, Error, Result};
use crate::format::FileType;
use crate::fs::{DirEnt, FileChunk, Filesystem, ImagePath, Inode, InodeId};

/// Deeper nesting than this is taken for damaged metadata.
const MAX_DEPTH: usize = 4096;
/// Host directories kept open along the current path; shallower ones are reopened when needed.
const MAX_OPEN_DIRS: usize = 64;
/// Failure and skip messages kept (all are counted).
const MAX_LISTED: usize = 1000;

#[derive(Debug, Default, Clone)]
pub struct ExtractStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub special: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    /// Things that could not be applied (e.g. ownership when not root):
    /// the first `MAX_LISTED` of them.
    pub skipped: Vec<String>,
    /// How many there were in all.
    pub skips: u64,
    /// Entries that could not be extracted (their subtree included).
    pub failures: u64,
    /// The first `MAX_LISTED` of them: "/image/path: why".
    pub failed: Vec<String>,
}

/// Where a hardlinked inode was first extracted: its directory (names from DEST down) and name.
struct LinkSource {
    dir: Vec<OsString>,
    name: OsString,
}

struct Extractor<'a> {
    fs: &'a Filesystem,
    root: bool,
    /// /proc/self/fd is there: the only way to chown, chmod and set xattrs on a symlink or
    /// special file without following anything (the call names our open directory and the
    /// final name is not followed).
    proc_fd: bool,
    dirs_open: DirStack,
    links: HashMap<InodeId, LinkSource>,
    /// Directories already extracted: a directory has one parent, so meeting one again means
    /// damaged metadata (a loop, or an entry aliasing another directory) that would otherwise
    /// recurse until the depth limit, re-extracting whole subtrees at every level.
    dirs: HashSet<InodeId>,
    /// Replace what is on the host under a name the image has (a directory aside).
    overwrite: bool,
    progress: Option<&'a (dyn Fn(&ExtractStats) + Sync)>,
    stats: ExtractStats,
}

/// How `extract_with` goes about it.
#[derive(Clone, Copy, Default)]
pub struct ExtractOptions<'a> {
    /// A file, symlink or special file on the host under a name the image
    /// has is removed first (the link itself, never what it points at) and
    /// made again from the image; a host directory is still merged into,
    /// never removed, and one standing where the image has a file is left
    /// alone (the entry fails).
    pub overwrite: bool,
    /// Told the counts so far after each file (called on the extract thread).
    pub progress: Option<&'a (dyn Fn(&ExtractStats) + Sync)>,
}

/// Copy `src` (a path inside the filesystem) to `dest` on the host. `dest`
/// must not exist, or be an existing directory when `src` is a directory
/// (its contents are then merged in; `dest` itself may be a symlink to a
/// directory, the caller's choice, but nothing below it is ever reached
/// through a symlink). Errors before anything is created (unreadable `src`,
/// bad `dest`) and host errors that stop every entry (no space, read-only)
/// are returned; other failures are counted in the stats.
pub fn extract<'p>(fs: &Filesystem, src: impl Into<ImagePath<'p>>, dest: &Path) -> Result<ExtractStats> {
    extract_with(fs, src, dest, &ExtractOptions::default())
}

/// [`extract`] with the choices of [`ExtractOptions`].
pub fn extract_with<'p>(fs: &Filesystem, src: impl Into<ImagePath<'p>>, dest: &Path, opts: &ExtractOptions<'_>) -> Result<ExtractStats> {
    let src = src.into();
    // The walk recurses once per directory level, up to MAX_DEPTH: it runs on
    // a thread whose stack holds that many levels many times over, whatever
    // the caller's stack limit (4096 levels need about 4 MiB).
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("extract".into())
            .stack_size(WALK_STACK)
            .spawn_scoped(s, || extract_on_this_thread(fs, src, dest, opts))
            .map_err(|e| Error::io("<threads>", "start the extract thread", e))?;
        crate::threads::join(h, "extract")
    })
}

/// Stack of the extract walk (see [`extract`]).
const WALK_STACK: usize = 64 << 20;

fn extract_on_this_thread(fs: &Filesystem, src: ImagePath<'_>, dest: &Path, opts: &ExtractOptions<'_>) -> Result<ExtractStats> {
    let ent = fs.resolve(src)?;
    // Messages name entries by their path, bytes that are not UTF-8 as \xNN.
    let shown_src = src.to_string();
    let fspath = shown_src.trim_matches('/');
    let ino = fs.entry_inode(&ent)?;
    if ino.file_type == FileType::Directory {
        let children = fs.read_dir(ent.id)?;
        let (fd, made) = dest_dir(dest)?;
        let mut x = Extractor::new(fs, fd, dest.to_path_buf(), opts);
        x.dirs.insert(ent.id);
        x.children(children, fspath, 0)?;
        // DEST that was there before keeps its own owner, mode and times: the image
        // does not get to make the caller's directory setuid or someone else's.
        if made {
            let top = x.dirs_open.top().map_err(|e| Error::io(dest, "open", e))?;
            let r = x.metadata_fd(&ino, &*top, dest);
            x.record(fspath, r)?;
        }
        x.stats.dirs += 1;
        return Ok(x.stats);
    }
    match dest.symlink_metadata() {
        Ok(m) if opts.overwrite && !m.is_dir() => {}
        Ok(_) => return Err(Error::Invalid(format!("{} already exists", crate::name::Name(dest.as_os_str().as_bytes())))),
        Err(_) => {}
    }
    let (parent, name) = match (dest.parent(), dest.file_name()) {
        (Some(p), Some(n)) => (if p.as_os_str().is_empty() { Path::new(".") } else { p }, n),
        _ => return Err(Error::Invalid(format!("{}: not a name for a new file", crate::name::Name(dest.as_os_str().as_bytes())))),
    };
    // The path the caller gave is followed up to DEST's parent, like any path argument.
    let fd = rustix::fs::open(parent, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::io(parent, "open", e.into()))?;
    let mut x = Extractor::new(fs, fd, parent.to_path_buf(), opts);
    x.entry(&ent, name, fspath, 0)?;
    Ok(x.stats)
}

/// DEST as a directory handle: opened when it is a directory (or the caller's symlink to one),
/// made when it does not exist (then `true`).
fn dest_dir(dest: &Path) -> Result<(OwnedFd, bool)> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match dest.symlink_metadata() {
        Ok(_) if dest.is_dir() => {
            rustix::fs::open(dest, flags, Mode::empty()).map(|fd| (fd, false)).map_err(|e| Error::io(dest, "open", e.into()))
        }
        Ok(_) => Err(Error::Invalid(format!("{} already exists", crate::name::Name(dest.as_os_str().as_bytes())))),
        Err(_) => {
            std::fs::create_dir(dest).map_err(|e| Error::io(dest, "mkdir", e))?;
            rustix::fs::open(dest, flags | OFlags::NOFOLLOW, Mode::empty())
                .map(|fd| (fd, true))
                .map_err(|e| Error::io(dest, "open", e.into()))
        }
    }
}

/// Open directory `name` of `parent`, never through a symlink.
fn open_dir(parent: &OwnedFd, name: &OsStr) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(parent, name, flags, Mode::empty(), resolve) {
        // Kernels before 5.6, and seccomp filters that do not know openat2: O_NOFOLLOW on a
        // single checked name is as safe.
        Err(Errno::NOSYS | Errno::PERM) => rustix::fs::openat(parent, name, flags, Mode::empty()),
        r => r,
    }
    .map_err(Into::into)
}

/// Why an entry name from the image cannot be a host name, if it cannot.
fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty name")
    } else if name == b"." || name == b".." {
        Some("not a valid name")
    } else if name.contains(&b'/') {
        Some("name contains '/'")
    } else if name.contains(&0) {
        Some("name contains a NUL byte")
    } else if name.len() > 255 {
        Some("name longer than 255 bytes")
    } else {
        None
    }
}

/// Host errors after which no further entry can be written.
fn fatal(e: &Error) -> bool {
    let no_more = [Errno::NOSPC, Errno::DQUOT, Errno::ROFS].map(|e| e.raw_os_error());
    matches!(e, Error::Io { source, .. } if source.raw_os_error().is_some_and(|c| no_more.contains(&c)))
}

fn shown(fspath: &str) -> String {
    format!("/{fspath}")
}

/// The host directories from the extraction root down to the one being filled. Only the
/// deepest `MAX_OPEN_DIRS` stay open (a deep tree must not run out of descriptors); a closed
/// one is reopened from its nearest open ancestor, one checked name at a time, never
/// following a symlink.
struct DirStack {
    root: Rc<OwnedFd>,
    root_path: PathBuf,
    levels: Vec<(OsString, Option<Rc<OwnedFd>>)>,
    open: usize,
}

impl DirStack {
    fn push(&mut self, name: &OsStr, fd: OwnedFd) {
        self.levels.push((name.to_os_string(), Some(Rc::new(fd))));
        self.open += 1;
        self.trim();
    }

    fn pop(&mut self) {
        if let Some((_, Some(_))) = self.levels.pop() {
            self.open -= 1;
        }
    }

    fn trim(&mut self) {
        while self.open > MAX_OPEN_DIRS {
            match self.levels.iter_mut().find(|l| l.1.is_some()) {
                Some(l) => {
                    l.1 = None;
                    self.open -= 1;
                }
                None => break,
            }
        }
    }

    /// The directory `depth` levels below the root (0: the root).
    fn fd(&mut self, depth: usize) -> std::io::Result<Rc<OwnedFd>> {
        let depth = depth.min(self.levels.len());
        let (mut fd, mut from) = (self.root.clone(), 0);
        for i in (0..depth).rev() {
            if let Some(f) = &self.levels[i].1 {
                (fd, from) = (f.clone(), i + 1);
                break;
            }
        }
        for i in from..depth {
            fd = Rc::new(open_dir(&fd, &self.levels[i].0)?);
            self.levels[i].1 = Some(fd.clone());
            self.open += 1;
            self.trim();
        }
        Ok(fd)
    }

    /// The directory being filled.
    fn top(&mut self) -> std::io::Result<Rc<OwnedFd>> {
        self.fd(self.levels.len())
    }

    /// The directory named by `dir` (names from the root), walked down from the deepest level
    /// it shares with the current path.
    fn open_path(&mut self, dir: &[OsString]) -> std::io::Result<Rc<OwnedFd>> {
        let shared = dir.iter().zip(&self.levels).take_while(|(a, b)| *a == &b.0).count();
        let mut fd = self.fd(shared)?;
        for name in &dir[shared..] {
            fd = Rc::new(open_dir(&fd, name)?);
        }
        Ok(fd)
    }

    fn names(&self) -> Vec<OsString> {
        self.levels.iter().map(|l| l.0.clone()).collect()
    }

    /// Host path of the directory being filled, for messages only.
    fn here(&self) -> PathBuf {
        let mut p = self.root_path.clone();
        p.extend(self.levels.iter().map(|l| &l.0));
        p
    }

    /// Host path of `name` in the directory being filled, for messages only.
    fn host(&self, name: &OsStr) -> PathBuf {
        self.here().join(name)
    }
}

impl<'a> Extractor<'a> {
    fn new(fs: &'a Filesystem, root: OwnedFd, root_path: PathBuf, opts: &ExtractOptions<'a>) -> Extractor<'a> {
        Extractor {
            fs,
            root: rustix::process::geteuid().is_root(),
            proc_fd: Path::new("/proc/self/fd").is_dir(),
            dirs_open: DirStack { root: Rc::new(root), root_path, levels: Vec::new(), open: 0 },
            links: HashMap::new(),
            dirs: HashSet::new(),
            overwrite: opts.overwrite,
            progress: opts.progress,
            stats: ExtractStats::default(),
        }
    }

    /// Count a failed entry (or return the error when nothing more can be written).
    fn record(&mut self, fspath: &str, r: Result<()>) -> Result<()> {
        match r {
            Err(e) if fatal(&e) => Err(e),
            Err(e) => {
                self.fail(format!("{}: {e}", shown(fspath)));
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn fail(&mut self, what: String) {
        self.stats.failures += 1;
        if self.stats.failed.len() < MAX_LISTED {
            self.stats.failed.push(what);
        }
    }

    /// Extract the entries of the directory at `fspath` into the directory being filled.
    fn children(&mut self, children: Vec<DirEnt>, fspath: &str, depth: usize) -> Result<()> {
        let mut names = HashSet::new();
        for child in children {
            let name = ImagePath::from(&child.name);
            if let Some(why) = bad_name(&child.name) {
                self.fail(format!("{}: entry {name:?}: {why}", shown(fspath)));
                continue;
            }
            if !names.insert(child.name.clone()) {
                self.fail(format!("{}: entry {name:?}: duplicate name (an earlier entry has it)", shown(fspath)));
                continue;
            }
            let child_path = if fspath.is_empty() { name.to_string() } else { format!("{fspath}/{name}") };
            self.entry(&child, OsStr::from_bytes(&child.name), &child_path, depth + 1)?;
        }
        Ok(())
    }

    /// Extract `ent` as `name` in the directory being filled; its failures are counted.
    fn entry(&mut self, ent: &DirEnt, name: &OsStr, fspath: &str, depth: usize) -> Result<()> {
        let r = self.node(ent, name, fspath, depth);
        self.record(fspath, r)
    }

    fn node(&mut self, ent: &DirEnt, name: &OsStr, fspath: &str, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(CorruptKind::Loop, shown(fspath), format!("directory nesting deeper than {MAX_DEPTH} (loop?)")));
        }
        let ino = self.fs.entry_inode(ent)?;
        let parent = self.dirs_open.top().map_err(|e| Error::io(self.dirs_open.here(), "open", e))?;
        let host = self.dirs_open.host(name);
        if ino.file_type != FileType::Directory {
            self.clear(&parent, name)?;
        }
        if ino.file_type != FileType::Directory && ino.nlink > 1 {
            if let Some(first) = self.links.get(&ent.id) {
                let (dir, first_name) = (first.dir.clone(), first.name.clone());
                let src = self.dirs_open.open_path(&dir).map_err(|e| Error::io(&host, "link: open the first link's directory", e))?;
                // No AT_SYMLINK_FOLLOW: a symlink source is linked itself, never its target.
                rustix::fs::linkat(&*src, &first_name, &*parent, name, AtFlags::empty())
                    .map_err(|e| self.create_error(&parent, name, "link", e))?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
        }
        match ino.file_type {
            FileType::Directory => {
                if ent.id.ino != crate::format::EMPTY_SUBVOL_DIR_OBJECTID && !self.dirs.insert(ent.id) {
                    return Err(Error::corrupt(
                        CorruptKind::Loop,
                        format!("directory {}", ent.id),
                        "reached twice (directory loop or aliased directory)",
                    ));
                }
                let (fd, made) = self.make_dir(&parent, name)?;
                drop(parent);
                self.dirs_open.push(name, fd);
                let r = self.dir_contents(&ino, fspath, depth, made);
                self.dirs_open.pop();
                r?;
                self.stats.dirs += 1;
            }
            FileType::Regular => {
                let f = rustix::fs::openat(
                    &*parent,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.create_error(&parent, name, "create", e))?;
                let f = File::from(f);
                self.file(&ino, &f, fspath, &host)?;
                self.metadata_fd(&ino, &f, &host)?;
                self.stats.files += 1;
                if let Some(p) = self.progress {
                    p(&self.stats);
                }
            }
            FileType::Symlink => {
                let target = self.fs.read_link(ent.id)?;
                if target.contains(&0) {
                    return Err(Error::corrupt(CorruptKind::ItemValue, format!("symlink {}", ent.id), "target contains a NUL byte"));
                }
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &*parent, name)
                    .map_err(|e| self.create_error(&parent, name, "symlink", e))?;
                self.metadata_at(&ino, &parent, name, &host)?;
                self.stats.symlinks += 1;
            }
            FileType::Fifo | FileType::Socket | FileType::CharDevice | FileType::BlockDevice => {
                let (ft, dev) = match ino.file_type {
                    FileType::Fifo => (rustix::fs::FileType::Fifo, 0),
                    FileType::Socket => (rustix::fs::FileType::Socket, 0),
                    FileType::CharDevice => {
                        let (a, b) = ino.rdev_major_minor();
                        (rustix::fs::FileType::CharacterDevice, rustix::fs::makedev(a, b))
                    }
                    _ => {
                        let (a, b) = ino.rdev_major_minor();
                        (rustix::fs::FileType::BlockDevice, rustix::fs::makedev(a, b))
                    }
                };
                rustix::fs::mknodat(&*parent, name, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| self.create_error(&parent, name, "mknod", e))?;
                self.metadata_at(&ino, &parent, name, &host)?;
                self.stats.special += 1;
            }
        }
        if ino.file_type != FileType::Directory && ino.nlink > 1 {
            self.links.insert(ent.id, LinkSource { dir: self.dirs_open.names(), name: name.to_os_string() });
        }
        Ok(())
    }

    /// A new directory `name` in `parent` (then `true`), or the one already there when
    /// merging into an existing tree; never a symlink to one.
    fn make_dir(&self, parent: &OwnedFd, name: &OsStr) -> Result<(OwnedFd, bool)> {
        let host = || self.dirs_open.host(name);
        let made = match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| Error::io(host(), "stat", e.into()))?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
                    if !self.overwrite {
                        return Err(self.create_error(parent, name, "mkdir", Errno::EXIST));
                    }
                    self.clear(parent, name)?;
                    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| self.create_error(parent, name, "mkdir", e))?;
                    return open_dir(parent, name).map(|fd| (fd, true)).map_err(|e| Error::io(host(), "open", e));
                }
                false
            }
            Err(e) => return Err(Error::io(host(), "mkdir", e.into())),
        };
        open_dir(parent, name).map(|fd| (fd, made)).map_err(|e| Error::io(host(), "open", e))
    }

    /// With --overwrite, what the host has under `name` (not a directory) is
    /// removed: a symlink itself, never its target.
    fn clear(&self, parent: &OwnedFd, name: &OsStr) -> Result<()> {
        if !self.overwrite {
            return Ok(());
        }
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory => {
                rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(|e| Error::io(self.dirs_open.host(name), "remove", e.into()))
            }
            _ => Ok(()),
        }
    }

    /// The error of making `name` in `parent`: a name already taken says by what.
    fn create_error(&self, parent: &OwnedFd, name: &OsStr, op: &str, e: Errno) -> Error {
        let host = self.dirs_open.host(name);
        if e != Errno::EXIST {
            return Error::io(host, op, e.into());
        }
        use rustix::fs::FileType as T;
        let what = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).map(|st| T::from_raw_mode(st.st_mode)) {
            Ok(T::Symlink) => "a symlink (not followed)",
            Ok(T::Directory) => "a directory",
            Ok(T::RegularFile) => "a regular file",
            Ok(T::Fifo) => "a fifo",
            Ok(T::Socket) => "a socket",
            Ok(T::CharacterDevice | T::BlockDevice) => "a device",
            _ => "something",
        };
        Error::Invalid(format!("{}: already exists on the host as {what}; left alone", crate::name::Name(host.as_os_str().as_bytes())))
    }

    /// The entries of the directory just made (the top of the stack), then its metadata
    /// when extract made it: a host directory merged into keeps its own.
    fn dir_contents(&mut self, ino: &Inode, fspath: &str, depth: usize, made: bool) -> Result<()> {
        match self.fs.read_dir(ino.id) {
            Ok(children) => self.children(children, fspath, depth)?,
            // The directory stays, empty; its metadata is still set.
            Err(e) => self.record(fspath, Err(e))?,
        }
        if !made {
            return Ok(());
        }
        let here = self.dirs_open.here();
        let fd = self.dirs_open.top().map_err(|e| Error::io(&here, "open", e))?;
        self.metadata_fd(ino, &*fd, &here)
    }

    fn file(&mut self, ino: &Inode, f: &File, fspath: &str, host: &Path) -> Result<()> {
        let mut bytes = 0u64;
        self.fs.read_file_as(ino, fspath, &mut |chunk| {
            if let FileChunk::Data { offset, data } = chunk {
                // Holes are never written, so the host file stays sparse.
                if data.iter().any(|&b| b != 0) || data.is_empty() {
                    f.write_all_at(data, offset).map_err(|e| Error::io(host, "write", e))?;
                }
                bytes += data.len() as u64;
            }
            Ok(())
        })?;
        f.set_len(ino.size).map_err(|e| Error::io(host, "truncate", e))?;
        self.stats.bytes += bytes;
        Ok(())
    }

    /// Owner, xattrs, mode, then times of a file or directory, through its handle: chown
    /// clears setuid and the security.capability xattr, and every change touches
    /// ctime/mtime, so the order matters.
    fn metadata_fd(&mut self, ino: &Inode, fd: impl AsFd, host: &Path) -> Result<()> {
        let fd = fd.as_fd();
        if self.root {
            std::os::unix::fs::fchown(fd, Some(ino.uid), Some(ino.gid)).map_err(|e| Error::io(host, "chown", e))?;
        } else if ino.uid != rustix::process::geteuid().as_raw() {
            self.skip(format!("{}: owner {}:{} needs root", crate::name::Name(host.as_os_str().as_bytes()), ino.uid, ino.gid));
        }
        for (name, value) in self.fs.xattrs(ino.id)? {
            let name_os = OsStr::from_bytes(&name);
            if !self.root && !name.starts_with(b"user.") {
                self.skip(format!("{}: xattr {name_os:?} needs root", crate::name::Name(host.as_os_str().as_bytes())));
                continue;
            }
            if let Err(e) = rustix::fs::fsetxattr(fd, name_os, &value, XattrFlags::empty()) {
                self.skip(format!("{}: xattr {name_os:?}: {}", crate::name::Name(host.as_os_str().as_bytes()), std::io::Error::from(e)));
            }
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(ino.permissions())).map_err(|e| Error::io(host, "chmod", e.into()))?;
        rustix::fs::futimens(fd, &timestamps(ino)).map_err(|e| Error::io(host, "set times", e.into()))
    }

    /// The same for a symlink or special file `name` in `parent`, which are not opened (a
    /// device's open could act on the device): owner and xattrs through
    /// /proc/self/fd/PARENT/NAME without following NAME, the mode of a special file through
    /// an O_PATH handle of it, times with AT_SYMLINK_NOFOLLOW.
    fn metadata_at(&mut self, ino: &Inode, parent: &OwnedFd, name: &OsStr, host: &Path) -> Result<()> {
        let is_link = ino.file_type == FileType::Symlink;
        let proc_path = Path::new("/proc/self/fd").join(parent.as_raw_fd().to_string()).join(name);
        if self.root {
            if self.proc_fd {
                std::os::unix::fs::lchown(&proc_path, Some(ino.uid), Some(ino.gid)).map_err(|e| Error::io(host, "chown", e))?;
            } else {
                self.skip(format!("{}: owner {}:{} needs /proc", crate::name::Name(host.as_os_str().as_bytes()), ino.uid, ino.gid));
            }
        } else if ino.uid != rustix::process::geteuid().as_raw() {
            self.skip(format!("{}: owner {}:{} needs root", crate::name::Name(host.as_os_str().as_bytes()), ino.uid, ino.gid));
        }
        for (name, value) in self.fs.xattrs(ino.id)? {
            let name_os = OsStr::from_bytes(&name);
            if !self.root && !name.starts_with(b"user.") {
                self.skip(format!("{}: xattr {name_os:?} needs root", crate::name::Name(host.as_os_str().as_bytes())));
                continue;
            }
            if is_link && name.starts_with(b"user.") {
                // The host refuses user.* xattrs on symlinks (as does the kernel for btrfs).
                continue;
            }
            if !self.proc_fd {
                self.skip(format!("{}: xattr {name_os:?} needs /proc", crate::name::Name(host.as_os_str().as_bytes())));
                continue;
            }
            // l*xattr: the final name is not followed.
            if let Err(e) = xattr::set(&proc_path, name_os, &value) {
                self.skip(format!("{}: xattr {name_os:?}: {e}", crate::name::Name(host.as_os_str().as_bytes())));
            }
        }
        if !is_link {
            if self.proc_fd {
                let fd = rustix::fs::openat(parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|e| Error::io(host, "open", e.into()))?;
                let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(host, "stat", e.into()))?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink {
                    return Err(Error::Invalid(format!(
                        "{}: became a symlink while being extracted",
                        crate::name::Name(host.as_os_str().as_bytes())
                    )));
                }
                // Follows the magic link to exactly the node opened above, which is no symlink.
                let by_fd = Path::new("/proc/self/fd").join(fd.as_raw_fd().to_string());
                rustix::fs::chmod(&by_fd, Mode::from_raw_mode(ino.permissions())).map_err(|e| Error::io(host, "chmod", e.into()))?;
            } else {
                self.skip(format!("{}: mode {:o} needs /proc", crate::name::Name(host.as_os_str().as_bytes()), ino.permissions()));
            }
        }
        rustix::fs::utimensat(parent, name, &timestamps(ino), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| Error::io(host, "set times", e.into()))
    }

    fn skip(&mut self, what: String) {
        self.stats.skips += 1;
        if self.stats.skipped.len() < MAX_LISTED {
            self.stats.skipped.push(what);
        }
    }
}

fn timestamps(ino: &Inode) -> Timestamps {
    let ts = |t: crate::fs::Timespec| rustix::fs::Timespec { tv_sec: t.sec, tv_nsec: t.nsec as _ };
    Timestamps { last_access: ts(ino.atime), last_modification: ts(ino.mtime) }
}
