//! The proof that bounce pages matter: a direct write from a buffer that
//! another thread keeps changing must leave every mirror identical and
//! every checksum valid; with the bounce copy switched off, the same
//! harness must see divergence.
use crate::format::*;
use crate::fs::direct::*;
use crate::fs::txn::Transaction;
use crate::fs::txn::{BioHook, BioRecord, BioStage, WriteOpts, WriteReport};
use crate::fs::{Filesystem, InodeId};
use crate::volumes::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    let ino = tx.create(InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID }, b"victim", S_IFREG | 0o644, flags).unwrap().ino;
    let len = 8 << 20;
    let init: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let buf = SharedBuf::new(&init);
    let stop = AtomicBool::new(false);
    // The buffer changes between any two bios, whatever the load: each
    // bio's hook waits (up to a second) for the changer's next round.
    // Without it, a loaded machine could run the whole write before the
    // changer thread is scheduled, and the no-bounce run see no race.
    let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = rounds.clone();
    let hook = BioHook(Arc::new(move |_: &BioRecord, stage: BioStage| {
        if stage == BioStage::Submitted {
            let r0 = seen.load(Ordering::Acquire);
            let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
            while seen.load(Ordering::Acquire) == r0 && std::time::Instant::now() < until {
                std::thread::yield_now();
            }
        }
    }));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut round = 0u8;
            while !stop.load(Ordering::Relaxed) {
                round = round.wrapping_add(1);
                for (i, b) in buf.0.iter().enumerate().step_by(512) {
                    b.store(round ^ i as u8, Ordering::Relaxed);
                }
                rounds.fetch_add(1, Ordering::Release);
            }
        });
        let mut report = WriteReport::default();
        let r = tx.write_direct(
            InodeId { subvol: FS_TREE_OBJECTID, ino },
            0,
            &buf,
            &WriteOpts { max_bio: 64 << 10, on_bio: Some(hook), compress: None },
            &mut report,
        );
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
    let ino = tx.create(InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID }, b"f", S_IFREG | 0o644, 0).unwrap().ino;
    // Fail every bio: any logical address matches nothing, so inject at the first data address.
    let (probe, _) = tx.store.alloc_data(4096).unwrap();
    tx.direct_fail_at = Some(probe + 4096 * 3);
    let data = vec![7u8; 1 << 20];
    let mut report = WriteReport::default();
    let r = tx.write_direct(InodeId { subvol: FS_TREE_OBJECTID, ino }, 0, &Plain(&data), &WriteOpts::default(), &mut report);
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
        let ino = tx.create(InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID }, b"f", S_IFREG | 0o644, 0).unwrap().ino;
        let hook = BioHook(Arc::new(|rec: &BioRecord, stage| {
            if stage == BioStage::Completed && rec.devid == 2 {
                panic!("injected bio thread panic");
            }
        }));
        let wopts = WriteOpts { on_bio: Some(hook), ..WriteOpts::default() };
        let data = vec![7u8; 4 << 20];
        let mut report = WriteReport::default();
        let r = tx.write_direct(InodeId { subvol: FS_TREE_OBJECTID, ino }, 0, &Plain(&data), &wopts, &mut report).and_then(|_| tx.commit());
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
    let supers =
        |imgs: &[PathBuf]| -> Vec<Vec<u8>> { imgs.iter().map(|p| std::fs::read(p).unwrap()[65536..65536 + 4096].to_vec()).collect() };
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
    let ino = tx.create(InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID }, b"f", S_IFREG | 0o644, 0).unwrap().ino;
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
    let ino = tx.create(InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID }, b"f", S_IFREG | 0o644, 0).unwrap().ino;
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
