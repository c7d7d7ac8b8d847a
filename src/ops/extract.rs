//! `extract`: copy a subtree of the filesystem out to the host, keeping file
//! types, modes (setuid included), owners, nanosecond mtimes, symlink targets,
//! hardlinks, xattrs, device numbers and holes.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, Timestamps, CWD};

use crate::error::{Error, Result};
use crate::format::FileType;
use crate::fs::{DirEnt, FileChunk, Filesystem, Inode, InodeId};

#[derive(Debug, Default, Clone)]
pub struct ExtractStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub special: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    /// Things that could not be applied (e.g. ownership when not root).
    pub skipped: Vec<String>,
}

struct Extractor<'a> {
    fs: &'a Filesystem,
    root: bool,
    links: HashMap<InodeId, PathBuf>,
    /// Directories already extracted: a directory has one parent, so meeting one again means
    /// damaged metadata (a loop, or an entry aliasing another directory) that would otherwise
    /// recurse until the depth limit, re-extracting whole subtrees at every level.
    dirs: HashSet<InodeId>,
    stats: ExtractStats,
}

/// Copy `src` (a path inside the filesystem) to `dest` on the host. `dest`
/// must not exist, or be an existing directory when `src` is a directory
/// (its contents are then merged in).
pub fn extract(fs: &Filesystem, src: &str, dest: &Path) -> Result<ExtractStats> {
    let ent = fs.resolve(src)?;
    let mut x = Extractor { fs, root: rustix::process::geteuid().is_root(), links: HashMap::new(), dirs: HashSet::new(), stats: ExtractStats::default() };
    if dest.symlink_metadata().is_ok() && !(ent.file_type == FileType::Directory && dest.is_dir()) {
        return Err(Error::Invalid(format!("{} already exists", dest.display())));
    }
    x.node(&ent, dest, src.trim_matches('/'), 0)?;
    Ok(x.stats)
}

impl Extractor<'_> {
    fn node(&mut self, ent: &DirEnt, dest: &Path, fspath: &str, depth: usize) -> Result<()> {
        if depth > 4096 {
            return Err(Error::corrupt(dest.display().to_string(), "directory nesting deeper than 4096 (loop?)"));
        }
        let ino = self.fs.inode(ent.id)?;
        if ino.file_type != FileType::Directory && ino.nlink > 1 {
            if let Some(first) = self.links.get(&ent.id) {
                std::fs::hard_link(first, dest).map_err(|e| Error::io(dest, "link", e))?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
            self.links.insert(ent.id, dest.to_path_buf());
        }
        match ino.file_type {
            FileType::Directory => {
                if ent.id.ino != crate::format::EMPTY_SUBVOL_DIR_OBJECTID && !self.dirs.insert(ent.id) {
                    return Err(Error::corrupt(
                        format!("directory {} at {fspath:?}", ent.id),
                        "reached twice (directory loop or aliased directory)",
                    ));
                }
                if !dest.is_dir() {
                    std::fs::create_dir(dest).map_err(|e| Error::io(dest, "mkdir", e))?;
                }
                self.stats.dirs += 1;
                for child in self.fs.read_dir(ent.id)? {
                    let name = OsStr::from_bytes(&child.name);
                    if name == "." || name == ".." || child.name.contains(&b'/') {
                        return Err(Error::corrupt(format!("directory {}", ent.id), format!("invalid entry name {name:?}")));
                    }
                    let child_path = if fspath.is_empty() { name.to_string_lossy().into_owned() } else { format!("{fspath}/{}", name.to_string_lossy()) };
                    self.node(&child, &dest.join(name), &child_path, depth + 1)?;
                }
            }
            FileType::Regular => {
                self.file(&ino, dest, fspath)?;
                self.stats.files += 1;
            }
            FileType::Symlink => {
                let target = self.fs.read_link(ent.id)?;
                let target = OsStr::from_bytes(&target);
                std::os::unix::fs::symlink(target, dest).map_err(|e| Error::io(dest, "symlink", e))?;
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
                rustix::fs::mknodat(CWD, dest, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| Error::io(dest, "mknod", e.into()))?;
                self.stats.special += 1;
            }
        }
        self.metadata(&ino, dest)
    }

    fn file(&mut self, ino: &Inode, dest: &Path, fspath: &str) -> Result<()> {
        let f = File::options().write(true).create_new(true).open(dest).map_err(|e| Error::io(dest, "create", e))?;
        let mut bytes = 0u64;
        self.fs.read_file_as(ino, fspath, &mut |chunk| {
            if let FileChunk::Data { offset, data } = chunk {
                // Holes are never written, so the host file stays sparse.
                if data.iter().any(|&b| b != 0) || data.is_empty() {
                    f.write_all_at(data, offset).map_err(|e| Error::io(dest, "write", e))?;
                }
                bytes += data.len() as u64;
            }
            Ok(())
        })?;
        f.set_len(ino.size).map_err(|e| Error::io(dest, "truncate", e))?;
        self.stats.bytes += bytes;
        Ok(())
    }

    /// Owner, xattrs, mode, then times: chown clears setuid and the
    /// security.capability xattr, and every change touches ctime/mtime, so
    /// the order matters.
    fn metadata(&mut self, ino: &Inode, dest: &Path) -> Result<()> {
        let is_link = ino.file_type == FileType::Symlink;
        if self.root {
            std::os::unix::fs::lchown(dest, Some(ino.uid), Some(ino.gid)).map_err(|e| Error::io(dest, "chown", e))?;
        } else if ino.uid != rustix::process::geteuid().as_raw() {
            self.skip(format!("{}: owner {}:{} needs root", dest.display(), ino.uid, ino.gid));
        }
        for (name, value) in self.fs.xattrs(ino.id)? {
            let name_os = OsStr::from_bytes(&name);
            if !self.root && !name.starts_with(b"user.") {
                self.skip(format!("{}: xattr {name_os:?} needs root", dest.display()));
                continue;
            }
            if is_link && name.starts_with(b"user.") {
                // The host refuses user.* xattrs on symlinks (as does the kernel for btrfs).
                continue;
            }
            if let Err(e) = xattr::set(dest, name_os, &value) {
                self.skip(format!("{}: xattr {name_os:?}: {e}", dest.display()));
            }
        }
        if !is_link {
            rustix::fs::chmod(dest, Mode::from_raw_mode(ino.permissions())).map_err(|e| Error::io(dest, "chmod", e.into()))?;
        }
        let ts = |t: crate::fs::Timespec| rustix::fs::Timespec { tv_sec: t.sec, tv_nsec: t.nsec as _ };
        rustix::fs::utimensat(
            CWD,
            dest,
            &Timestamps { last_access: ts(ino.atime), last_modification: ts(ino.mtime) },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io(dest, "set times", e.into()))
    }

    fn skip(&mut self, what: String) {
        if self.stats.skipped.len() < 1000 {
            self.stats.skipped.push(what);
        }
    }
}
