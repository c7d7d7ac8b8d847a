//! Test-only fault injection at the device layer: the k-th image I/O of a
//! volume (writes and flushes, counted across all its devices and threads)
//! fails or is torn, and every I/O after it fails too, as if the process had
//! died there. Each write's previous bytes are kept so a test can put the
//! images back and try the next k without copying them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// What happens at the chosen I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Nothing of it reaches the image.
    Fail,
    /// Its first half (whole 4 KiB sectors; disks do not tear inside one)
    /// reaches the image, the rest does not.
    Torn,
}

#[derive(Debug)]
pub(crate) struct FaultPlan {
    /// The 0-based I/O that faults; `u64::MAX` only counts.
    pub(crate) at: u64,
    pub(crate) fault: Fault,
    count: AtomicU64,
    undo: Mutex<Vec<(PathBuf, u64, Vec<u8>)>>,
    /// Image files whose length changed under this plan: their first length.
    lengths: Mutex<Vec<(PathBuf, u64)>>,
    /// Every read from a device carrying this plan fails (a dying disk).
    pub(crate) fail_reads: bool,
}

/// What the device should do with one I/O.
pub(crate) enum Verdict {
    Go,
    /// Write this many leading bytes, then fail.
    Partial(usize),
    Fail,
}

impl FaultPlan {
    pub(crate) fn new(at: u64, fault: Fault) -> FaultPlan {
        FaultPlan { at, fault, count: AtomicU64::new(0), undo: Mutex::new(Vec::new()), lengths: Mutex::new(Vec::new()), fail_reads: false }
    }

    /// A plan under which reads fail and writes go through.
    pub(crate) fn unreadable() -> FaultPlan {
        FaultPlan { fail_reads: true, ..FaultPlan::new(u64::MAX, Fault::Fail) }
    }

    /// I/Os seen so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    pub(crate) fn tick(&self, len: usize) -> Verdict {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        match n.cmp(&self.at) {
            std::cmp::Ordering::Less => Verdict::Go,
            std::cmp::Ordering::Equal if self.fault == Fault::Torn => Verdict::Partial(len / 2 / 4096 * 4096),
            _ => Verdict::Fail,
        }
    }

    pub(crate) fn remember(&self, path: &std::path::Path, offset: u64, old: Vec<u8>) {
        if let Ok(mut u) = self.undo.lock() {
            u.push((path.to_path_buf(), offset, old));
        }
    }

    /// A write of `buf` at `physical` of the image `path` (open as `file`)
    /// under this plan: the bytes it replaces are kept for [`Self::restore`],
    /// then it may go ahead (Ok: the caller writes), or fail, torn (its first
    /// part written here) or not at all. Every path that writes an image
    /// calls this first, so the k-th I/O is counted the same way for all.
    pub(crate) fn before_write(&self, file: &File, path: &Path, physical: u64, buf: &[u8]) -> Result<()> {
        let mut old = vec![0u8; buf.len()];
        let n = file.read_at(&mut old, physical).unwrap_or(0);
        old.truncate(n);
        self.remember(path, physical, old);
        let injected = |what: &str| {
            Error::io(path, format!("write {} bytes at {physical}", buf.len()), std::io::Error::other(format!("injected {what}")))
        };
        match self.tick(buf.len()) {
            Verdict::Go => Ok(()),
            Verdict::Partial(k) => {
                let _ = file.write_all_at(&buf[..k], physical);
                Err(injected("torn write"))
            }
            Verdict::Fail => Err(injected("write failure")),
        }
    }

    /// Put back every byte written under this plan, newest first.
    pub(crate) fn restore(&self) -> std::io::Result<()> {
        let undo = std::mem::take(&mut *self.undo.lock().map_err(|_| std::io::Error::other("poisoned"))?);
        for (path, off, bytes) in undo.into_iter().rev() {
            // A file removed since (one `device add` made) has nothing to put back.
            match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(f) => f.write_all_at(&bytes, off)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // Lengths last (a shrink's cut-off bytes were put back above).
        let lengths = std::mem::take(&mut *self.lengths.lock().map_err(|_| std::io::Error::other("poisoned"))?);
        for (path, len) in lengths.into_iter().rev() {
            match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(f) => f.set_len(len)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// An image file's length is about to become `len` (`btrs resize`
    /// grows or cuts it): one I/O, which may fail; the bytes a cut drops
    /// and the old length are kept for [`Self::restore`].
    pub(crate) fn before_set_len(&self, path: &Path, len: u64) -> Result<()> {
        if let Ok(f) = File::open(path) {
            let old = f.metadata().map(|m| m.len()).unwrap_or(0);
            if let Ok(mut l) = self.lengths.lock() {
                l.push((path.to_path_buf(), old));
            }
            if len < old {
                let mut tail = vec![0u8; usize::try_from(old - len).unwrap_or(0)];
                let n = f.read_at(&mut tail, len).unwrap_or(0);
                tail.truncate(n);
                self.remember(path, len, tail);
            }
        }
        match self.tick(0) {
            Verdict::Go => Ok(()),
            _ => Err(Error::io(path, format!("set size {len}"), std::io::Error::other("injected set_len failure"))),
        }
    }
}

thread_local! {
    /// A plan for the writable volumes this thread opens (`btrs replace`
    /// opens its set inside scrub, `balance` between its commits: out of a
    /// test's reach).
    static FOR_WRITERS: std::cell::RefCell<Option<std::sync::Arc<FaultPlan>>> = const { std::cell::RefCell::new(None) };
}

/// Hand `plan` (or none) to every writable volume this thread opens from
/// now on (scrub opens the set once per pass; the plan counts across them).
pub(crate) fn arm_for_writers(plan: Option<std::sync::Arc<FaultPlan>>) {
    FOR_WRITERS.with(|p| *p.borrow_mut() = plan);
}

pub(crate) fn for_writers() -> Option<std::sync::Arc<FaultPlan>> {
    FOR_WRITERS.with(|p| p.borrow().clone())
}
