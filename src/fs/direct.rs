//! Direct writes that never trust the caller's pages (the kernel series "btrfs:
//! do not trust direct IO page at all"): the caller's bytes are copied once
//! into 4096-aligned bounce pages the engine owns, the checksum is computed
//! from those pages, and every mirror is written from the same pages. A caller
//! that keeps changing its buffer during the write can therefore only change
//! *which* bytes get written, never make mirrors or checksums disagree.
//!
//! The request is split into bios of at most `max_bio` bytes that never cross
//! a stripe unit (64 KiB for RAID0/10) or chunk boundary; one bio per copy.
//! Bios are issued by a few worker threads and tracked together by a
//! [`Tracker`] (pending count + first error): the write completes only when
//! every bio finished on every mirror, and one failed bio fails the whole
//! write — the caller then commits none of its file extents.
//!
//! Image files are reopened with O_DIRECT where the host filesystem allows
//! (tmpfs does not: then the ordinary descriptor is used and a notice given).
//! Unaligned heads and tails are read-modify-written into the bounce pages
//! from the file's current content (the kernel falls back to buffered IO for
//! them; the effect on disk is the same: whole sectors from engine-owned memory).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::{Error, Result};
use crate::fs::write::BioRecord;
use crate::volumes::Volume;

pub const PAGE: usize = 4096;

/// One bounce page, aligned for O_DIRECT.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C, align(4096))]
pub struct Page([u8; PAGE]);

/// Engine-owned, page-aligned memory.
pub struct Bounce {
    pages: Vec<Page>,
    len: usize,
}

impl Bounce {
    pub fn zeroed(len: usize) -> Bounce {
        Bounce { pages: vec![Page([0; PAGE]); len.div_ceil(PAGE)], len }
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

/// Issues the bios of direct writes.
pub struct DirectWriter<'v> {
    vol: &'v Volume,
    pub max_bio: usize,
    /// Per devid: a descriptor opened with O_DIRECT, when the host allowed it.
    direct_files: BTreeMap<u64, File>,
    pub notices: Vec<String>,
    /// Test-only: write each bio straight from the caller's (changing) source
    /// instead of the bounce pages, to show the checks catch what bounce
    /// copies prevent.
    #[cfg(test)]
    pub no_bounce: bool,
    /// Test-only: fail the bio that writes this logical address.
    #[cfg(test)]
    pub fail_at: Option<u64>,
}

impl<'v> DirectWriter<'v> {
    pub fn new(vol: &'v Volume, max_bio: usize) -> DirectWriter<'v> {
        let mut direct_files = BTreeMap::new();
        let mut notices = Vec::new();
        for (devid, d) in &vol.devices {
            let flags = rustix::fs::OFlags::RDWR | rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::CLOEXEC;
            match rustix::fs::open(&d.path, flags, rustix::fs::Mode::empty()) {
                Ok(fd) => {
                    direct_files.insert(*devid, File::from(fd));
                }
                Err(e) => notices.push(format!("{}: O_DIRECT not available ({e}); writing through the page cache", d.path.display())),
            }
        }
        DirectWriter {
            vol,
            max_bio: max_bio.max(PAGE) / PAGE * PAGE,
            direct_files,
            notices,
            #[cfg(test)]
            no_bounce: false,
            #[cfg(test)]
            fail_at: None,
        }
    }

    /// Split [logical, logical+len) into bios for every copy.
    pub fn plan(&self, logical: u64, len: usize) -> Result<Vec<Bio>> {
        let copies = self.vol.num_copies(logical)?;
        let mut out = Vec::new();
        for m in 0..copies {
            for (off, addr, n) in self.vol.copy_segments(logical, len, m)? {
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

    fn issue(&self, bio: &Bio, data: &[u8]) -> Result<()> {
        #[cfg(test)]
        if self.fail_at.is_some_and(|f| f >= bio.rec.logical && f < bio.rec.logical + bio.rec.len) {
            return Err(Error::io("<test>", "injected bio failure", std::io::Error::other("injected")));
        }
        let dev = self.vol.device(bio.rec.devid)?;
        // O_DIRECT wants the file offset, the length and the memory aligned.
        let aligned = bio.rec.physical % PAGE as u64 == 0 && data.len() % PAGE == 0 && data.as_ptr() as usize % PAGE == 0;
        match self.direct_files.get(&bio.rec.devid) {
            Some(f) if aligned => f
                .write_all_at(data, bio.rec.physical)
                .map_err(|e| Error::io(&dev.path, format!("O_DIRECT write {} bytes at {}", data.len(), bio.rec.physical), e)),
            _ => dev.write_all_at(bio.rec.physical, data),
        }
    }

    /// Write `bounce` — engine-owned bytes, sector-aligned length — at
    /// `logical` to every copy and wait for all bios. `live` (tests only) is
    /// the caller's source, read at bio time when the bounce copy is
    /// switched off.
    pub fn write(&self, logical: u64, bounce: &[u8], live: Option<(&dyn Source, usize)>) -> Result<Vec<BioRecord>> {
        let bios = self.plan(logical, bounce.len())?;
        let tracker = Tracker::default();
        tracker.add(bios.len());
        let next = AtomicUsize::new(0);
        // Several bios in flight per device: O_DIRECT writes are synchronous,
        // and one at a time would leave the device idle between them.
        let workers = (self.vol.devices.len() * 4).clamp(4, 16);
        let _ = &live;
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(bio) = bios.get(i) else { break };
                    let span = bio.buf_off..bio.buf_off + bio.rec.len as usize;
                    #[cfg(test)]
                    if self.no_bounce {
                        if let Some((src, base)) = live {
                            // What a device DMA-ing from the caller's page would see.
                            let mut b = Bounce::zeroed(span.len());
                            b.bytes_mut().copy_from_slice(&bounce[span.clone()]);
                            let lo = span.start.max(base);
                            let hi = span.end.min(base + src.len());
                            if lo < hi {
                                src.copy_to(lo - base, &mut b.bytes_mut()[lo - span.start..hi - span.start]);
                            }
                            tracker.complete(self.issue(bio, b.bytes()));
                            continue;
                        }
                    }
                    tracker.complete(self.issue(bio, &bounce[span]));
                });
            }
        });
        tracker.wait()?;
        // Flushing is the commit's job (it fsyncs every image before the superblock).
        Ok(bios.into_iter().map(|b| b.rec).collect())
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
            let r = tx.write_direct(FS_TREE_OBJECTID, ino, 0, &buf, WriteOpts { max_bio: 64 << 10 }, &mut report);
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
        let r = tx.write_direct(FS_TREE_OBJECTID, ino, 0, &Plain(&data), WriteOpts::default(), &mut report);
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
}
