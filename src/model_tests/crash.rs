//! Crash safety by fault injection: one transaction (overwrite in the
//! middle of a file, append, create with a direct write, delete, xattr)
//! is run again and again
//! with its k-th image I/O failing or torn and every I/O after it lost, for
//! every k. After each, the images are judged as the next process would
//! find them: `btrfs check` clean, btrs scrub clean (every mirror of every
//! reachable block identical, every checksum valid), and the files hold
//! either all of the old state or all of the new one, never a mix.
use crate::error::{Error, Result};
use crate::format::*;
use crate::fs::txn::Transaction;
use crate::fs::txn::{WriteOpts, WriteReport};
use crate::fs::Filesystem;
use crate::fs::InodeId;
use crate::volumes::fault::{Fault, FaultPlan};
use crate::volumes::OpenOptions;
use std::path::PathBuf;
use std::sync::Arc;

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn opts(imgs: &[PathBuf], writable: bool) -> OpenOptions {
    super::shared::open_opts(imgs, writable)
}

/// File contents by name; `None` when absent.
type State = Vec<(&'static str, Option<Vec<u8>>)>;

fn old_state() -> State {
    vec![("a", Some(bytes(300_000, 1))), ("b", None), ("c", Some(bytes(50_000, 3)))]
}

fn new_state() -> State {
    let mut a = bytes(300_000, 1);
    a[100_001..140_001].copy_from_slice(&bytes(40_000, 4));
    a.extend_from_slice(&bytes(100_000, 5));
    vec![("a", Some(a)), ("b", Some(bytes(200_000, 2))), ("c", None)]
}

fn wo() -> (WriteOpts, WriteReport) {
    (WriteOpts::default(), WriteReport::default())
}

fn baseline(imgs: &[PathBuf]) {
    let mut tx = Transaction::begin(Filesystem::open(&opts(imgs, true)).unwrap()).unwrap();
    let (o, mut r) = wo();
    for (name, data) in old_state() {
        if let Some(d) = data {
            let ino =
                tx.create(InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID }, name.as_bytes(), S_IFREG | 0o644, 0).unwrap().ino;
            tx.write_at(InodeId { subvol: FS_TREE_OBJECTID, ino }, 0, &d, &o, &mut r).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// The transaction under test.
fn sequence(fs: Filesystem) -> Result<()> {
    let mut tx = Transaction::begin(fs)?;
    let (o, mut r) = wo();
    let root = FS_TREE_OBJECTID;
    let dir = FIRST_FREE_OBJECTID;
    let (a, _) = tx.lookup_name(root, dir, b"a")?.ok_or_else(|| Error::NotFound("a".into()))?;
    tx.write_at(InodeId { subvol: root, ino: a }, 100_001, &bytes(40_000, 4), &o, &mut r)?;
    tx.write_at(InodeId { subvol: root, ino: a }, 300_000, &bytes(100_000, 5), &o, &mut r)?;
    tx.set_xattr(root, a, b"user.v", Some(b"new"))?;
    // A direct write of pages handed over: its bios are only queued, and
    // run on the devices' own threads, through the same fault plan.
    let b = tx.create(InodeId { subvol: root, ino: dir }, b"b", S_IFREG | 0o644, 0)?.ino;
    let data = bytes(200_000, 2);
    let mut pages = crate::volumes::bio::Bounce::zeroed(data.len());
    pages.bytes_mut().copy_from_slice(&data);
    tx.write_owned(root, b, 0, pages, true, &o, &mut r)?;
    tx.unlink(root, dir, b"c")?;
    tx.commit()
}

fn read_state(imgs: &[PathBuf]) -> State {
    let fs =
        Filesystem::open(&OpenOptions { accept_lagging: true, ..opts(imgs, false) }).unwrap_or_else(|e| panic!("open after crash: {e}"));
    old_state()
        .into_iter()
        .map(|(name, _)| {
            let got = match fs.resolve(name) {
                Ok(e) => Some(fs.read_file_bytes(e.id).unwrap_or_else(|e| panic!("read {name}: {e}"))),
                Err(Error::NotFound(_)) => None,
                Err(e) => panic!("resolve {name}: {e}"),
            };
            (name, got)
        })
        .collect()
}

fn judge(imgs: &[PathBuf], what: &str) -> bool {
    if imgs.len() == 1 {
        let chk = std::process::Command::new("btrfs").args(["check", "--readonly"]).arg(&imgs[0]).output().unwrap();
        assert!(
            chk.status.success(),
            "{what}: btrfs check: {}{}",
            String::from_utf8_lossy(&chk.stdout),
            String::from_utf8_lossy(&chk.stderr)
        );
    }
    // A crash between superblock writes leaves some copies one
    // generation behind (the kernel's own commit has the same window, and
    // mounts the newest); a device whose copies all lag is stale until a
    // repair or --accept-lagging. Taken as current (the test knows it was
    // a crash), scrub names the lagging copies and nothing else.
    let stale_super =
        |f: &crate::ops::scrub::Finding| f.kind == crate::ops::scrub::FindingKind::Super && f.detail.contains("is not the newest");
    let lagging = |f: &crate::ops::scrub::Finding| {
        stale_super(f) || f.kind == crate::ops::scrub::FindingKind::StaleDevice && f.detail.contains("one behind")
    };
    let scrub = |o: &OpenOptions| {
        crate::ops::scrub::scrub(o, &crate::ops::scrub::ScrubOptions { threads: 1, ..Default::default() })
            .unwrap_or_else(|e| panic!("{what}: scrub: {e}"))
    };
    let plain = scrub(&opts(imgs, false));
    let findings = |r: &crate::ops::scrub::ScrubReport| r.findings.iter().map(|f| f.detail.clone()).collect::<Vec<_>>();
    if !plain.findings.iter().all(stale_super) {
        assert!(plain.findings.iter().any(lagging), "{what}: scrub findings {:?}", findings(&plain));
    }
    let rep = scrub(&OpenOptions { accept_lagging: true, ..opts(imgs, false) });
    assert!(rep.findings.iter().all(stale_super) && rep.findings_dropped == 0, "{what}: scrub findings {:?}", rep.findings);
    let st = read_state(imgs);
    let is_old = st == old_state();
    let is_new = st == new_state();
    assert!(is_old || is_new, "{what}: files are neither the old nor the new state");
    is_new
}

fn run(imgs: &[PathBuf]) {
    baseline(imgs);
    // Count the I/Os of the transaction, then undo it.
    let counter = Arc::new(FaultPlan::new(u64::MAX, Fault::Fail));
    let fs = Filesystem::open(&opts(imgs, true)).unwrap();
    fs.volume().set_fault(counter.clone());
    sequence(fs).unwrap();
    let total = counter.count();
    counter.restore().unwrap();
    assert!(!judge(imgs, "after undo"), "undo did not bring back the old state");
    let (mut olds, mut news) = (0, 0);
    for fault in [Fault::Fail, Fault::Torn] {
        for k in 0..=total {
            let plan = Arc::new(FaultPlan::new(k, fault));
            let fs = Filesystem::open(&opts(imgs, true)).unwrap();
            fs.volume().set_fault(plan.clone());
            let r = sequence(fs);
            assert_eq!(r.is_ok(), k >= total, "{fault:?} at I/O {k} of {total}: {r:?}");
            if judge(imgs, &format!("{fault:?} at I/O {k} of {total}")) {
                news += 1;
            } else {
                olds += 1;
            }
            plan.restore().unwrap();
        }
    }
    eprintln!("{} device(s): {total} I/Os; {olds} crashes left the old state, {news} the new", imgs.len());
    // Only a crash after the superblocks reached the disk shows the new state.
    assert!(olds > 0 && news > 0);
}

/// One device of a RAID1 pair fails every read: readers and the writer
/// are served by the other copy (with a warning naming the device), the
/// write commits to both, and the result checks clean.
#[test]
fn read_errors_on_one_device_are_served_from_the_other() {
    let Some((_tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(2, &["-d", "raid1", "-m", "raid1"]) else { return };
    baseline(&imgs);
    let mut fs = Filesystem::open(&opts(&imgs, false)).unwrap();
    fs.volume().devices[&1].fault.set(Arc::new(FaultPlan::unreadable())).unwrap();
    // Drop the blocks cached while opening, so every read meets the fault.
    let generation = fs.sb.generation.get();
    fs.reader.committed(generation);
    for (name, want) in old_state() {
        if let Some(want) = want {
            let id = fs.resolve(name).unwrap().id;
            assert!(fs.read_file_bytes(id).unwrap() == want, "{name}");
        }
    }
    let warnings = fs.take_warnings();
    assert!(warnings.iter().any(|w| w.0.contains("devid 1")), "no warning names devid 1: {warnings:?}");
    drop(fs);
    let mut fs = Filesystem::open(&opts(&imgs, true)).unwrap();
    fs.volume().devices[&1].fault.set(Arc::new(FaultPlan::unreadable())).unwrap();
    let generation = fs.sb.generation.get();
    fs.reader.committed(generation);
    sequence(fs).unwrap();
    assert!(judge(&imgs, "after a write with devid 1 unreadable"), "the write did not land");
}

#[test]
fn crash_at_every_io_single_device_dup() {
    let Some((_tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(1, &["-m", "dup"]) else { return };
    run(&imgs);
}

#[test]
fn crash_at_every_io_raid1_pair() {
    let Some((_tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(2, &["-d", "raid1", "-m", "raid1"]) else { return };
    run(&imgs);
}
