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
pub fn lock_exclusive(file: &File, path: &Path) -> Result<()> {
    match flock_patiently(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Devices(format!(
            "{} is in use by another process (it holds a lock on it); not writing",
            path.display()
        ))),
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
    /// superblock reaches (COW) before its own commit, so the tree the
    /// superblock names stays readable while it works.
    SharedIfFree,
}

/// Take a shared lock, so that readers do not run alongside a writer.
pub fn lock_shared(file: &File, path: &Path) -> Result<()> {
    match flock_patiently(file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Devices(format!(
            "{} is being written by another process; try again when it is done",
            path.display()
        ))),
        Err(e) => Err(Error::io(path, "flock", e.into())),
    }
}

/// Lock `file` as `lock` says.
pub fn lock(file: &File, path: &Path, lock: Lock) -> Result<()> {
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
pub fn refuse_loop_attached(path: &Path) -> Result<()> {
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
            return Err(Error::Devices(format!(
                "{} is attached to /dev/{name} (it may be mounted); detach it first",
                path.display()
            )));
        }
    }
    Ok(())
}
