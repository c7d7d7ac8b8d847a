//! Refusing to write an image that something else is using: an exclusive
//! `flock` on every image opened for writing, and a check that the kernel does
//! not have it attached to a loop device (it could be mounted through one).

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// How long a lock is retried before the image counts as in use. A lock can
/// outlive its owner's close by a moment: a process that forks keeps the
/// locked file description alive in the child until the child's exec
/// closes it (O_CLOEXEC), so a writer that just finished may still appear to
/// hold its lock.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(1500);

/// flock without blocking, retried for [`LOCK_PATIENCE`].
fn flock_patiently(file: &File, op: rustix::fs::FlockOperation) -> rustix::io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        match rustix::fs::flock(file, op) {
            Err(rustix::io::Errno::WOULDBLOCK) if start.elapsed() < LOCK_PATIENCE => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Take an exclusive, non-blocking lock on an image for the life of `file`.
pub(crate) fn lock_exclusive(file: &File, path: &Path) -> Result<()> {
    match flock_patiently(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            Err(Error::Devices(format!("{} is in use by another process (it holds a lock on it); not writing", path.display())))
        }
        Err(e) => Err(Error::io(path, "flock", e.into())),
    }
}

/// How an image is locked while it is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    /// A writer: nobody else may hold any lock.
    Exclusive,
    /// A reader that needs the images to hold still (scrub compares copies,
    /// and a NODATACOW write changes committed bytes in place).
    Shared,
    /// A reader of the last committed state: shared when it can be had,
    /// otherwise none. A btrs writer never overwrites what the committed
    /// superblock reaches (COW) before its own commit, and after it keeps
    /// what it freed unused while the reader is registered (see
    /// `register_reader`), so the tree the reader found stays readable.
    SharedIfFree,
}

/// Take a shared lock, so that readers do not run alongside a writer.
pub(crate) fn lock_shared(file: &File, path: &Path) -> Result<()> {
    match flock_patiently(file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            Err(Error::Devices(format!("{} is being written by another process; try again when it is done", path.display())))
        }
        Err(e) => Err(Error::io(path, "flock", e.into())),
    }
}

/// Lock `file` as `lock` says.
pub(crate) fn lock(file: &File, path: &Path, lock: Lock) -> Result<()> {
    match lock {
        Lock::Exclusive => lock_exclusive(file, path),
        Lock::Shared => lock_shared(file, path),
        Lock::SharedIfFree => match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) | Err(rustix::io::Errno::WOULDBLOCK) => Ok(()),
            Err(e) => Err(Error::io(path, "flock", e.into())),
        },
    }
}

/// Error if `path` is the backing file of a loop device (and so possibly
/// mounted by the kernel), naming the loop device.
pub(crate) fn refuse_loop_attached(path: &Path) -> Result<()> {
    let Ok(canon) = std::fs::canonicalize(path) else { return Ok(()) };
    let Ok(meta) = std::fs::metadata(&canon) else { return Ok(()) };
    use std::os::unix::fs::MetadataExt;
    let (dev, ino) = (meta.dev(), meta.ino());
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else { continue };
        let backing = backing.trim_end_matches('\n');
        let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
        let same = std::fs::metadata(backing).map(|m| m.dev() == dev && m.ino() == ino).unwrap_or(false);
        if same || Path::new(backing) == canon {
            return Err(Error::Devices(format!("{} is attached to /dev/{name} (it may be mounted); detach it first", path.display())));
        }
    }
    Ok(())
}

/// Where reader registrations live: byte-range locks far past any image's
/// end (a lock needs no bytes to exist there), one byte per generation.
const READER_LOCK_BASE: u64 = 1 << 62;

/// The byte a writer write-locks while its transaction has overwritten
/// committed NODATACOW data in place (see [`mark_in_place`]).
const IN_PLACE_LOCK: u64 = READER_LOCK_BASE - 1;

fn in_place_lock(kind: libc::c_short) -> Result<libc::flock> {
    let off = |v: u64| libc::off_t::try_from(v).map_err(|_| Error::Invalid(format!("lock offset {v} out of range")));
    Ok(libc::flock { l_type: kind, l_whence: short(libc::SEEK_SET), l_start: off(IN_PLACE_LOCK)?, l_len: 1, l_pid: 0 })
}

/// A writer about to overwrite committed NODATACOW bytes in place says so
/// (`on`), before it looks for readers, and takes it back once its commit
/// is on the images. A reader registers first and then looks at this mark
/// ([`in_place_pending`]): so either the writer sees the reader and copies
/// on write, or the reader sees the mark and waits for the commit, whose
/// trees are the state those bytes belong to.
pub(crate) fn mark_in_place(file: &File, path: &Path, on: bool) -> Result<()> {
    use std::os::fd::AsRawFd;
    let l = in_place_lock(short(if on { libc::F_WRLCK } else { libc::F_UNLCK }))?;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&l))
        .map(|_| ())
        .map_err(|e| Error::io(path, "mark an in-place write (fcntl F_OFD_SETLK)", e.into()))
}

/// Whether another open file (any process) holds the in-place mark on `file`.
pub(crate) fn in_place_pending(file: &File, path: &Path) -> Result<bool> {
    use std::os::fd::AsRawFd;
    let mut l = in_place_lock(short(libc::F_RDLCK))?;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_GETLK(&mut l))
        .map_err(|e| Error::io(path, "look for an in-place write (fcntl F_OFD_GETLK)", e.into()))?;
    Ok(l.l_type != short(libc::F_UNLCK))
}

fn generation_lock(kind: libc::c_short, generation: u64, len: u64) -> Result<libc::flock> {
    let start = READER_LOCK_BASE
        .checked_add(generation)
        .filter(|s| s.checked_add(len).is_some_and(|e| i64::try_from(e).is_ok()))
        .ok_or_else(|| Error::Invalid(format!("generation {generation} is too large to register a reader at")))?;
    let off = |v: u64| libc::off_t::try_from(v).map_err(|_| Error::Invalid(format!("lock offset {v} out of range")));
    Ok(libc::flock { l_type: kind, l_whence: short(libc::SEEK_SET), l_start: off(start)?, l_len: off(len)?, l_pid: 0 })
}

/// libc's lock constants are `c_int`; `struct flock` holds them as `c_short`.
fn short(v: libc::c_int) -> libc::c_short {
    libc::c_short::try_from(v).unwrap_or(libc::c_short::MAX)
}

/// Announce that this open file reads the committed state of `generation`:
/// an open-file-description read lock on the generation's byte, held until
/// the file is closed. A writer of this filesystem keeps every block that
/// generation reaches unused while the lock is held (see
/// [`oldest_reader`]). OFD locks do not interact with the `flock` locks
/// above, and stay with this open file alone (closing another descriptor of
/// the same image drops nothing).
pub(crate) fn register_reader(file: &File, path: &Path, generation: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let l = generation_lock(short(libc::F_RDLCK), generation, 1)?;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&l))
        .map(|_| ())
        .map_err(|e| Error::io(path, "register reader (fcntl F_OFD_SETLK)", e.into()))
}

/// The oldest generation below `below` that a reader registered on `file`
/// (by any process) still reads, if any.
pub(crate) fn oldest_reader(file: &File, path: &Path, below: u64) -> Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let mut limit = below;
    let mut found = None;
    // F_OFD_GETLK names one conflicting lock; narrow the range below it until none is left.
    while limit > 0 {
        let mut l = generation_lock(short(libc::F_WRLCK), 0, limit)?;
        nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_GETLK(&mut l))
            .map_err(|e| Error::io(path, "look for readers (fcntl F_OFD_GETLK)", e.into()))?;
        if l.l_type == short(libc::F_UNLCK) {
            break;
        }
        let generation = u64::try_from(l.l_start).ok().and_then(|s| s.checked_sub(READER_LOCK_BASE));
        match generation {
            Some(g) if g < limit => {
                found = Some(g);
                limit = g;
            }
            // A lock that is not one of ours (or an impossible answer): stop narrowing.
            _ => break,
        }
    }
    Ok(found)
}
