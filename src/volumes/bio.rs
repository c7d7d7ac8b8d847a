//! Bios: the writes of file data to the image files, and the queues that
//! issue them.
//!
//! A write of `len` bytes at a logical address becomes bios of at most
//! `max_bio` bytes that never cross a stripe unit (64 KiB for RAID0/10) or a
//! chunk, one set per copy, each written from one buffer no caller can
//! reach: the engine's [`Bounce`] pages (direct writes) or the page cache's
//! sealed pages (buffered writes, [`Volume::write_bios`]).
//!
//! Direct writes ([`DirectWriter`]): each device has a queue of its own,
//! served in order by its own threads, so every device always has work:
//! O_DIRECT writes are synchronous, and a device that waited for its slower
//! partner after every step would sit idle (measured: two image files
//! written this way take as long as two independent `dd oflag=direct`; with
//! a barrier per 16 MiB step, 30 % longer). The bios of one write are
//! tracked together by a [`Tracker`] (pending count + first error).
//! [`DirectWriter::submit`] queues them and returns; a caller with a
//! borrowed buffer waits for them at once, a streaming writer that handed
//! over its pages lets them run while it records the step and reads the
//! next one. Image files are reopened with O_DIRECT where the host
//! filesystem allows (tmpfs does not: then the ordinary descriptor is used
//! and a notice given).

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::{Error, Result};
use crate::format::u64_of;
use crate::volumes::Volume;

/// One write of one contiguous piece to one copy.
#[derive(Debug, Clone)]
pub struct BioRecord {
    pub logical: u64,
    pub len: u64,
    pub devid: u64,
    pub physical: u64,
    pub mirror: usize,
}

/// Where a bio is in its life, for a [`BioHook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BioStage {
    Submitted,
    Completed,
    Failed,
}

/// Told of every data bio as it is submitted and as it completes (from the
/// thread that issued it), for `btrs write -v`.
#[derive(Clone)]
pub struct BioHook(pub Arc<BioFn>);

pub type BioFn = dyn Fn(&BioRecord, BioStage) + Send + Sync;

impl BioHook {
    pub(crate) fn call(&self, rec: &BioRecord, stage: BioStage) {
        (self.0)(rec, stage)
    }
}

impl std::fmt::Debug for BioHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BioHook")
    }
}

pub(crate) const PAGE: usize = 4096;

/// Threads per device issuing its bios. Synchronous O_DIRECT writes into a
/// sparse image on ext4 are serialized by the host inode's lock anyway
/// (block allocation); a second thread keeps a block device busy while the
/// first one's write completes.
const WORKERS_PER_DEVICE: usize = 2;

/// One bounce page, aligned for O_DIRECT.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C, align(4096))]
pub(crate) struct Page([u8; PAGE]);

/// Engine-owned, page-aligned memory. Pages taken from a [`PagePool`] go
/// back to it when dropped, wherever that happens: after a buffered write,
/// or in the device thread that completes the last bio writing them.
pub(crate) struct Bounce {
    pages: Vec<Page>,
    len: usize,
    home: Option<Sender<Bounce>>,
}

impl Bounce {
    pub(crate) fn zeroed(len: usize) -> Bounce {
        Bounce { pages: vec![Page([0; PAGE]); len.div_ceil(PAGE)], len, home: None }
    }
    #[allow(clippy::indexing_slicing)] // OK: len ≤ capacity, kept by zeroed and set_len.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.pages.as_bytes()[..self.len]
    }
    #[allow(clippy::indexing_slicing)] // OK: len ≤ capacity, kept by zeroed and set_len.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.pages.as_mut_bytes()[..self.len]
    }
    /// Bytes the pages hold.
    pub(crate) fn capacity(&self) -> usize {
        self.pages.as_bytes().len()
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Use the first `len` bytes (at most the capacity), the rest of the last
    /// page zeroed: a reused buffer must not carry old bytes past its end.
    pub(crate) fn set_len(&mut self, len: usize) {
        let len = len.min(self.capacity());
        let page_end = len.div_ceil(PAGE).saturating_mul(PAGE);
        if let Some(tail) = self.pages.as_mut_bytes().get_mut(len..page_end) {
            tail.fill(0);
        }
        self.len = len;
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        let Some(home) = self.home.take() else { return };
        let back = Bounce { pages: std::mem::take(&mut self.pages), len: 0, home: Some(home.clone()) };
        // The pool is gone (its user stopped): the pages are freed here, and
        // must not try to go home again.
        if let Err(std::sync::mpsc::SendError(mut orphan)) = home.send(back) {
            orphan.home = None;
        }
    }
}

/// A fixed set of equal buffers that come back by themselves (see [`Bounce`]):
/// the memory a streaming write needs is the pool, whatever the input size.
pub(crate) struct PagePool {
    free: Receiver<Bounce>,
}

impl PagePool {
    pub(crate) fn new(count: usize, len: usize) -> PagePool {
        let (home, free) = channel();
        for _ in 0..count {
            let mut b = Bounce::zeroed(len);
            b.home = Some(home.clone());
            let _ = home.send(b);
        }
        PagePool { free }
    }
    /// The next free buffer, waiting for one to come back; `None` once no
    /// buffer can come back any more.
    pub(crate) fn take(&self) -> Option<Bounce> {
        self.free.recv().ok()
    }
}

/// Completion tracking for the bios of one write.
#[derive(Default)]
pub(crate) struct Tracker {
    pending: AtomicUsize,
    first_error: Mutex<Option<Error>>,
    all_done: Condvar,
    done_lock: Mutex<()>,
}

impl Tracker {
    pub(crate) fn add(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::SeqCst);
    }
    /// One bio finished (on one mirror).
    pub(crate) fn complete(&self, r: Result<()>) {
        if let Err(e) = r {
            if let Ok(mut f) = self.first_error.lock() {
                f.get_or_insert(e);
            }
        }
        if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _g = self.done_lock.lock();
            self.all_done.notify_all();
        }
    }
    /// Every bio finished without an error.
    fn succeeded(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0 && self.first_error.lock().is_ok_and(|e| e.is_none())
    }
    /// Some bio already failed.
    fn failed(&self) -> bool {
        self.first_error.lock().map_or(true, |e| e.is_some())
    }
    /// Wait for every bio; the first error, if any.
    pub(crate) fn wait(&self) -> Result<()> {
        let mut g = self.done_lock.lock().map_err(|_| Error::Internal("bio tracker lock poisoned".into()))?;
        while self.pending.load(Ordering::SeqCst) != 0 {
            g = self.all_done.wait(g).map_err(|_| Error::Internal("bio tracker lock poisoned".into()))?;
        }
        drop(g);
        match self.first_error.lock().map_err(|_| Error::Internal("bio tracker lock poisoned".into()))?.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Tests only: the caller's source of a direct write (which another thread
/// may be changing), `len` bytes that start at `base` in the pages, read by
/// `copy_to(offset, dst)`; see [`DirectWriter::no_bounce`].
#[derive(Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Live<'a> {
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) copy_to: &'a (dyn Fn(usize, &mut [u8]) + Sync),
}

#[cfg(test)]
impl Live<'_> {
    /// What a device DMA-ing from the caller's page would see: the bio's
    /// bytes as the caller's source holds them right now.
    #[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)] // Tests: a panic is a failing test.
    fn snapshot(&self, pages: &Bounce, span: Range<usize>) -> (Arc<Bounce>, Range<usize>) {
        let mut b = Bounce::zeroed(span.len());
        b.bytes_mut().copy_from_slice(&pages.bytes()[span.clone()]);
        let lo = span.start.max(self.base);
        let hi = span.end.min(self.base + self.len);
        if lo < hi {
            (self.copy_to)(lo - self.base, &mut b.bytes_mut()[lo - span.start..hi - span.start]);
        }
        let n = b.len();
        (Arc::new(b), 0..n)
    }
}

/// One planned bio.
#[derive(Clone, Debug)]
pub(crate) struct Bio {
    /// Where its bytes are in the buffer written, and how many.
    pub(crate) buf_off: usize,
    pub(crate) buf_len: usize,
    pub(crate) rec: BioRecord,
}

fn overflow(logical: u64) -> Error {
    Error::Invalid(format!("bio at logical {logical}: address past 2^64"))
}

/// The bios of one contiguous segment of copy `mirror` of a write at
/// `logical`: `(offset in the buffer, where on which device, bytes)` as
/// [`Volume::copy_segments`] gives them, cut in bios of at most `max_bio`
/// bytes (at least a page).
fn segment_bios(logical: u64, (off, addr, n): (usize, super::chunks::PhysAddr, usize), mirror: usize, max_bio: usize) -> Result<Vec<Bio>> {
    let mut out = Vec::new();
    let mut done = 0usize;
    while let Some(left) = n.checked_sub(done).filter(|&l| l > 0) {
        let k = left.min(max_bio.max(PAGE));
        let buf_off = off.checked_add(done).ok_or_else(|| overflow(logical))?;
        let at = logical.checked_add(u64_of(buf_off)).ok_or_else(|| overflow(logical))?;
        let physical = addr.physical.checked_add(u64_of(done)).ok_or_else(|| overflow(at))?;
        out.push(Bio { buf_off, buf_len: k, rec: BioRecord { logical: at, len: u64_of(k), devid: addr.devid, physical, mirror } });
        done = done.saturating_add(k);
    }
    Ok(out)
}

/// A bio on its device's queue: the pages it writes from stay alive (and
/// out of their pool) until it is done.
struct Job {
    pages: Arc<Bounce>,
    span: Range<usize>,
    rec: BioRecord,
    tracker: Arc<Tracker>,
    hook: Option<BioHook>,
    /// Test-only: fail instead of writing.
    #[cfg(test)]
    fail: bool,
    /// Its tracker was told how it ended.
    completed: bool,
}

impl Job {
    fn complete(mut self, r: Result<()>) {
        self.completed = true;
        self.tracker.complete(r);
    }
}

impl Drop for Job {
    /// A bio dropped unwritten (its thread panicked, or its queue's threads
    /// are gone) still counts as done, failed: its write must not wait for it
    /// forever.
    fn drop(&mut self) {
        if !self.completed {
            self.tracker.complete(Err(Error::Devices(format!(
                "devid {}: the bio at logical {} was dropped unwritten (its device thread ended)",
                self.rec.devid, self.rec.logical
            ))));
        }
    }
}

/// What a device's threads write with.
struct DeviceFiles {
    path: PathBuf,
    /// Opened with O_DIRECT, when the host allowed it.
    direct: Option<File>,
    /// The ordinary descriptor, for pieces O_DIRECT cannot take.
    plain: File,
    /// Test builds: the device's fault plan (see `volumes::fault`).
    #[cfg(test)]
    fault: Option<Arc<crate::volumes::fault::FaultPlan>>,
}

impl DeviceFiles {
    fn write(&self, data: &[u8], physical: u64) -> Result<()> {
        #[cfg(test)]
        if let Some(plan) = &self.fault {
            plan.before_write(&self.plain, &self.path, physical, data)?;
        }
        // O_DIRECT wants the file offset, the length and the memory aligned.
        let aligned = physical.checked_rem(u64_of(PAGE)) == Some(0) && data.len() % PAGE == 0 && data.as_ptr().align_offset(PAGE) == 0;
        match &self.direct {
            Some(f) if aligned => f
                .write_all_at(data, physical)
                .map_err(|e| Error::io(&self.path, format!("O_DIRECT write {} bytes at {physical}", data.len()), e)),
            _ => self
                .plain
                .write_all_at(data, physical)
                .map_err(|e| Error::io(&self.path, format!("write {} bytes at {physical}", data.len()), e)),
        }
    }
}

fn serve(files: &DeviceFiles, queue: &Mutex<Receiver<Job>>, abort: &AtomicBool) {
    loop {
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let r = if abort.load(Ordering::Relaxed) {
            Err(Error::Invalid("write abandoned".into()))
        } else {
            #[cfg(test)]
            if job.fail {
                job.complete(Err(Error::io(&files.path, "injected bio failure", std::io::Error::other("injected"))));
                continue;
            }
            match job.pages.bytes().get(job.span.clone()) {
                Some(data) => files.write(data, job.rec.physical),
                None => Err(Error::Internal(format!("bio at logical {}: its span is past its pages", job.rec.logical))),
            }
        };
        if let Some(h) = &job.hook {
            h.call(&job.rec, if r.is_ok() { BioStage::Completed } else { BioStage::Failed });
        }
        job.complete(r);
    }
}

/// Issues the bios of direct writes, on threads of its own per device.
pub(crate) struct DirectWriter {
    max_bio: usize,
    queues: BTreeMap<u64, Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Writes submitted and not yet waited for.
    outstanding: Vec<Arc<Tracker>>,
    abort: Arc<AtomicBool>,
    pub(crate) notices: Vec<String>,
    /// Test-only: each bio gets its own copy of the caller's (changing)
    /// source, taken as it is queued, instead of the shared bounce pages:
    /// what devices reading the caller's memory at their own time would
    /// see. Shows the checks catch what bounce copies prevent.
    #[cfg(test)]
    pub(crate) no_bounce: bool,
    /// Test-only: fail the bio that writes this logical address.
    #[cfg(test)]
    pub(crate) fail_at: Option<u64>,
}

impl DirectWriter {
    /// Open every device of `vol` for direct writes and start its threads.
    pub(crate) fn new(vol: &Volume, max_bio: usize) -> Result<DirectWriter> {
        let abort = Arc::new(AtomicBool::new(false));
        let mut w = DirectWriter {
            max_bio: PAGE,
            queues: BTreeMap::new(),
            workers: Vec::new(),
            outstanding: Vec::new(),
            abort: abort.clone(),
            notices: Vec::new(),
            #[cfg(test)]
            no_bounce: false,
            #[cfg(test)]
            fail_at: None,
        };
        for (devid, d) in &vol.devices {
            let flags = rustix::fs::OFlags::RDWR | rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::CLOEXEC;
            let direct = match rustix::fs::open(&d.path, flags, rustix::fs::Mode::empty()) {
                Ok(fd) => Some(File::from(fd)),
                Err(e) => {
                    w.notices.push(format!("{}: O_DIRECT not available ({e}); writing through the page cache", d.path.display()));
                    None
                }
            };
            d.forget_blank();
            let plain = d.file.try_clone().map_err(|e| Error::io(&d.path, "dup", e))?;
            let files = Arc::new(DeviceFiles {
                path: d.path.clone(),
                direct,
                plain,
                #[cfg(test)]
                fault: d.fault.get().cloned(),
            });
            let (tx, rx) = channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..WORKERS_PER_DEVICE {
                let (files, rx, abort) = (files.clone(), rx.clone(), abort.clone());
                let h = std::thread::Builder::new()
                    .name(format!("bio-dev{devid}"))
                    .spawn(move || serve(&files, &rx, &abort))
                    .map_err(|e| Error::io(&d.path, "start a bio thread", e))?;
                w.workers.push(h);
            }
            w.queues.insert(*devid, tx);
        }
        w.set_max_bio(max_bio);
        Ok(w)
    }

    /// Bios of at most `max_bio` bytes from now on, in whole pages.
    pub(crate) fn set_max_bio(&mut self, max_bio: usize) {
        self.max_bio = (max_bio.max(PAGE) / PAGE).saturating_mul(PAGE);
    }

    /// Split [logical, logical+len) into bios for every copy.
    pub(crate) fn plan(&self, vol: &Volume, logical: u64, len: usize) -> Result<Vec<Bio>> {
        let mut out = Vec::new();
        for m in 0..vol.num_copies(logical)? {
            for segment in vol.copy_segments(logical, len, m)? {
                out.extend(segment_bios(logical, segment, m, self.max_bio)?);
            }
        }
        Ok(out)
    }

    /// Queue the bios writing `pages[span]` (engine-owned bytes, a whole
    /// number of sectors) at `logical` on every copy, and return at once:
    /// the pages stay alive until the last of them is done. `live` (tests
    /// only) is the caller's source and where it starts in the pages.
    pub(crate) fn submit(
        &mut self,
        vol: &Volume,
        logical: u64,
        pages: &Arc<Bounce>,
        span: Range<usize>,
        hook: Option<&BioHook>,
        live: Option<Live<'_>>,
    ) -> Result<Vec<BioRecord>> {
        let _ = &live;
        // A write whose bio failed fails the next submit at once: a long
        // streaming write stops there instead of at its next commit.
        if self.outstanding.iter().any(|t| t.failed()) {
            return Err(self.finish().err().unwrap_or_else(|| Error::Invalid("a bio failed".into())));
        }
        let bios = self.plan(vol, logical, span.len())?;
        // Finished writes need no more waiting for.
        self.outstanding.retain(|t| !t.succeeded());
        let tracker = Arc::new(Tracker::default());
        tracker.add(bios.len());
        self.outstanding.push(tracker.clone());
        for bio in &bios {
            let at = span.start.checked_add(bio.buf_off).ok_or_else(|| overflow(bio.rec.logical))?;
            let end = at.checked_add(bio.buf_len).ok_or_else(|| overflow(bio.rec.logical))?;
            let (pages, span) = (pages.clone(), at..end);
            #[cfg(test)]
            let (pages, span) = match live {
                Some(live) if self.no_bounce => live.snapshot(&pages, span),
                _ => (pages, span),
            };
            if let Some(h) = hook {
                h.call(&bio.rec, BioStage::Submitted);
            }
            let job = Job {
                pages,
                span,
                rec: bio.rec.clone(),
                tracker: tracker.clone(),
                hook: hook.cloned(),
                #[cfg(test)]
                fail: self.fail_at.is_some_and(|f| f.checked_sub(bio.rec.logical).is_some_and(|d| d < bio.rec.len)),
                completed: false,
            };
            let sent = match self.queues.get(&bio.rec.devid) {
                Some(queue) => queue.send(job).map_err(|unsent| unsent.0),
                None => Err(job),
            };
            if let Err(job) = sent {
                // No threads for its device: the bio fails (and so the write).
                job.complete(Err(Error::Devices(format!("devid {}: no bio threads", bio.rec.devid))));
            }
        }
        Ok(bios.into_iter().map(|b| b.rec).collect())
    }

    /// Wait until every bio submitted so far finished on every mirror; the
    /// first error of any of them. Flushing is the commit's job (it fsyncs
    /// every image before the superblocks).
    pub(crate) fn finish(&mut self) -> Result<()> {
        let mut first = Ok(());
        for t in self.outstanding.drain(..) {
            if let Err(e) = t.wait() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for DirectWriter {
    /// An abandoned writer (its transaction dropped) skips what is queued,
    /// waits for the bios already at a device, and stops its threads.
    fn drop(&mut self) {
        self.abort.store(true, Ordering::Relaxed);
        self.queues.clear();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Volume {
    /// Write `buf` at `logical` to every copy through the page cache, in bios
    /// of at most `max_bio` bytes (at least a page) that never cross a
    /// stripe, each copy by its own thread: the copies live on different
    /// images (or far apart on one), and the host writes them in parallel.
    /// Writeback of each piece starts at once (see
    /// [`super::Device::start_writeback`]); the commit flushes.
    pub(crate) fn write_bios(&self, logical: u64, buf: &[u8], max_bio: usize, hook: Option<&BioHook>) -> Result<Vec<BioRecord>> {
        let copies = self.num_copies(logical)?;
        let write_copy = |m: usize| -> Result<Vec<BioRecord>> {
            let mut bios = Vec::new();
            for segment in self.copy_segments(logical, buf.len(), m)? {
                let (_, addr, n) = segment;
                let dev = self.device(addr.devid)?;
                for bio in segment_bios(logical, segment, m, max_bio)? {
                    let stage = |stage| {
                        if let Some(h) = hook {
                            h.call(&bio.rec, stage)
                        }
                    };
                    let data = bio
                        .buf_off
                        .checked_add(bio.buf_len)
                        .and_then(|end| buf.get(bio.buf_off..end))
                        .ok_or_else(|| overflow(bio.rec.logical))?;
                    stage(BioStage::Submitted);
                    let r = dev.write_all_at(bio.rec.physical, data);
                    stage(if r.is_ok() { BioStage::Completed } else { BioStage::Failed });
                    r?;
                    bios.push(bio.rec);
                }
                dev.start_writeback(addr.physical, u64_of(n));
            }
            Ok(bios)
        };
        let results: Vec<Result<Vec<BioRecord>>> = if copies == 1 {
            vec![write_copy(0)]
        } else {
            std::thread::scope(|s| {
                // Each copy on a thread of its own; one the host refuses to
                // start is that copy's error.
                let hs: Vec<_> = (0..copies).map(|m| crate::threads::spawn_scoped(s, "mirror-writer", move || write_copy(m))).collect();
                hs.into_iter().map(|h| h.and_then(|h| crate::threads::join(h, "mirror writer"))).collect()
            })
        };
        let mut all = Vec::new();
        for r in results {
            all.extend(r?);
        }
        Ok(all)
    }
}
