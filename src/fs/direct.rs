//! Direct writes that never trust the caller's pages (the kernel series "btrfs:
//! do not trust direct IO page at all"): the caller's bytes are copied once
//! into 4096-aligned bounce pages the engine owns, the checksum is computed
//! from those pages, and every mirror is written from the same pages. A caller
//! that keeps changing its buffer during the write can therefore only change
//! *which* bytes get written, never make mirrors or checksums disagree.
//!
//! The request is split into bios of at most `max_bio` bytes that never cross
//! a stripe unit (64 KiB for RAID0/10) or chunk boundary; one bio per copy.
//! Each device has a queue of its own, served in order by its own threads,
//! so every device always has work: O_DIRECT writes are synchronous, and a
//! device that waited for its slower partner after every step would sit idle
//! (measured: two image files written this way take as long as two
//! independent `dd oflag=direct`; with a barrier per 16 MiB step, 30 % longer).
//!
//! The bios of one write are tracked together by a [`Tracker`] (pending count +
//! first error). [`DirectWriter::submit`] queues them and returns; a caller
//! with a borrowed buffer waits for them at once, a streaming writer that
//! handed over its pages lets them run while it records the step and reads
//! the next one. Every write is waited for ([`DirectWriter::finish`]) before
//! its transaction may read that data back or commit. One failed bio fails the write it belongs to; the
//! transaction then commits nothing (the superblocks are never written), so
//! the file keeps its previous contents.
//!
//! Image files are reopened with O_DIRECT where the host filesystem allows
//! (tmpfs does not: then the ordinary descriptor is used and a notice given).
//! Unaligned heads and tails are read-modify-written into the bounce pages
//! from the file's current content (the kernel falls back to buffered IO for
//! them; the effect on disk is the same: whole sectors from engine-owned memory).

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
use crate::fs::write::{BioHook, BioRecord, BioStage};
use crate::volumes::Volume;

pub const PAGE: usize = 4096;

/// Threads per device issuing its bios. Synchronous O_DIRECT writes into a
/// sparse image on ext4 are serialized by the host inode's lock anyway
/// (block allocation); a second thread keeps a block device busy while the
/// first one's write completes.
const WORKERS_PER_DEVICE: usize = 2;

/// One bounce page, aligned for O_DIRECT.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C, align(4096))]
pub struct Page([u8; PAGE]);

/// Engine-owned, page-aligned memory. Pages taken from a [`PagePool`] go
/// back to it when dropped, wherever that happens: after a buffered write,
/// or in the device thread that completes the last bio writing them.
pub struct Bounce {
    pages: Vec<Page>,
    len: usize,
    home: Option<Sender<Bounce>>,
}

impl Bounce {
    pub fn zeroed(len: usize) -> Bounce {
        Bounce { pages: vec![Page([0; PAGE]); len.div_ceil(PAGE)], len, home: None }
    }
    pub fn bytes(&self) -> &[u8] {
        &self.pages.as_bytes()[..self.len]
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.pages.as_mut_bytes()[..self.len]
    }
    /// Bytes the pages hold.
    pub fn capacity(&self) -> usize {
        self.pages.len() * PAGE
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Use the first `len` bytes (at most the capacity), the rest of the last
    /// page zeroed: a reused buffer must not carry old bytes past its end.
    pub fn set_len(&mut self, len: usize) {
        let len = len.min(self.capacity());
        let page_end = len.div_ceil(PAGE) * PAGE;
        self.pages.as_mut_bytes()[len..page_end].fill(0);
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
pub struct PagePool {
    free: Receiver<Bounce>,
}

impl PagePool {
    pub fn new(count: usize, len: usize) -> PagePool {
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
    pub fn take(&self) -> Option<Bounce> {
        self.free.recv().ok()
    }
}

/// Where a direct write takes its bytes from: something other threads may be
/// changing while the write runs (a shared buffer).
pub trait Source: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy `dst.len()` bytes starting at `off` as they are right now.
    fn copy_to(&self, off: usize, dst: &mut [u8]);
}

/// An ordinary byte slice nobody else changes.
pub struct Plain<'a>(pub &'a [u8]);

impl Source for Plain<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn copy_to(&self, off: usize, dst: &mut [u8]) {
        dst.copy_from_slice(&self.0[off..off + dst.len()]);
    }
}

/// A buffer several threads may read and write at once (for callers that
/// share memory with a writer, and for the tests that prove bounce copies).
pub struct SharedBuf(pub Vec<std::sync::atomic::AtomicU8>);

impl SharedBuf {
    pub fn new(init: &[u8]) -> Self {
        SharedBuf(init.iter().map(|&b| std::sync::atomic::AtomicU8::new(b)).collect())
    }
}

impl Source for SharedBuf {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn copy_to(&self, off: usize, dst: &mut [u8]) {
        for (d, s) in dst.iter_mut().zip(&self.0[off..]) {
            *d = s.load(Ordering::Relaxed);
        }
    }
}

/// Completion tracking for the bios of one write.
#[derive(Default)]
pub struct Tracker {
    pending: AtomicUsize,
    first_error: Mutex<Option<Error>>,
    all_done: Condvar,
    done_lock: Mutex<()>,
}

impl Tracker {
    pub fn add(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::SeqCst);
    }
    /// One bio finished (on one mirror).
    pub fn complete(&self, r: Result<()>) {
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
    pub fn wait(&self) -> Result<()> {
        let mut g = self.done_lock.lock().map_err(|_| Error::Invalid("tracker poisoned".into()))?;
        while self.pending.load(Ordering::SeqCst) != 0 {
            g = self.all_done.wait(g).map_err(|_| Error::Invalid("tracker poisoned".into()))?;
        }
        drop(g);
        match self.first_error.lock().map_err(|_| Error::Invalid("tracker poisoned".into()))?.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// One planned bio.
#[derive(Clone, Debug)]
pub struct Bio {
    /// Offset into the bounce buffer.
    pub buf_off: usize,
    pub rec: BioRecord,
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
        let aligned = physical % PAGE as u64 == 0 && data.len() % PAGE == 0 && data.as_ptr() as usize % PAGE == 0;
        match &self.direct {
            Some(f) if aligned => f
                .write_all_at(data, physical)
                .map_err(|e| Error::io(&self.path, format!("O_DIRECT write {} bytes at {physical}", data.len()), e)),
            _ => self.plain.write_all_at(data, physical).map_err(|e| Error::io(&self.path, format!("write {} bytes at {physical}", data.len()), e)),
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
            files.write(&job.pages.bytes()[job.span.clone()], job.rec.physical)
        };
        if let Some(h) = &job.hook {
            h.call(&job.rec, if r.is_ok() { BioStage::Completed } else { BioStage::Failed });
        }
        job.complete(r);
    }
}

/// Issues the bios of direct writes, on threads of its own per device.
pub struct DirectWriter {
    max_bio: usize,
    queues: BTreeMap<u64, Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Writes submitted and not yet waited for.
    outstanding: Vec<Arc<Tracker>>,
    abort: Arc<AtomicBool>,
    pub notices: Vec<String>,
    /// Test-only: each bio gets its own copy of the caller's (changing)
    /// source, taken as it is queued, instead of the shared bounce pages:
    /// what devices reading the caller's memory at their own time would
    /// see. Shows the checks catch what bounce copies prevent.
    #[cfg(test)]
    pub no_bounce: bool,
    /// Test-only: fail the bio that writes this logical address.
    #[cfg(test)]
    pub fail_at: Option<u64>,
}

impl DirectWriter {
    /// Open every device of `vol` for direct writes and start its threads.
    pub fn new(vol: &Volume, max_bio: usize) -> Result<DirectWriter> {
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
    pub fn set_max_bio(&mut self, max_bio: usize) {
        self.max_bio = max_bio.max(PAGE) / PAGE * PAGE;
    }

    /// Split [logical, logical+len) into bios for every copy.
    pub fn plan(&self, vol: &Volume, logical: u64, len: usize) -> Result<Vec<Bio>> {
        let copies = vol.num_copies(logical)?;
        let mut out = Vec::new();
        for m in 0..copies {
            for (off, addr, n) in vol.copy_segments(logical, len, m)? {
                let mut done = 0;
                while done < n {
                    let k = (n - done).min(self.max_bio);
                    out.push(Bio {
                        buf_off: off + done,
                        rec: BioRecord {
                            logical: logical + (off + done) as u64,
                            len: k as u64,
                            devid: addr.devid,
                            physical: addr.physical + done as u64,
                            mirror: m,
                        },
                    });
                    done += k;
                }
            }
        }
        Ok(out)
    }

    /// Queue the bios writing `pages[span]` (engine-owned bytes, a whole
    /// number of sectors) at `logical` on every copy, and return at once:
    /// the pages stay alive until the last of them is done. `live` (tests
    /// only) is the caller's source and where it starts in the pages.
    pub fn submit(
        &mut self,
        vol: &Volume,
        logical: u64,
        pages: &Arc<Bounce>,
        span: Range<usize>,
        hook: Option<&BioHook>,
        live: Option<(&dyn Source, usize)>,
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
            let at = span.start + bio.buf_off;
            let (pages, span) = (pages.clone(), at..at + bio.rec.len as usize);
            #[cfg(test)]
            let (pages, span) = match live {
                Some((src, base)) if self.no_bounce => {
                    // What a device DMA-ing from the caller's page would see.
                    let mut b = Bounce::zeroed(span.len());
                    b.bytes_mut().copy_from_slice(&pages.bytes()[span.clone()]);
                    let lo = span.start.max(base);
                    let hi = span.end.min(base + src.len());
                    if lo < hi {
                        src.copy_to(lo - base, &mut b.bytes_mut()[lo - span.start..hi - span.start]);
                    }
                    let n = b.len();
                    (Arc::new(b), 0..n)
                }
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
                fail: self.fail_at.is_some_and(|f| f >= bio.rec.logical && f < bio.rec.logical + bio.rec.len),
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
    pub fn finish(&mut self) -> Result<()> {
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

#[cfg(test)]
mod tests {
    //! The proof that bounce pages matter: a direct write from a buffer that
    //! another thread keeps changing must leave every mirror identical and
    //! every checksum valid; with the bounce copy switched off, the same
    //! harness must see divergence.
    use super::*;
    use crate::format::*;
    use crate::fs::transaction::Transaction;
    use crate::fs::write::{WriteOpts, WriteReport};
    use crate::fs::{Filesystem, InodeId};
    use crate::volumes::OpenOptions;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicBool;

    fn mkfs_raid1() -> Option<(tempfile::TempDir, Vec<PathBuf>)> {
        crate::fs::testutil::mkfs_btrfs(2, &["-d", "raid1", "-m", "raid1"])
    }

    /// Returns (mirror mismatches, csum mismatches) over the written file.
    fn run(no_bounce: bool, nodatasum: bool) -> Option<(usize, usize)> {
        let (_tmp, imgs) = mkfs_raid1()?;
        let opts = OpenOptions { image: imgs[0].clone(), devices: imgs.clone(), degraded: false, writable: true, ..Default::default() };
        let mut tx = Transaction::begin(Filesystem::open(&opts).unwrap()).unwrap();
        tx.direct_no_bounce = no_bounce;
        let flags = if nodatasum { INODE_NODATASUM } else { 0 };
        let ino = tx.create(FS_TREE_OBJECTID, FIRST_FREE_OBJECTID, b"victim", S_IFREG | 0o644, flags).unwrap();
        let len = 8 << 20;
        let init: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let buf = SharedBuf::new(&init);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut round = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    round = round.wrapping_add(1);
                    for (i, b) in buf.0.iter().enumerate().step_by(512) {
                        b.store(round ^ i as u8, Ordering::Relaxed);
                    }
                }
            });
            let mut report = WriteReport::default();
            let r = tx.write_direct(FS_TREE_OBJECTID, ino, 0, &buf, &WriteOpts { max_bio: 64 << 10, on_bio: None, compress: None }, &mut report);
            stop.store(true, Ordering::Relaxed);
            r.unwrap();
        });
        tx.commit().unwrap();
        let fs = Filesystem::open(&OpenOptions { writable: false, ..opts }).unwrap();
        let vol = fs.volume();
        let (mut mirror_bad, mut csum_bad) = (0, 0);
        for (_, fe) in fs.file_extents(InodeId { subvol: FS_TREE_OBJECTID, ino }).unwrap() {
            let items::FileExtentKind::Regular { disk_bytenr, disk_num_bytes, .. } = fe.kind else { panic!("inline") };
            let csums = fs.data_csums(disk_bytenr, disk_num_bytes).unwrap();
            for (i, want) in csums.iter().enumerate() {
                let at = disk_bytenr + (i * PAGE) as u64;
                let mut c0 = vec![0u8; PAGE];
                let mut c1 = vec![0u8; PAGE];
                vol.read_copy(at, &mut c0, 0).unwrap();
                vol.read_copy(at, &mut c1, 1).unwrap();
                if c0 != c1 {
                    eprintln!("mirror mismatch at logical {at} (extent {disk_bytenr}+{disk_num_bytes}, sector {i})");
                    mirror_bad += 1;
                }
                match want {
                    Some(w) if !nodatasum && (!fs.csum.matches(&fs.csum.compute(&c0), w) || !fs.csum.matches(&fs.csum.compute(&c1), w)) => {
                        csum_bad += 1;
                    }
                    Some(_) if !nodatasum => {}
                    None if !nodatasum => panic!("missing csum at {at}"),
                    Some(_) => panic!("nodatasum file has csums"),
                    None => {}
                }
            }
        }
        Some((mirror_bad, csum_bad))
    }

    use crate::format::items;

    #[test]
    fn direct_write_from_changing_buffer_keeps_mirrors_and_csums() {
        for nodatasum in [false, true] {
            let Some((m, c)) = run(false, nodatasum) else { return };
            assert_eq!((m, c), (0, 0), "nodatasum={nodatasum}: mirrors or csums diverged with bounce pages");
        }
    }

    #[test]
    fn without_bounce_the_check_detects_divergence() {
        let Some((m, c)) = run(true, false) else { return };
        eprintln!("without bounce: {m} sectors differ between mirrors, {c} fail their csum");
        assert!(m + c > 0, "the harness could not see the race it exists to catch");
    }

    #[test]
    fn failed_bio_commits_nothing() {
        let Some((_tmp, imgs)) = mkfs_raid1() else { return };
        let opts = OpenOptions { image: imgs[0].clone(), devices: imgs.clone(), degraded: false, writable: true, ..Default::default() };
        let before: Vec<Vec<u8>> = imgs.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let mut tx = Transaction::begin(Filesystem::open(&opts).unwrap()).unwrap();
        let ino = tx.create(FS_TREE_OBJECTID, FIRST_FREE_OBJECTID, b"f", S_IFREG | 0o644, 0).unwrap();
        // Fail every bio: any logical address matches nothing, so inject at the first data address.
        let (probe, _) = tx.store.alloc_data(4096).unwrap();
        tx.direct_fail_at = Some(probe + 4096 * 3);
        let data = vec![7u8; 1 << 20];
        let mut report = WriteReport::default();
        let r = tx.write_direct(FS_TREE_OBJECTID, ino, 0, &Plain(&data), &WriteOpts::default(), &mut report);
        assert!(r.is_err(), "injected failure not reported");
        drop(tx); // abort
        // Superblocks untouched: the filesystem is as before.
        for (p, b) in imgs.iter().zip(&before) {
            let now = std::fs::read(p).unwrap();
            assert_eq!(&now[65536..65536 + 4096], &b[65536..65536 + 4096], "superblock changed");
        }
        let fs = Filesystem::open(&OpenOptions { writable: false, ..opts }).unwrap();
        assert!(fs.lookup(fs.root_dir(), b"f").unwrap().is_none());
    }

    /// A bio thread that panics (here in the -v hook, which runs on it) fails
    /// the write with an error instead of leaving it waiting for the bio
    /// forever; nothing is committed.
    #[test]
    fn a_panicking_bio_thread_fails_the_write() {
        let Some((_tmp, imgs)) = mkfs_raid1() else { return };
        let opts = OpenOptions { image: imgs[0].clone(), devices: imgs.clone(), degraded: false, writable: true, ..Default::default() };
        let (tx_done, rx_done) = std::sync::mpsc::channel();
        let opts2 = opts.clone();
        std::thread::spawn(move || {
            let mut tx = Transaction::begin(Filesystem::open(&opts2).unwrap()).unwrap();
            let ino = tx.create(FS_TREE_OBJECTID, FIRST_FREE_OBJECTID, b"f", S_IFREG | 0o644, 0).unwrap();
            let hook = BioHook(Arc::new(|rec: &BioRecord, stage| {
                if stage == BioStage::Completed && rec.devid == 2 {
                    panic!("injected bio thread panic");
                }
            }));
            let wopts = WriteOpts { on_bio: Some(hook), ..WriteOpts::default() };
            let data = vec![7u8; 4 << 20];
            let mut report = WriteReport::default();
            let r = tx.write_direct(FS_TREE_OBJECTID, ino, 0, &Plain(&data), &wopts, &mut report).and_then(|_| tx.commit());
            let _ = tx_done.send(r.map_err(|e| e.to_string()));
        });
        let r = rx_done.recv_timeout(std::time::Duration::from_secs(60)).expect("the write hung on a bio whose thread panicked");
        let e = r.expect_err("a bio thread panic must fail the write");
        assert!(e.contains("dropped unwritten"), "{e}");
        let fs = Filesystem::open(&OpenOptions { writable: false, ..opts }).unwrap();
        assert!(fs.lookup(fs.root_dir(), b"f").unwrap().is_none());
    }

    /// Streamed steps (pages handed over) only queue their bios: a bio of an
    /// early step that fails makes a later step or the commit fail, and
    /// nothing is committed; the pages of every step go back to their pool.
    #[test]
    fn failed_bio_of_a_queued_step_fails_the_commit() {
        let Some((_tmp, imgs)) = mkfs_raid1() else { return };
        let opts = OpenOptions { image: imgs[0].clone(), devices: imgs.clone(), degraded: false, writable: true, ..Default::default() };
        let supers = |imgs: &[PathBuf]| -> Vec<Vec<u8>> { imgs.iter().map(|p| std::fs::read(p).unwrap()[65536..65536 + 4096].to_vec()).collect() };
        let before = supers(&imgs);
        let step = 4 << 20;
        let pool = PagePool::new(2, step);
        // Where the first step's extent goes: the allocator is deterministic,
        // so a transaction dropped after asking gives the address to fail.
        let first = {
            let mut tx = Transaction::begin(Filesystem::open(&opts).unwrap()).unwrap();
            tx.store.alloc_data(step as u64).unwrap().0
        };
        let mut tx = Transaction::begin(Filesystem::open(&opts).unwrap()).unwrap();
        let ino = tx.create(FS_TREE_OBJECTID, FIRST_FREE_OBJECTID, b"f", S_IFREG | 0o644, 0).unwrap();
        tx.direct_fail_at = Some(first + 4096 * 2);
        let mut report = WriteReport::default();
        let mut failed = None;
        for k in 0..6u64 {
            let mut pages = pool.take().expect("pages came back to the pool");
            pages.set_len(step);
            pages.bytes_mut().fill(k as u8 + 1);
            if let Err(e) = tx.write_owned(FS_TREE_OBJECTID, ino, k * step as u64, pages, true, &WriteOpts::default(), &mut report) {
                failed = Some(e);
                break;
            }
        }
        let r = match failed {
            Some(e) => {
                drop(tx); // abort
                Err(e)
            }
            None => tx.commit(),
        };
        let e = r.expect_err("a failed bio must fail the write or its commit");
        assert!(e.to_string().contains("injected"), "{e}");
        assert_eq!(supers(&imgs), before, "superblocks changed");
        let fs = Filesystem::open(&OpenOptions { writable: false, ..opts.clone() }).unwrap();
        assert!(fs.lookup(fs.root_dir(), b"f").unwrap().is_none());
        drop(fs);

        // The same steps without a fault: every byte lands on both mirrors.
        let mut tx = Transaction::begin(Filesystem::open(&opts).unwrap()).unwrap();
        let ino = tx.create(FS_TREE_OBJECTID, FIRST_FREE_OBJECTID, b"f", S_IFREG | 0o644, 0).unwrap();
        for k in 0..6u64 {
            let mut pages = pool.take().expect("pages came back to the pool");
            pages.set_len(step);
            pages.bytes_mut().fill(k as u8 + 1);
            tx.write_owned(FS_TREE_OBJECTID, ino, k * step as u64, pages, true, &WriteOpts::default(), &mut report).unwrap();
        }
        tx.commit().unwrap();
        let fs = Filesystem::open(&OpenOptions { writable: false, ..opts }).unwrap();
        let id = InodeId { subvol: FS_TREE_OBJECTID, ino };
        for (off, fe) in fs.file_extents(id).unwrap() {
            let items::FileExtentKind::Regular { disk_bytenr, disk_num_bytes, .. } = fe.kind else { panic!("inline") };
            let mut c0 = vec![0u8; disk_num_bytes as usize];
            let mut c1 = c0.clone();
            fs.volume().read_copy(disk_bytenr, &mut c0, 0).unwrap();
            fs.volume().read_copy(disk_bytenr, &mut c1, 1).unwrap();
            assert!(c0 == c1, "mirrors differ in the extent at file offset {off}");
            for (i, sector) in c0.chunks(4096).enumerate() {
                let want = ((off + (i * 4096) as u64) / step as u64) as u8 + 1;
                assert!(sector.iter().all(|&b| b == want), "file offset {off} sector {i}");
            }
        }
    }
}
