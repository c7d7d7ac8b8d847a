//! Files on the host that btrs copies in (`mkfs --rootdir`, `put`): opened
//! without touching their atime, their data ranges found with
//! SEEK_DATA/SEEK_HOLE so holes stay holes, their xattrs and device numbers.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub(crate) fn io(path: &Path, op: &str) -> impl FnOnce(std::io::Error) -> Error {
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

/// The error for a host entry that is no longer what was first looked at
/// (`now` says what it is now): a source changed while being copied.
pub(crate) fn changed(path: &Path, now: &str) -> Error {
    Error::Invalid(format!("{}: changed while being copied: {now}; not copied", path.display()))
}

/// Open source file `path` for reading, as the regular file (device, inode)
/// `id` that an earlier stat found there, without touching its atime
/// (O_NOATIME needs ownership or CAP_FOWNER; without them a plain open), so
/// that making an image does not change the tree it is made from and two
/// runs see the same times.
///
/// Whatever is at `path` by now is refused unless it is that same file: a
/// symlink put there is not followed (O_NOFOLLOW: the bytes of whatever it
/// points to, outside the tree copied, would be copied under the file's
/// name), a fifo does not hold the open until a writer comes (O_NONBLOCK,
/// then refused as no regular file), and another file is told apart by its
/// device and inode numbers.
pub(crate) fn open_source(path: &Path, id: HostId) -> Result<File> {
    open_source_sized(path, id).map(|(f, _)| f)
}

/// [`open_source`], with the file's size as the open file has it now.
pub(crate) fn open_source_sized(path: &Path, id: HostId) -> Result<(File, u64)> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK;
    let open = |more: OFlags| std::fs::OpenOptions::new().read(true).custom_flags((flags | more).bits() as i32).open(path);
    let changed = |now: &str| changed(path, &format!("no longer the regular file first looked at but {now}"));
    let f = match open(OFlags::NOATIME) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => open(OFlags::empty()),
        r => r,
    };
    let f = match f {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => return Err(changed("a symlink")),
        Err(e) => return Err(Error::io(path, "open", e)),
    };
    let m = f.metadata().map_err(io(path, "stat"))?;
    if !m.is_file() {
        return Err(changed("something else (a directory, fifo, socket or device)"));
    }
    if (m.dev(), m.ino()) != id {
        return Err(changed("another file (another device or inode number)"));
    }
    Ok((f, m.len()))
}

/// A host entry held by an O_PATH descriptor, checked to be the (device,
/// inode) first stat'ed: its symlink target and xattrs are then read from
/// that inode, whatever its path leads to by then (a directory above it
/// swapped for a symlink to a tree outside must not lend that tree's
/// targets or xattrs). O_PATH opens no device and waits on no fifo.
pub(crate) struct Pinned<'a> {
    fd: rustix::fd::OwnedFd,
    path: &'a Path,
}

impl<'a> Pinned<'a> {
    /// `follow`: a symlink at the end of `path` is followed (a root
    /// directory the user named through one).
    pub(crate) fn new(path: &'a Path, id: HostId, follow: bool) -> Result<Pinned<'a>> {
        use rustix::fs::{Mode, OFlags};
        let nofollow = if follow { OFlags::empty() } else { OFlags::NOFOLLOW };
        let fd = rustix::fs::openat(rustix::fs::CWD, path, OFlags::PATH | nofollow | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::io(path, "open", e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(path, "stat", e.into()))?;
        if (st.st_dev, st.st_ino) != id {
            return Err(changed(path, ANOTHER_FILE));
        }
        Ok(Pinned { fd, path })
    }

    /// The target of the symlink held.
    pub(crate) fn read_link(&self) -> Result<Vec<u8>> {
        rustix::fs::readlinkat(&self.fd, "", Vec::new()).map(|t| t.into_bytes()).map_err(|e| Error::io(self.path, "readlink", e.into()))
    }

    /// The xattrs of the inode held, sorted by name: through
    /// /proc/self/fd, which leads to that inode itself (a symlink's own
    /// too); without /proc, by path.
    pub(crate) fn xattrs(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use rustix::fd::AsRawFd;
        static PROC_FD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if !*PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
            return read_xattrs(self.path);
        }
        let held = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        collect_xattrs(&held, self.path, true)
    }
}

/// The xattrs of `path`, which a stat found to be `id`, sorted by name.
/// Most files have none, and a look by path that finds none ends there (one
/// call, as before): whatever a swap led it to, nothing from outside the
/// tree is taken. Any found are read again from the inode itself
/// ([`Pinned`]), so that a directory above it swapped for a symlink cannot
/// lend an outside file's.
pub(crate) fn xattrs_of(path: &Path, id: HostId, follow: bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let none = match if follow { xattr::list_deref(path) } else { xattr::list(path) } {
        Ok(mut n) => n.next().is_none(),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => true,
        Err(e) => return Err(Error::io(path, "listxattr", e)),
    };
    if none {
        return Ok(Vec::new());
    }
    Pinned::new(path, id, follow)?.xattrs()
}

/// Open host directory `dir` as the directory `expect` names: no symlink
/// followed at its end unless `follow` (a root directory the user named
/// through one), and the same device and inode, or "changed while being
/// copied" (a directory swapped for another, or a component above it
/// swapped for a symlink).
pub(crate) fn open_dir(dir: &Path, expect: HostId, follow: bool) -> Result<rustix::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let changed = || changed(dir, "no longer the directory first looked at");
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | if follow { OFlags::empty() } else { OFlags::NOFOLLOW };
    let fd = match rustix::fs::openat(rustix::fs::CWD, dir, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => return Err(changed()),
        Err(e) => return Err(Error::io(dir, "open directory", e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(dir, "stat", e.into()))?;
    if (st.st_dev, st.st_ino) != expect {
        return Err(changed());
    }
    Ok(fd)
}

/// Each name in the directory open as `fd` (`dir` for messages) but . and
/// .., in the order the directory gives them.
fn each_name(fd: &rustix::fd::OwnedFd, dir: &Path, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    for e in rustix::fs::Dir::read_from(fd).map_err(|e| Error::io(dir, "readdir", e.into()))? {
        let e = e.map_err(|e| Error::io(dir, "readdir", e.into()))?;
        let name = e.file_name().to_bytes();
        if !matches!(name, b"." | b"..") {
            f(name)?;
        }
    }
    Ok(())
}

/// The names in the directory open as `fd` (`dir` for messages), sorted.
pub(crate) fn sorted_names(fd: &rustix::fd::OwnedFd, dir: &Path) -> Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    each_name(fd, dir, |name| {
        names.push(name.to_vec());
        Ok(())
    })?;
    names.sort_unstable();
    Ok(names)
}

/// The lstat of `name` in the directory open as `fd` (`path` for messages,
/// made only for one): what a swap of a directory above it cannot redirect.
pub(crate) fn stat_at(fd: &rustix::fd::OwnedFd, name: &[u8], path: impl FnOnce() -> PathBuf) -> Result<rustix::fs::Stat> {
    rustix::fs::statat(fd, std::ffi::OsStr::from_bytes(name), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io(path(), "lstat", e.into()))
}

/// `dir` joined with `name` as [`Path::join`] does, in one allocation
/// (join's pushes reallocate twice: a copy per file for every path made
/// of a million files).
pub(crate) fn joined(dir: &Path, name: &Path) -> PathBuf {
    let mut p = PathBuf::with_capacity(dir.as_os_str().len() + 1 + name.as_os_str().len());
    p.push(dir);
    p.push(name);
    p
}

/// A host directory's entries, sorted by name, each with the (device,
/// inode) that a stat relative to the directory itself found, for a copy
/// that must not be led outside the tree it copies.
///
/// The directory is opened by path as the directory `expect` names (no
/// symlink followed at its end, and the same device and inode: a directory
/// swapped for another, or a component above it swapped for a symlink, is
/// refused). What is later done by path under it (a stat, an open) is
/// checked against the identities here: see [`open_source`].
///
/// It takes little memory (a directory of a million entries is held while
/// it is copied): each entry costs its name's bytes and 32 more (a std
/// `DirEntry` each, with a name sorted apart, took some 650).
pub(crate) struct Listing {
    dir: std::path::PathBuf,
    names: Vec<u8>,
    entries: std::vec::IntoIter<Listed>,
}

/// One entry of a [`Listing`]: where its name is in `names`, and its stat.
struct Listed {
    start: usize,
    len: u16,
    is_dir: bool,
    id: HostId,
}

impl Listing {
    /// `follow`: a symlink at the end of `dir` is followed (a root
    /// directory the user named through one); `expect` is then the target's.
    pub(crate) fn read(dir: &Path, expect: HostId, follow: bool) -> Result<Listing> {
        let fd = open_dir(dir, expect, follow)?;
        let (mut names, mut entries) = (Vec::new(), Vec::new());
        each_name(&fd, dir, |name| {
            let path = || joined(dir, Path::new(std::ffi::OsStr::from_bytes(name)));
            let len =
                u16::try_from(name.len()).map_err(|_| Error::Invalid(format!("{}: a name of {} bytes", path().display(), name.len())))?;
            let st = stat_at(&fd, name, path)?;
            let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
            entries.push(Listed { start: names.len(), len, is_dir, id: (st.st_dev, st.st_ino) });
            names.extend_from_slice(name);
            Ok(())
        })?;
        let name = |l: &Listed| names.get(l.start..l.start + usize::from(l.len)).unwrap_or_default();
        entries.sort_unstable_by(|a, b| name(a).cmp(name(b)));
        names.shrink_to_fit();
        Ok(Listing { dir: dir.to_path_buf(), names, entries: entries.into_iter() })
    }

    /// The next entry, in name order.
    pub(crate) fn next(&mut self) -> Option<ListedEntry> {
        let l = self.entries.next()?;
        let name = self.names.get(l.start..l.start + usize::from(l.len)).unwrap_or_default().to_vec();
        let path = joined(&self.dir, Path::new(std::ffi::OsStr::from_bytes(&name)));
        Some(ListedEntry { name, path, is_dir: l.is_dir, id: l.id })
    }
}

/// A host file's (device, inode): which file it is.
pub(crate) type HostId = (u64, u64);

/// What [`changed`] says of a file whose device or inode number differs.
pub(crate) const ANOTHER_FILE: &str = "no longer the file first looked at (another device or inode number)";

/// An entry [`Listing::next`] hands out.
pub(crate) struct ListedEntry {
    pub(crate) name: Vec<u8>,
    pub(crate) path: std::path::PathBuf,
    pub(crate) is_dir: bool,
    pub(crate) id: HostId,
}

pub(crate) fn round_up(v: u64, to: u64) -> u64 {
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
pub(crate) fn sector_ranges(ranges: impl Iterator<Item = (u64, u64)>, sector: u64) -> Vec<(u64, u64)> {
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
    // The l*xattr calls: symlinks' own attributes, not their targets'.
    collect_xattrs(path, path, false)
}

/// The xattrs at `path` (`shown` in messages), sorted by name; `deref`:
/// through a symlink at its end (the getxattr calls, for /proc/self/fd
/// links), else the l*xattr calls.
fn collect_xattrs(path: &Path, shown: &Path, deref: bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let names = match if deref { xattr::list_deref(path) } else { xattr::list(path) } {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => return Ok(out),
        Err(e) => return Err(Error::io(shown, "listxattr", e)),
    };
    for name in names {
        let v = if deref { xattr::get_deref(path, &name) } else { xattr::get(path, &name) };
        if let Some(v) = v.map_err(io(shown, "getxattr"))? {
            out.push((name.as_bytes().to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink's target and a file's xattrs come from the inodes pinned,
    /// not from an outside tree a directory above them was swapped for; a
    /// pin taken after the swap is refused.
    #[test]
    fn pinned_entries_are_read_from_themselves() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let (inside, outside) = (d.path().join("in"), d.path().join("out"));
        for (t, target, x) in [(&inside, "inside", "IN"), (&outside, "OUTSIDE", "SECRET")] {
            std::fs::create_dir_all(t.join("P")).unwrap();
            std::os::unix::fs::symlink(target, t.join("P/s")).unwrap();
            std::fs::write(t.join("P/f"), "f").unwrap();
            if xattr::set(t.join("P/f"), "user.x", x.as_bytes()).is_err() {
                eprintln!("skipped: no user xattrs in {}", d.path().display());
                return;
            }
        }
        let id = |p: &Path| {
            let m = std::fs::symlink_metadata(p).unwrap();
            (m.dev(), m.ino())
        };
        let (s, f) = (inside.join("P/s"), inside.join("P/f"));
        let (sid, fid) = (id(&s), id(&f));
        let (ps, pf) = (Pinned::new(&s, sid, false).unwrap(), Pinned::new(&f, fid, false).unwrap());
        std::fs::rename(inside.join("P"), d.path().join("P-aside")).unwrap();
        std::os::unix::fs::symlink(outside.join("P"), inside.join("P")).unwrap();
        assert_eq!(ps.read_link().unwrap(), b"inside");
        assert_eq!(pf.xattrs().unwrap(), vec![(b"user.x".to_vec(), b"IN".to_vec())]);
        for (p, i) in [(&s, sid), (&f, fid)] {
            let e = Pinned::new(p, i, false).err().map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains("changed while being copied")), "{e:?}");
        }
        // Looked up by path after the swap, the outside file's xattrs are
        // found, and then refused, not taken.
        let e = xattrs_of(&f, fid, false).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("changed while being copied")), "{e:?}");
    }

    /// A source file swapped after it was looked at is not opened as if it
    /// were the same: not a symlink's target (an attacker's pick of a file
    /// outside the tree), not a fifo (whose open would wait for a writer
    /// forever), not another file; the same file opens.
    #[test]
    fn open_source_opens_only_the_file_first_looked_at() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let (f, secret) = (d.path().join("f"), d.path().join("secret"));
        std::fs::write(&f, b"mine").unwrap();
        std::fs::write(&secret, b"nope").unwrap();
        let m = std::fs::symlink_metadata(&f).unwrap();
        let id = (m.dev(), m.ino());
        assert!(open_source(&f, id).is_ok());
        // What was at `f` is moved aside, not removed: the first file keeps
        // its inode number, which nothing else may then reuse.
        let aside = std::cell::Cell::new(0);
        let swap = |make: &dyn Fn(&Path)| {
            aside.set(aside.get() + 1);
            std::fs::rename(&f, d.path().join(format!("aside{}", aside.get()))).unwrap();
            make(&f);
        };
        swap(&|p| std::os::unix::fs::symlink(&secret, p).unwrap());
        let e = open_source(&f, id).unwrap_err().to_string();
        assert!(e.contains("changed while being copied") && e.contains("a symlink"), "{e}");
        swap(&|p| rustix::fs::mknodat(rustix::fs::CWD, p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let fifo = f.clone();
        std::thread::spawn(move || {
            let _ = tx.send(open_source(&fifo, id).map(drop).map_err(|e| e.to_string()));
        });
        let e = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("opening a fifo waited for a writer").unwrap_err();
        assert!(e.contains("changed while being copied") && e.contains("fifo"), "{e}");
        swap(&|p| std::fs::write(p, b"mine").unwrap());
        let e = open_source(&f, id).unwrap_err().to_string();
        assert!(e.contains("another file"), "{e}");
    }

    #[test]
    fn rdev_is_stored_as_kernel_mkdev() {
        // glibc makedev(8, 300) and makedev(259, 70000).
        let glibc = |major: u64, minor: u64| ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12);
        assert_eq!(host_rdev_to_btrfs(glibc(8, 300)), (8 << 20) | 300);
        assert_eq!(host_rdev_to_btrfs(glibc(259, 70000)), (259 << 20) | 70000);
    }
}
