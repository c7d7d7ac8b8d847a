//! `btrs device add` and `btrs device remove`, offline.
//!
//! Adding enters a new image into the set: a new devid with a fresh device
//! uuid, its dev item in the chunk tree, the superblock's num_devices and
//! total_bytes; its superblocks are written by that commit, with the
//! others'. No chunk moves onto it (as with the kernel's `btrfs device
//! add`): new chunks may use it, and `btrs balance --convert` spreads
//! copies over it.
//!
//! Removing moves every stripe off the device first (each chunk re-striped
//! onto the others, one commit each: see ops/balance.rs), then commits the
//! set without it, then wipes its superblocks. Refused before anything is
//! written when a profile in use could no longer be satisfied by the devices
//! left, naming the conversion to run first.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::types::uuid_string;
use crate::format::*;
use crate::fs::txn::{MoveEvent, Transaction};
use crate::fs::Filesystem;
use crate::ops::balance::{profiles_in_use, MoveReport, Moves};
use crate::volumes::alloc::Placement;
use crate::volumes::{Added, OpenOptions};

/// The smallest device `device add` takes: room for chunk stripes beside
/// the reserved first MiB and a superblock copy.
const MIN_DEVICE: u64 = 64 * 1024 * 1024;

/// One device `device add` entered.
#[derive(Clone, Debug, Serialize)]
pub struct AddedDevice {
    pub devid: u64,
    pub device_uuid: String,
    pub image: PathBuf,
    pub size: u64,
}

/// Add each image of `new` to the filesystem `opts` names, in one commit.
/// An image that exists must carry no btrfs superblock; its length is its
/// size (`size`, if given, must match). One that does not exist is made
/// `size` bytes long, or as long as the device `opts.image`.
pub fn add(opts: &OpenOptions, new: &[PathBuf], size: Option<u64>) -> Result<Vec<AddedDevice>> {
    if new.is_empty() {
        return Err(Error::Invalid("no image to add".into()));
    }
    // What the set is now (read-only, to pick devids and sizes).
    let look = Filesystem::open(&OpenOptions { writable: false, ..opts.clone() })?;
    let items = look.dev_items()?;
    let template = *items.values().next().ok_or_else(|| Error::Invalid("the filesystem lists no devices".into()))?;
    let default_size = look.volume().devices.values().find(|d| same_path(&d.path, &opts.image)).map(|d| d.size);
    let mut next_devid = items.keys().max().copied().unwrap_or(0).saturating_add(1);
    let ss = u64::from(look.sectorsize.max(1));
    let csum = look.csum;
    let members: Vec<PathBuf> = look.volume().devices.values().map(|d| d.path.clone()).collect();
    drop(look);
    // One file under two names, or a device of the set again.
    let mut all = members.clone();
    all.extend(new.iter().cloned());
    if let Some((i, j)) = crate::volumes::create::same_file_twice(&all) {
        let (a, b) = (&all[i], &all[j]);
        return Err(if i < members.len() {
            Error::Invalid(format!("{} is already a device of the set (as {})", b.display(), a.display()))
        } else {
            Error::Invalid(format!("{} and {} are one file, given twice", a.display(), b.display()))
        });
    }
    // The set is found by its images' directory unless named by --device.
    if opts.devices.is_empty() {
        let dir = |p: &Path| std::fs::canonicalize(p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")));
        let home = dir(&opts.image).map_err(|e| Error::io(&opts.image, "resolve its directory", e))?;
        if let Some(p) = new.iter().find(|p| dir(p).ok().as_ref() != Some(&home)) {
            return Err(Error::Invalid(format!(
                "{} is not in {}, where the set's images are found: every later command would miss it \
                 (put it there, or name every device with --device)",
                p.display(),
                home.display()
            )));
        }
    }

    let mut plan = Vec::new();
    let mut made = Vec::new();
    // The bytes signing overwrites in files that existed, to put back.
    let mut saved: Vec<(PathBuf, u64, Vec<u8>)> = Vec::new();
    let result = (|| -> Result<Vec<AddedDevice>> {
        for path in new {
            let size = prepare(path, size, default_size, &mut made)?;
            if !made.contains(path) {
                for &off in SUPER_MIRROR_OFFSETS.iter().filter(|&&o| o.saturating_add(4096) <= size) {
                    saved.push((path.clone(), off, crate::volumes::raw::read_at(path, off, SUPER_INFO_SIZE)?));
                }
            }
            let size = size.checked_div(ss).unwrap_or(0).saturating_mul(ss);
            let mut item = template;
            item.devid = next_devid.into();
            item.uuid = *uuid::Uuid::new_v4().as_bytes();
            item.total_bytes = size.into();
            item.bytes_used = 0.into();
            item.generation = 0.into();
            item.start_offset = 0.into();
            item.dev_group = 0.into();
            item.seek_speed = 0;
            item.bandwidth = 0;
            plan.push(Added { path: path.clone(), dev_item: item });
            next_devid = next_devid.saturating_add(1);
        }
        let fs = Filesystem::open(&OpenOptions { writable: true, added: plan.clone(), ..opts.clone() })?;
        let mut tx = Transaction::begin(fs)?;
        tx.fs().volume().sign_added(csum)?;
        for a in &plan {
            tx.add_device(a.dev_item)?;
        }
        tx.commit()?;
        Ok(plan
            .iter()
            .map(|a| AddedDevice {
                devid: a.dev_item.devid.get(),
                device_uuid: uuid_string(&a.dev_item.uuid),
                image: a.path.clone(),
                size: a.dev_item.total_bytes.get(),
            })
            .collect())
    })();
    if result.is_err() {
        // What no committed superblock lists as a device goes back as it
        // was: files this call made are removed, signed bytes of files that
        // existed restored. (A commit that wrote some superblocks lists
        // them; they stay, one commit behind at worst.)
        // (When the set does not open now, nothing is touched: better a
        // stray file than a device of the set removed.)
        let Ok(listed) = Filesystem::open(&OpenOptions { writable: false, ..opts.clone() })
            .and_then(|f| f.dev_items())
            .map(|items| items.values().map(|i| i.uuid).collect::<Vec<[u8; 16]>>())
        else {
            return result;
        };
        for a in &plan {
            if listed.contains(&a.dev_item.uuid) {
                continue;
            }
            if made.contains(&a.path) {
                let _ = std::fs::remove_file(&a.path);
            }
            for (p, off, bytes) in saved.iter().filter(|s| s.0 == a.path) {
                let _ = crate::volumes::raw::patch(p, *off, bytes);
            }
        }
        // Made before its plan was: no signature either way.
        for p in made.iter().filter(|p| !plan.iter().any(|a| &a.path == *p)) {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

fn same_path(a: &Path, b: &Path) -> bool {
    std::fs::canonicalize(a).ok().zip(std::fs::canonicalize(b).ok()).is_some_and(|(a, b)| a == b)
}

/// Make `path` ready to be added; its size. Files it creates go to `made`.
fn prepare(path: &Path, size: Option<u64>, default: Option<u64>, made: &mut Vec<PathBuf>) -> Result<u64> {
    let meta = std::fs::symlink_metadata(path);
    let size = match meta {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::Invalid(format!("{} is a symlink: name the image itself", path.display())));
        }
        Ok(m) if m.is_file() || m.file_type().is_block_device() => {
            let dev = crate::volumes::Device::open_raw(path)?;
            if dev.sb.magic == BTRFS_MAGIC {
                return Err(Error::Invalid(format!(
                    "{} already holds a btrfs superblock (filesystem {}): wipe it first if it is to be reused",
                    path.display(),
                    uuid_string(&dev.sb.fsid)
                )));
            }
            // Its length is its size: a file of the caller's is not cut or
            // grown (a failed add must leave it as it was).
            match size {
                Some(n) if n != dev.size => {
                    return Err(Error::Invalid(format!(
                        "{} exists and is {} bytes: --size {n} would change it (resize the file first, or name a new one)",
                        path.display(),
                        dev.size
                    )));
                }
                _ => dev.size,
            }
        }
        Ok(m) if m.is_dir() => return Err(Error::Invalid(format!("{} is a directory, not an image file", path.display()))),
        Ok(_) => return Err(Error::Invalid(format!("{} is neither a regular file nor a block device", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let n = size.or(default).ok_or_else(|| Error::Invalid(format!("{}: give its size with --size", path.display())))?;
            check_size(path, n)?;
            crate::volumes::raw::create_new(path, n)?;
            made.push(path.to_path_buf());
            n
        }
        Err(e) => return Err(Error::io(path, "stat", e)),
    };
    check_size(path, size)?;
    Ok(size)
}

fn check_size(path: &Path, size: u64) -> Result<()> {
    if size < MIN_DEVICE {
        return Err(Error::Invalid(format!("{}: {size} bytes is smaller than a device can be ({MIN_DEVICE})", path.display())));
    }
    if size > crate::volumes::create::MAX_IMAGE_END {
        return Err(Error::Invalid(format!("{}: {size} bytes is past the largest image btrs makes", path.display())));
    }
    Ok(())
}

/// What `device remove` did.
#[derive(Clone, Debug, Serialize)]
pub struct RemovedDevice {
    pub devid: u64,
    pub image: PathBuf,
    #[serde(flatten)]
    pub moved: MoveReport,
}

/// Which device `target` names: a devid, or the path of one of the images.
fn devid_of(fs: &Filesystem, target: &str) -> Result<u64> {
    if let Ok(n) = target.parse::<u64>() {
        return Ok(n);
    }
    let p = Path::new(target);
    fs.volume()
        .devices
        .values()
        .find(|d| same_path(&d.path, p))
        .map(|d| d.devid)
        .ok_or_else(|| Error::Invalid(format!("{target} is no device of the filesystem (give a devid or one of its images)")))
}

/// Remove the device `target` (devid or image path) from the filesystem.
pub fn remove(opts: &OpenOptions, target: &str, progress: &mut dyn FnMut(MoveEvent<'_>)) -> Result<RemovedDevice> {
    let tx = Transaction::begin(Filesystem::open(&OpenOptions { writable: true, ..opts.clone() })?)?;
    // An image a remove took out of the set but did not wipe (named by its
    // path or its old devid): finish it.
    let leftover = tx.fs().volume().not_members.iter().find(|(p, _)| {
        same_path(p, Path::new(target))
            || target.parse::<u64>().is_ok_and(|n| crate::volumes::Device::open_raw(p).is_ok_and(|d| d.devid == n))
    });
    if let Some((path, _)) = leftover.cloned() {
        let dev = crate::volumes::Device::open(&path, true)?;
        let devid = dev.devid;
        dev.wipe_supers()?;
        return Ok(RemovedDevice { devid, image: path, moved: MoveReport::default() });
    }
    let devid = devid_of(&tx.store.fs, target)?;
    let items = tx.dev_items().clone();
    if !items.contains_key(&devid) {
        let known: Vec<String> = items.keys().map(u64::to_string).collect();
        return Err(Error::Invalid(format!("the filesystem has no devid {devid} (devids: {})", known.join(", "))));
    }
    let left = items.len().saturating_sub(1);
    if left == 0 {
        return Err(Error::Invalid(format!("devid {devid} is the only device: a filesystem needs one")));
    }
    let image = tx.store.fs.volume().device(devid)?.path.clone();
    // Every profile in use must fit the devices left.
    for (kind, profiles) in profiles_in_use(&tx.store.fs) {
        for p in profiles {
            let need = p.min_devices();
            if left < need {
                let to = match left {
                    1 => "single (dup for metadata and system)",
                    2 => "raid1 or raid0",
                    _ => "raid1c3 or fewer copies",
                };
                return Err(Error::Invalid(format!(
                    "devid {devid} cannot be removed: {kind} chunks are {p}, which needs {need} devices, and {left} would remain; \
                     convert them first, to {to} (`btrs balance IMAGE --convert data=...,metadata=...`)"
                )));
            }
        }
    }
    let keep = |_: u64| None;
    let mut place = Placement::default();
    place.avoid.insert(devid);
    let moves = Moves { want: &keep, place, misplaced: true };
    let (mut tx, moved) = moves.run(tx, progress)?;
    tx.remove_device(devid)?;
    // The set without it, then its superblocks gone (a crash between leaves
    // an image the set no longer lists, at an older generation).
    let fs = tx.commit_keep_fs()?;
    fs.volume().device(devid)?.wipe_supers()?;
    Ok(RemovedDevice { devid, image, moved })
}
