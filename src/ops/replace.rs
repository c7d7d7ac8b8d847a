//! `btrs replace`: rebuild a missing or stale device of a mirrored
//! filesystem onto a new image file, offline, so the set is whole again (the
//! kernel's `btrfs replace`, which needs a root mount with `-o degraded`).
//! A stale image of the device is left out of the rebuild, then its
//! superblocks are wiped.
//!
//! The new image keeps the devid, the device uuid and the size of the device
//! it replaces (the kernel's replace also hands the old device's uuid to the
//! new one when it finishes), so no chunk, dev extent or dev item changes: the
//! chunk tree and every other tree stay as they are, and the other devices are
//! only read. The rebuild is scrub's repair of a stale device: the new image
//! joins the set as a stale device with nothing on it (see
//! [`crate::volumes::Replacement`]), and every copy it must hold is written
//! from a verified current copy (tree blocks and checksummed data by their
//! checksums, NODATASUM data from a current device), flushed, and read back;
//! its superblocks are written last. Until they are, the file carries no
//! btrfs signature: a crash or a failure leaves the set as it was (missing
//! that device) and a file no command takes for a device of it, which a
//! failed replace removes.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::types::uuid_string;
use crate::format::*;
use crate::fs::Filesystem;
use crate::ops::scrub::{FindingKind, ScrubOptions};
use crate::volumes::{OpenOptions, Replacement};

/// What a replace did.
#[derive(Clone, Debug, Serialize)]
pub struct ReplaceReport {
    pub devid: u64,
    pub image: PathBuf,
    pub device_uuid: String,
    pub size: u64,
    /// Copies written onto the new image (tree block sectors, data sectors,
    /// superblocks), as scrub counts its corrections.
    pub copies_written: u64,
    pub data_bytes: u64,
    pub tree_bytes: u64,
    /// Data sectors whose checksum fails on every remaining copy: as
    /// unreadable on the new image as they were before (scrub lists them).
    pub unreadable_sectors: u64,
    /// Problems scrub found on the other devices while it read them (bad
    /// copies it had a good copy for, superblocks): left as they are, since
    /// replace only reads those images; `btrs scrub --repair` fixes them.
    pub other_device_findings: u64,
    /// The stale image of the device that the new one superseded: its
    /// superblocks are wiped (it is no device of the set any more).
    pub superseded: Option<PathBuf>,
}

/// The first chunk that keeps a copy of some byte only on `devid`: its
/// logical address and profile. Mirror groups: every stripe of a DUP or
/// RAID1* chunk holds the same bytes, each `sub_stripes` stripes of RAID10,
/// each stripe alone in SINGLE and RAID0.
fn chunk_only_on(fs: &Filesystem, devid: u64) -> Option<(u64, Profile)> {
    fs.volume().chunks.entries().into_iter().find_map(|e| {
        let stripes = &e.chunk.stripes;
        let group = match e.profile {
            Profile::Dup | Profile::Raid1 | Profile::Raid1C3 | Profile::Raid1C4 => stripes.len(),
            Profile::Raid10 => usize::from(e.chunk.sub_stripes.max(1)),
            _ => 1,
        };
        let lost = stripes.chunks(group.max(1)).any(|g| g.iter().all(|s| s.devid == devid));
        lost.then_some((e.logical, e.profile))
    })
}

/// Rebuild devid `devid` of the filesystem `opts` names onto the new image
/// `new` (which must not exist). The device must be missing from the set.
pub fn replace(opts: &OpenOptions, devid: u64, new: &Path, wipe_stale: bool, progress: bool) -> Result<ReplaceReport> {
    // symlink_metadata: a dangling symlink is there too.
    match new.symlink_metadata() {
        Ok(m) if m.is_dir() => return Err(Error::Invalid(format!("{} is a directory, not an image file", new.display()))),
        Ok(_) => return Err(Error::Invalid(format!("{} exists; replace writes a new image file", new.display()))),
        Err(_) => {}
    }
    // What the set is without the device: read-only, degraded.
    let look = OpenOptions { degraded: true, writable: false, replacement: None, ..opts.clone() };
    let fs = Filesystem::open(&look)?;
    let items = fs.dev_items()?;
    let Some(dev_item) = items.get(&devid).copied() else {
        let known: Vec<String> = items.keys().map(u64::to_string).collect();
        return Err(Error::Invalid(format!("the filesystem has no devid {devid} (devids: {})", known.join(", "))));
    };
    let vol = fs.volume();
    // The log tree's blocks (and the data it logged) are in no extent tree:
    // the rebuild, which copies what the extent tree lists, would leave them
    // off the new image.
    if fs.sb.log_root.get() != 0 {
        return Err(Error::Unsupported(format!(
            "replacing a device of a filesystem with a log tree (block {}: changes fsynced after the last commit, which \
             the kernel replays at its next mount): the log's blocks would not be copied; mount the set with the kernel \
             once (-o degraded), or drop those changes with `btrfs rescue zero-log`, then replace",
            fs.sb.log_root.get()
        )));
    }
    if let Some(d) = vol.devices.get(&devid) {
        return Err(Error::Invalid(format!(
            "devid {devid} is present ({}): replace rebuilds a missing device; move that image out of the set first, \
             or rebuild it in place with `btrs scrub --repair`",
            d.path.display()
        )));
    }
    // A stale image of the device (older than the set: it lacks every
    // write since) is superseded: the new image is built without it, then
    // its superblocks are wiped, as the kernel's replace scratches the
    // source device's. Locked meanwhile, and wiped only if it still is
    // what was seen here.
    let stale = match vol.left_out.get(&devid) {
        // Older is all a generation proves: an image of another history
        // (a copy of the set written apart) is older too, and wiping it
        // would lose what only it holds. The caller says which it is.
        Some((path, generation)) if !wipe_stale => {
            return Err(Error::Invalid(format!(
                "devid {devid} is present but stale ({}, generation {generation}; the set is at {}): if it is an older \
                 copy of this device, give --wipe-stale and replace wipes its superblocks once the new image is built; \
                 if it may hold anything else, move it out of the set's directory first (replace then rebuilds devid \
                 {devid} as missing), or rebuild it in place with `btrs scrub --repair`",
                path.display(),
                fs.sb.generation.get()
            )));
        }
        Some((path, generation)) => {
            let dev = crate::volumes::Device::open_locked(path, crate::volumes::guard::Lock::Exclusive)?;
            if dev.sb.generation.get() != *generation || dev.devid != devid || dev.sb.fsid != fs.sb.fsid {
                return Err(Error::Devices(format!("{} changed while replace read the set; nothing was written", path.display())));
            }
            Some((dev, *generation))
        }
        None => None,
    };
    if let Some(other) = items.keys().find(|d| **d != devid && !vol.devices.contains_key(d)) {
        return Err(Error::Invalid(format!(
            "devid {other} is missing too: replace rebuilds one device from a set where every other device is present"
        )));
    }
    if let Some((logical, profile)) = chunk_only_on(&fs, devid) {
        return Err(Error::Invalid(format!(
            "the {profile} chunk at logical {logical} has no copy outside devid {devid}: what it held is lost, and replace \
             cannot rebuild it (convert such chunks to a mirrored profile while the device is there)"
        )));
    }
    let present: Vec<PathBuf> = vol.devices.values().map(|d| d.path.clone()).collect();
    let size = dev_item.total_bytes.get();
    let dir = match new.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    drop(fs);

    crate::volumes::create::create_blank(new, size)?;
    let superseded = stale.as_ref().map(|(d, g)| (d.path.clone(), *g));
    let rebuilt = rebuild(opts, &present, devid, new, dev_item, superseded, progress);
    match rebuilt {
        Ok(mut report) => {
            if let Some((old, _)) = stale {
                old.wipe_supers().map_err(|e| {
                    Error::Devices(format!(
                        "devid {devid} was rebuilt onto {}, but wiping the superblocks of the stale image {} failed ({e}): \
                         move that image out of the set's directory",
                        new.display(),
                        old.path.display()
                    ))
                })?;
                report.superseded = Some(old.path.clone());
            }
            Ok(report)
        }
        Err(e) => {
            // Its superblocks are written last: without a valid one it is no
            // device of the set, only a partial copy.
            let has_super = crate::volumes::Device::open_locked(new, crate::volumes::guard::Lock::Shared).is_ok();
            // A full disk shows as copies that did not read back: say so.
            let full = rustix::fs::statvfs(&dir).ok().map(|st| st.f_bavail.saturating_mul(st.f_frsize)).filter(|free| *free < 1 << 20);
            if !has_super {
                crate::volumes::create::remove_created(vec![new.to_path_buf()]);
            }
            let e = match full {
                Some(free) => Error::NoSpace(format!("{e} ({} is full: {free} bytes free)", dir.display())),
                None => e,
            };
            if has_super {
                // The failure came after its first superblock copy: every
                // copy it must hold is on it, and it is a device of the set.
                let stale_note = stale.as_ref().map_or(String::new(), |(d, _)| {
                    format!("; the stale image {} was not wiped: move it out of the set's directory", d.path.display())
                });
                return Err(Error::Devices(format!(
                    "{e}; {} already holds the current superblock and is devid {devid} of the set: \
                     `btrs scrub --repair` completes its other superblock copies{stale_note}",
                    new.display()
                )));
            }
            Err(e)
        }
    }
}

/// A finding in a few words: what, where, why.
fn describe(f: &crate::ops::scrub::Finding) -> String {
    let dev = f.devid.map(|d| format!("devid {d} ")).unwrap_or_default();
    let paths = if f.paths.is_empty() { String::new() } else { format!(" ({})", f.paths.join(", ")) };
    match (f.logical, f.physical) {
        (Some(l), _) => format!("{dev}logical {l}{paths}: {}", f.detail),
        (None, Some(p)) => format!("{dev}physical {p}: {}", f.detail),
        _ => format!("{dev}{}", f.detail),
    }
}

fn rebuild(
    opts: &OpenOptions,
    present: &[PathBuf],
    devid: u64,
    new: &Path,
    dev_item: DevItem,
    superseded: Option<(PathBuf, u64)>,
    progress: bool,
) -> Result<ReplaceReport> {
    let replacement = Replacement { devid, path: new.to_path_buf(), dev_item, superseded };
    // The set exactly: the devices found above and the new image, nothing
    // else from the directory.
    let image = present.first().cloned().unwrap_or_else(|| opts.image.clone());
    let set =
        OpenOptions { image, devices: present.to_vec(), degraded: false, writable: true, replacement: Some(replacement), ..opts.clone() };
    let sopts = ScrubOptions { repair: true, prefer_mirror: None, threads: 0, progress, fix_csum: false };
    let report = crate::ops::scrub::scrub(&set, &sopts)?;
    let stale = report.findings.iter().find(|f| f.kind == FindingKind::StaleDevice && f.devid == Some(devid));
    if !stale.is_some_and(|f| f.repaired) {
        // What held the rebuild back: first what is wrong beyond the new
        // image's blank copies (copies that differ with nothing to decide,
        // two histories, unreadable devices), then the copies not written.
        let blank = |f: &&crate::ops::scrub::Finding| {
            f.devid == Some(devid)
                && matches!(f.kind, FindingKind::Csum | FindingKind::Verify | FindingKind::Super | FindingKind::StaleDevice)
        };
        let mut unrepaired: Vec<String> =
            report.findings.iter().filter(|f| !f.repaired).filter(|f| !blank(f)).take(5).map(describe).collect();
        if unrepaired.is_empty() {
            unrepaired = report.findings.iter().filter(|f| !f.repaired && f.devid == Some(devid)).take(5).map(describe).collect();
        }
        return Err(Error::Devices(format!(
            "devid {devid} could not be rebuilt onto {}: {}",
            new.display(),
            if unrepaired.is_empty() { "the rebuild did not finish".to_string() } else { unrepaired.join("; ") }
        )));
    }
    // The set must now open whole, the new image current.
    let check = OpenOptions {
        image: new.to_path_buf(),
        devices: present.iter().cloned().chain(std::iter::once(new.to_path_buf())).collect(),
        degraded: false,
        writable: false,
        replacement: None,
        ..opts.clone()
    };
    let fs = Filesystem::open(&check)?;
    if fs.volume().is_stale(devid) || !fs.volume().missing.is_empty() {
        return Err(Error::Devices(format!("{} was rebuilt but the set does not open whole", new.display())));
    }
    let counters = report.device_counters(devid).unwrap_or_default();
    // Data sectors with no good copy anywhere: not written (scrub leaves them
    // as unreadable on the new image as on the others).
    let sector = u64::from(fs.sectorsize.max(1));
    let unreadable: u64 = report
        .findings
        .iter()
        .filter(|f| {
            f.devid == Some(devid) && !f.repaired && !f.metadata && matches!(f.kind, FindingKind::Csum | FindingKind::CsumAllCopies)
        })
        .map(|f| f.len.div_ceil(sector))
        .sum();
    Ok(ReplaceReport {
        devid,
        image: new.to_path_buf(),
        device_uuid: uuid_string(&dev_item.uuid),
        size: dev_item.total_bytes.get(),
        copies_written: counters.corrected_errors,
        data_bytes: counters.data_bytes_scrubbed,
        tree_bytes: counters.tree_bytes_scrubbed,
        unreadable_sectors: unreadable,
        other_device_findings: u64::try_from(report.findings.iter().filter(|f| !f.repaired && f.devid.is_some_and(|d| d != devid)).count())
            .unwrap_or(u64::MAX),
        superseded: None,
    })
}

#[cfg(test)]
mod tests {
    //! Crash safety by fault injection: the k-th image I/O of a replace
    //! fails, or is torn, for every k. Whatever k, the remaining image is
    //! untouched and the set is either the old one (NEW gone: it never got a
    //! valid superblock) or the new one (NEW opens as a current device and the
    //! set reads every file).
    use super::*;
    use crate::fs::InodeId;
    use crate::volumes::fault::{arm_for_writers, Fault, FaultPlan};
    use std::sync::Arc;

    fn files() -> Vec<(&'static [u8], Vec<u8>)> {
        vec![(b"a", (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()), (b"b", vec![5u8; 70_000])]
    }

    fn reads_all(opts: &OpenOptions, what: &str) {
        let fs = Filesystem::open(opts).unwrap_or_else(|e| panic!("{what}: open: {e}"));
        for (name, want) in files() {
            let id = fs.resolve(std::str::from_utf8(name).unwrap()).unwrap().id;
            assert!(fs.read_file_bytes(id).unwrap() == want, "{what}: {} differs", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn a_fault_at_any_io_leaves_the_old_set_or_the_new_one() {
        let Some((tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(2, &["-d", "raid1", "-m", "raid1"]) else { return };
        let all = OpenOptions { image: imgs[0].clone(), devices: imgs.clone(), writable: true, ..Default::default() };
        let mut tx = crate::fs::txn::Transaction::begin(Filesystem::open(&all).unwrap()).unwrap();
        let top = InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID };
        for (name, data) in files() {
            let id = tx.create(top, name, S_IFREG | 0o644, 0).unwrap();
            tx.write_at(id, 0, &data, &Default::default(), &mut Default::default()).unwrap();
        }
        tx.commit().unwrap();
        let lost = tmp.path().join("lost");
        std::fs::create_dir(&lost).unwrap();
        std::fs::rename(&imgs[1], lost.join("dev2.img")).unwrap();
        let one = OpenOptions { image: imgs[0].clone(), devices: vec![imgs[0].clone()], ..Default::default() };
        let before = std::fs::read(&imgs[0]).unwrap();
        let new = tmp.path().join("new2.img");
        // Count the replace's I/Os.
        let counter = Arc::new(FaultPlan::new(u64::MAX, Fault::Fail));
        arm_for_writers(Some(counter.clone()));
        replace(&one, 2, &new, false, false).unwrap();
        arm_for_writers(None);
        let total = counter.count();
        assert!(total > 10, "only {total} I/Os counted: the plan did not reach the rebuild");
        let (mut olds, mut news) = (0, 0);
        for fault in [Fault::Fail, Fault::Torn] {
            for k in 0..=total {
                let _ = std::fs::remove_file(&new);
                arm_for_writers(Some(Arc::new(FaultPlan::new(k, fault))));
                let r = replace(&one, 2, &new, false, false);
                arm_for_writers(None);
                let what = format!("{fault:?} at I/O {k} of {total}");
                assert_eq!(r.is_ok(), k >= total, "{what}: {r:?}");
                assert!(std::fs::read(&imgs[0]).unwrap() == before, "{what}: the remaining image changed");
                if new.exists() {
                    // It kept NEW: its primary superblock made it a device of the set.
                    if let Err(e) = &r {
                        assert!(e.to_string().contains("already holds the current superblock"), "{what}: {e}");
                    }
                    let set = OpenOptions { devices: vec![imgs[0].clone(), new.clone()], ..one.clone() };
                    reads_all(&set, &what);
                    let fs = Filesystem::open(&set).unwrap();
                    assert!(!fs.volume().is_stale(2) && fs.volume().missing.is_empty(), "{what}: the new device is not current");
                    news += 1;
                } else {
                    reads_all(&OpenOptions { degraded: true, ..one.clone() }, &what);
                    olds += 1;
                }
            }
        }
        eprintln!("replace: {total} I/Os; {olds} faults left the old set, {news} the new");
        assert!(olds > 0 && news > 0);
    }
}
