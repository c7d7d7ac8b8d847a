//! Refusing to write an image that something else is using: an exclusive
//! `flock` on every image opened for writing, and a check that the kernel does
//! not have it attached to a loop device (it could be mounted through one).

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Take an exclusive, non-blocking lock on an image for the life of `file`.
pub fn lock_exclusive(file: &File, path: &Path) -> Result<()> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Devices(format!(
            "{} is in use by another process (it holds a lock on it); not writing",
            path.display()
        ))),
        Err(e) => Err(Error::io(path, "flock", e.into())),
    }
}

/// Take a shared lock, so that readers do not run alongside a writer.
pub fn lock_shared(file: &File, path: &Path) -> Result<()> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Devices(format!(
            "{} is being written by another process; try again when it is done",
            path.display()
        ))),
        Err(e) => Err(Error::io(path, "flock", e.into())),
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
