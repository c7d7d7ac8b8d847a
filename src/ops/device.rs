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
use crate::fs::txn::{Restriped, Transaction};
use crate::fs::Filesystem;
use crate::ops::balance::{profiles_in_use, MoveReport, Moves};
use crate::volumes::alloc::Placement;
use crate::volumes::{Added, OpenOptions};

/// The smallest device `device add` takes: room for a chunk stripe beside
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
/// size unless `size` is given (then it is made that long). One that does not
/// exist is made `size` bytes long, or as long as the device `opts.image`.
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
    drop(look);

    let mut plan = Vec::new();
    let mut made = Vec::new();
    let result = (|| -> Result<Vec<AddedDevice>> {
        for path in new {
            let size = prepare(path, size, default_size, &mut made)?;
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
        // Files this call made and no superblock names (the commit failed
        // before writing any: then none has a signature).
        for p in made {
            if crate::volumes::Device::open_raw(&p).map(|d| d.sb.magic != BTRFS_MAGIC).unwrap_or(true) {
                let _ = std::fs::remove_file(&p);
            }
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
            match size {
                Some(n) if m.is_file() && n != dev.size => {
                    check_size(path, n)?;
                    crate::volumes::raw::set_len(path, n)?;
                    n
                }
                _ => dev.size,
            }
        }
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
pub fn remove(opts: &OpenOptions, target: &str, progress: &mut dyn FnMut(&Restriped)) -> Result<RemovedDevice> {
    let tx = Transaction::begin(Filesystem::open(&OpenOptions { writable: true, ..opts.clone() })?)?;
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
