//! Buffered writes through a per-inode page cache with stable pages.
//!
//! [`CachedFile::write_at`] takes `&self` and may be called from many threads.
//! [`CachedFile::writeback`] seals the dirty pages (marks them under
//! writeback and keeps a reference to their bytes); until every mirror has
//! those bytes, a writer touching a sealed page blocks. The checksum and
//! every mirror therefore come from the same sealed bytes — the kernel's
//! "stable writes" for every btrfs inode.
//!
//! The cache does not read the file: each page remembers which of its bytes
//! were written (a bitmap), and writeback hands only those byte runs to
//! [`Transaction::write_at`], which merges unaligned edges with the file's
//! current content. Reads are not served from the cache.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::fs::txn::Transaction;
use crate::fs::txn::{WriteOpts, WriteReport};
use crate::fs::InodeId;

const PAGE: usize = 4096;

/// A page sealed for writeback: index, its bytes, the dirty-byte bitmap taken.
type Sealed = (u64, Arc<Vec<u8>>, Vec<u64>);

struct Page {
    /// Shared with writeback while sealed; copied on write otherwise (never
    /// shared then, so `make_mut` does not copy).
    data: Arc<Vec<u8>>,
    /// Bytes written since the page was last sealed, one bit per byte.
    dirty: Vec<u64>,
    /// Under writeback: writers must wait.
    sealed: bool,
}

impl Page {
    fn new() -> Page {
        Page { data: Arc::new(vec![0; PAGE]), dirty: vec![0; PAGE / 64], sealed: false }
    }
    fn is_dirty(&self) -> bool {
        self.dirty.iter().any(|&w| w != 0)
    }
    fn bit(mask: &[u64], i: usize) -> bool {
        mask.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// A regular file open for buffered writing in one transaction.
pub struct CachedFile {
    id: InodeId,
    pages: Mutex<BTreeMap<u64, Page>>,
    unsealed: Condvar,
    /// Pages writers had to wait for (for tests and statistics).
    pub(crate) waits: std::sync::atomic::AtomicU64,
}

fn poisoned() -> Error {
    Error::Internal("page cache lock poisoned".into())
}

impl CachedFile {
    /// The cache of regular file `id`.
    pub fn new(id: InodeId) -> CachedFile {
        CachedFile { id, pages: Mutex::new(BTreeMap::new()), unsealed: Condvar::new(), waits: Default::default() }
    }

    /// Copy `buf` into the cache at file offset `off`, waiting for pages under writeback.
    pub fn write_at(&self, off: u64, buf: &[u8]) -> Result<()> {
        let mut done = 0usize;
        let mut g = self.pages.lock().map_err(|_| poisoned())?;
        while done < buf.len() {
            let pos = off + done as u64;
            let idx = pos / PAGE as u64;
            let in_page = (pos % PAGE as u64) as usize;
            let n = (PAGE - in_page).min(buf.len() - done);
            g = self.wait_unsealed(g, idx)?;
            let page = g.entry(idx).or_insert_with(Page::new);
            Arc::make_mut(&mut page.data)[in_page..in_page + n].copy_from_slice(&buf[done..done + n]);
            for i in in_page..in_page + n {
                page.dirty[i / 64] |= 1 << (i % 64);
            }
            done += n;
        }
        Ok(())
    }

    fn wait_unsealed<'a>(&self, mut g: MutexGuard<'a, BTreeMap<u64, Page>>, idx: u64) -> Result<MutexGuard<'a, BTreeMap<u64, Page>>> {
        let mut waited = false;
        while g.get(&idx).is_some_and(|p| p.sealed) {
            waited = true;
            g = self.unsealed.wait(g).map_err(|_| poisoned())?;
        }
        if waited {
            self.waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(g)
    }

    /// Write every dirty page to the transaction (all mirrors, checksums from
    /// the sealed bytes), then release the pages to writers.
    pub fn writeback(&self, tx: &mut Transaction, opts: &WriteOpts, report: &mut WriteReport) -> Result<()> {
        // Seal: take the dirty bits and a reference to the bytes.
        let sealed: Vec<Sealed> = {
            let mut g = self.pages.lock().map_err(|_| poisoned())?;
            g.iter_mut()
                .filter(|(_, p)| p.is_dirty())
                .map(|(&i, p)| {
                    p.sealed = true;
                    (i, p.data.clone(), std::mem::replace(&mut p.dirty, vec![0; PAGE / 64]))
                })
                .collect()
        };
        let result = self.write_sealed(tx, &sealed, opts, report);
        // Unseal even on error, so writers are not stuck; on error the caller
        // aborts the transaction.
        {
            let mut g = self.pages.lock().map_err(|_| poisoned())?;
            for (i, data, mask) in sealed {
                if let Some(p) = g.get_mut(&i) {
                    p.sealed = false;
                    if result.is_err() {
                        for (w, m) in p.dirty.iter_mut().zip(&mask) {
                            *w |= m;
                        }
                    }
                }
                drop(data);
            }
            self.unsealed.notify_all();
        }
        result
    }

    /// Write maximal runs of dirty bytes from sealed pages.
    fn write_sealed(&self, tx: &mut Transaction, sealed: &[Sealed], opts: &WriteOpts, report: &mut WriteReport) -> Result<()> {
        let mut run: Option<(u64, Vec<u8>)> = None;
        for (idx, data, mask) in sealed {
            let base = idx * PAGE as u64;
            for i in 0..PAGE {
                let pos = base + i as u64;
                if Page::bit(mask, i) {
                    match &mut run {
                        Some((start, bytes)) if *start + bytes.len() as u64 == pos => bytes.push(data[i]),
                        _ => {
                            if let Some((s, b)) = run.take() {
                                tx.write_at(self.id, s, &b, opts, report)?;
                            }
                            run = Some((pos, vec![data[i]]));
                        }
                    }
                }
            }
        }
        if let Some((s, b)) = run {
            tx.write_at(self.id, s, &b, opts, report)?;
        }
        Ok(())
    }

    /// The cached bytes of [off, off+len) (zero where never written), for tests.
    pub fn snapshot(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        let g = self.pages.lock().map_err(|_| poisoned())?;
        let mut out = vec![0u8; len];
        for (k, b) in out.iter_mut().enumerate() {
            let pos = off + k as u64;
            if let Some(p) = g.get(&(pos / PAGE as u64)) {
                *b = p.data[(pos % PAGE as u64) as usize];
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::items::FileExtentKind;
    use crate::format::*;
    use crate::fs::{Filesystem, InodeId};
    use crate::volumes::OpenOptions;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn mkfs_dup() -> Option<(tempfile::TempDir, Vec<PathBuf>)> {
        crate::fs::testutil::mkfs_btrfs(1, &["-d", "dup", "-m", "dup"])
    }

    /// Many threads rewrite overlapping ranges while writeback runs; then every
    /// mirror of every written sector is identical and every csum valid, and the
    /// file holds what the cache holds.
    #[test]
    fn stable_pages_under_concurrent_rewrites() {
        for nodatasum in [false, true] {
            let Some((_tmp, imgs)) = mkfs_dup() else { return };
            let opts = OpenOptions { image: imgs[0].clone(), devices: imgs.clone(), degraded: false, writable: true, ..Default::default() };
            let mut tx = Transaction::begin(Filesystem::open(&opts).unwrap()).unwrap();
            let flags = if nodatasum { INODE_NODATASUM } else { 0 };
            let ino =
                tx.create(InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID }, b"hot", S_IFREG | 0o644, flags).unwrap().ino;
            let file = CachedFile::new(InodeId { subvol: FS_TREE_OBJECTID, ino });
            let len = 512 * 1024usize;
            let stop = AtomicBool::new(false);
            let mut rounds = 0;
            std::thread::scope(|s| {
                let mut hs = Vec::new();
                for t in 0..4u64 {
                    let file = &file;
                    hs.push(s.spawn(move || {
                        let mut x = t + 1;
                        for i in 0..400u64 {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            let off = (x >> 20) % (len as u64 - 20000);
                            let n = 1 + ((x >> 8) % 20000) as usize;
                            let b: Vec<u8> = (0..n).map(|k| (t as u8) ^ (i as u8).wrapping_add(k as u8)).collect();
                            file.write_at(off, &b).unwrap();
                        }
                    }));
                }
                while !stop.load(Ordering::Relaxed) {
                    file.writeback(&mut tx, &WriteOpts::default(), &mut WriteReport::default()).unwrap();
                    rounds += 1;
                    if hs.iter().all(|h| h.is_finished()) {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            });
            file.writeback(&mut tx, &WriteOpts::default(), &mut WriteReport::default()).unwrap();
            let want = file.snapshot(0, len).unwrap();
            tx.commit().unwrap();
            let chk = std::process::Command::new("btrfs").args(["check", "--readonly"]).arg(&imgs[0]).output().unwrap();
            assert!(chk.status.success(), "btrfs check: {}{}", String::from_utf8_lossy(&chk.stdout), String::from_utf8_lossy(&chk.stderr));
            eprintln!("nodatasum={nodatasum}: {rounds} writeback rounds, {} waits on sealed pages", file.waits.load(Ordering::Relaxed));
            let fs = Filesystem::open(&OpenOptions { writable: false, ..opts }).unwrap();
            let id = InodeId { subvol: FS_TREE_OBJECTID, ino };
            let got = fs.read_file_bytes(id).unwrap();
            assert_eq!(&got[..], &want[..got.len()], "file differs from the cache");
            let vol = fs.volume();
            for (_, fe) in fs.file_extents(id).unwrap() {
                let FileExtentKind::Regular { disk_bytenr, disk_num_bytes, .. } = fe.kind else { continue };
                if disk_bytenr == 0 {
                    continue;
                }
                let csums = fs.data_csums(disk_bytenr, disk_num_bytes).unwrap();
                for (i, c) in csums.iter().enumerate() {
                    let at = disk_bytenr + (i * PAGE) as u64;
                    let (mut a, mut b) = (vec![0u8; PAGE], vec![0u8; PAGE]);
                    vol.read_copy(at, &mut a, 0).unwrap();
                    vol.read_copy(at, &mut b, 1).unwrap();
                    assert_eq!(a, b, "mirrors differ at {at}");
                    match c {
                        Some(c) => {
                            assert!(!nodatasum, "nodatasum file has csums");
                            assert!(fs.csum.matches(&fs.csum.compute(&a), c), "csum mismatch at {at}");
                        }
                        None => assert!(nodatasum, "missing csum at {at}"),
                    }
                }
            }
        }
    }
}
