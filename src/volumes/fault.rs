//! Test-only fault injection at the device layer: the k-th image I/O of a
//! volume (writes and flushes, counted across all its devices and threads)
//! fails or is torn, and every I/O after it fails too, as if the process had
//! died there. Each write's previous bytes are kept so a test can put the
//! images back and try the next k without copying them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What happens at the chosen I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing of it reaches the image.
    Fail,
    /// Its first half (whole 4 KiB sectors; disks do not tear inside one)
    /// reaches the image, the rest does not.
    Torn,
}

#[derive(Debug)]
pub struct FaultPlan {
    /// The 0-based I/O that faults; `u64::MAX` only counts.
    pub at: u64,
    pub fault: Fault,
    count: AtomicU64,
    undo: Mutex<Vec<(PathBuf, u64, Vec<u8>)>>,
    /// Every read from a device carrying this plan fails (a dying disk).
    pub fail_reads: bool,
}

/// What the device should do with one I/O.
pub enum Verdict {
    Go,
    /// Write this many leading bytes, then fail.
    Partial(usize),
    Fail,
}

impl FaultPlan {
    pub fn new(at: u64, fault: Fault) -> FaultPlan {
        FaultPlan { at, fault, count: AtomicU64::new(0), undo: Mutex::new(Vec::new()), fail_reads: false }
    }

    /// A plan under which reads fail and writes go through.
    pub fn unreadable() -> FaultPlan {
        FaultPlan { fail_reads: true, ..FaultPlan::new(u64::MAX, Fault::Fail) }
    }

    /// I/Os seen so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    pub fn tick(&self, len: usize) -> Verdict {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        match n.cmp(&self.at) {
            std::cmp::Ordering::Less => Verdict::Go,
            std::cmp::Ordering::Equal if self.fault == Fault::Torn => Verdict::Partial(len / 2 / 4096 * 4096),
            _ => Verdict::Fail,
        }
    }

    pub fn remember(&self, path: &std::path::Path, offset: u64, old: Vec<u8>) {
        if let Ok(mut u) = self.undo.lock() {
            u.push((path.to_path_buf(), offset, old));
        }
    }

    /// Put back every byte written under this plan, newest first.
    pub fn restore(&self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let undo = std::mem::take(&mut *self.undo.lock().map_err(|_| std::io::Error::other("poisoned"))?);
        for (path, off, bytes) in undo.into_iter().rev() {
            std::fs::OpenOptions::new().write(true).open(&path)?.write_all_at(&bytes, off)?;
        }
        Ok(())
    }
}
