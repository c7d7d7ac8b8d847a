//! `btrs resize`: grow or shrink one device image offline (btrfs-progs can
//! only grow, offline, since 6.17; the kernel's `btrfs filesystem resize`
//! needs a mount).
//!
//! Growing makes the image file longer first (a longer file than the device
//! says is valid), then commits the new size: the device's dev item, its
//! superblock's copy and the superblock's total_bytes. Shrinking commits the
//! smaller size first, then cuts the file (a crash between leaves a longer
//! file, still valid). Shrinking stops at the end of the last chunk stripe on
//! the device: stripes are not moved (yet), so `min` is where the last one
//! ends.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::*;
use crate::fs::txn::{MoveEvent, Transaction};
use crate::fs::Filesystem;
use crate::ops::balance::{MoveReport, Moves};
use crate::volumes::alloc::Placement;
use crate::volumes::OpenOptions;

/// What size to give a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeTo {
    /// Exactly this many bytes.
    Set(u64),
    /// This many bytes more.
    Grow(u64),
    /// This many bytes fewer.
    Shrink(u64),
    /// As long as the image file is (or the block device).
    Max,
    /// The end of the last chunk stripe on the device.
    Min,
}

/// `[DEVID:](SIZE|+SIZE|-SIZE|max|min)`, as `btrfs filesystem resize` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeSpec {
    pub devid: u64,
    pub to: ResizeTo,
}

impl std::str::FromStr for ResizeSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (devid, what) = match s.split_once(':') {
            Some((d, w)) => (d.parse::<u64>().ok().filter(|d| *d > 0).ok_or_else(|| format!("devid {d:?}: a number from 1"))?, w),
            None => (1, s),
        };
        let size = |t: &str| crate::ops::mkfs::parse_size(t).map_err(|e| e.to_string());
        let to = match what {
            "max" => ResizeTo::Max,
            "min" => ResizeTo::Min,
            w if w.starts_with('+') => ResizeTo::Grow(size(&w[1..])?),
            w if w.starts_with('-') => ResizeTo::Shrink(size(&w[1..])?),
            "" => return Err("no size: give SIZE, +SIZE, -SIZE, max or min".into()),
            w => ResizeTo::Set(size(w)?),
        };
        Ok(ResizeSpec { devid, to })
    }
}

/// What a resize did.
#[derive(Clone, Debug, Serialize)]
pub struct ResizeReport {
    pub devid: u64,
    pub image: PathBuf,
    pub old_size: u64,
    pub new_size: u64,
    /// The smallest size the device can have (its stripes moved as low as
    /// they go).
    pub min_size: u64,
    /// The chunks moved below the new end.
    pub moved: MoveReport,
}

/// The smallest size `resize` gives a device.
const SMALLEST: u64 = 16 * 1024 * 1024;

/// The moves that bring every stripe of devid below `cap`.
fn shrink_moves(devid: u64, cap: u64) -> Moves<'static> {
    let mut place = Placement::default();
    place.cap.insert(devid, cap);
    Moves { want: &|_| None, place, misplaced: true }
}

/// The smallest size devid can have: the lowest cap (in whole MiB, or the
/// end of its last stripe; no lower than `floor`) under which every stripe
/// of it fits, on a model of the devices.
fn smallest(tx: &Transaction, devid: u64, last_end: u64, floor: u64) -> Result<u64> {
    const MIB: u64 = 1024 * 1024;
    let fits = |cap: u64| shrink_moves(devid, cap).dry_run(tx).is_ok();
    let used: u64 = tx.dev_space().iter().filter(|d| d.devid == devid).flat_map(|d| d.extents.values()).sum();
    let mut lo = DEVICE_RESERVED.saturating_add(used).div_ceil(MIB).saturating_mul(MIB).max(floor);
    // Nothing moves under the end of the last stripe: that fits.
    let mut hi = last_end.max(floor);
    if lo >= hi {
        return Ok(hi);
    }
    if fits(lo) {
        return Ok(lo);
    }
    // lo does not fit, hi does.
    while hi.saturating_sub(lo) > MIB {
        let mid = lo.saturating_add((hi - lo) / 2).div_ceil(MIB).saturating_mul(MIB);
        if mid <= lo || mid >= hi {
            break;
        }
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// Resize device `spec.devid` of the filesystem `opts` names. Every decision
/// is made under the write lock the transaction holds until the file has
/// its new length: another writer cannot allocate past a new end meanwhile.
pub fn resize(opts: &OpenOptions, spec: &ResizeSpec, progress: &mut dyn FnMut(MoveEvent<'_>)) -> Result<ResizeReport> {
    let mut tx = Transaction::begin(Filesystem::open(&OpenOptions { writable: true, ..opts.clone() })?)?;
    let fs = &tx.store.fs;
    let items = fs.dev_items()?;
    let devid = spec.devid;
    let Some(item) = items.get(&devid) else {
        let known: Vec<String> = items.keys().map(u64::to_string).collect();
        return Err(Error::Invalid(format!("the filesystem has no devid {devid} (devids: {})", known.join(", "))));
    };
    // Its length as opened under the lock (a block device's size too).
    let dev = fs.volume().device(devid)?;
    let (image, file_len) = (dev.path.clone(), dev.size);
    let old = item.total_bytes.get();
    let sector = u64::from(fs.sectorsize.max(1));
    // The first MiB is never allocated; a device smaller than it holds nothing.
    let end_of = |tx: &Transaction| {
        let end =
            tx.dev_space().iter().filter(|d| d.devid == devid).flat_map(|d| d.extents.iter().map(|(o, l)| o.saturating_add(*l))).max();
        end.unwrap_or(0).max(DEVICE_RESERVED).div_ceil(sector).saturating_mul(sector)
    };
    let mut last_end = end_of(&tx);
    // Not below a few chunks' room (`min` would otherwise move every stripe
    // of a mirrored device elsewhere and leave its first MiB); a device
    // that already is keeps its size.
    let floor = SMALLEST.min(old);
    let mut min = smallest(&tx, devid, last_end, floor)?;
    let mut moved = MoveReport::default();
    if spec.to == ResizeTo::Min {
        // In steps: where one round's stripes land leaves room the next
        // round may use (the placement is first fit, not a packing).
        for _ in 0..4 {
            if min >= last_end {
                break;
            }
            let (next, r) = shrink_moves(devid, min).run(tx, progress)?;
            tx = next;
            moved.absorb(r);
            last_end = end_of(&tx);
            min = smallest(&tx, devid, last_end, floor)?;
        }
    }
    let wanted = match spec.to {
        ResizeTo::Set(n) => Some(n),
        ResizeTo::Grow(n) => old.checked_add(n),
        ResizeTo::Shrink(n) => old.checked_sub(n),
        ResizeTo::Max => Some(file_len),
        ResizeTo::Min => Some(min),
    };
    let new = wanted
        .ok_or_else(|| {
            Error::Invalid(match spec.to {
                ResizeTo::Shrink(n) => format!("devid {devid} is {old} bytes: it cannot lose {n}"),
                ResizeTo::Grow(n) => format!("devid {devid} is {old} bytes: {n} more is past 2^64"),
                _ => format!("devid {devid} is {old} bytes: no size"),
            })
        })?
        // The kernel keeps device sizes in whole sectors.
        .checked_div(sector)
        .unwrap_or(0)
        .saturating_mul(sector);
    if new < min && min == floor {
        return Err(Error::Invalid(format!("devid {devid} ({}): btrs makes no device smaller than {floor} bytes", image.display())));
    }
    if new < min {
        return Err(Error::Invalid(format!(
            "devid {devid} ({}) cannot be smaller than {min} bytes: btrs finds no place for its chunk stripes below that \
             (`resize {devid}:min` moves them in steps and may get lower)",
            image.display()
        )));
    }
    if new > crate::volumes::create::MAX_IMAGE_END {
        return Err(Error::Invalid(format!(
            "{new} bytes is past the largest image btrs makes ({})",
            crate::volumes::create::MAX_IMAGE_END
        )));
    }
    let is_file = std::fs::metadata(&image).map(|m| m.is_file()).unwrap_or(false);
    if new > file_len && !is_file {
        return Err(Error::Invalid(format!("{} is {file_len} bytes: a device cannot grow past its end", image.display())));
    }
    let report = ResizeReport { devid, image: image.clone(), old_size: old, new_size: new, min_size: min, moved: MoveReport::default() };
    if new == old && (new == file_len || !is_file) {
        return Ok(report);
    }
    // Stripes past the new end move below it first, one commit each.
    if new < last_end {
        let (next, r) = shrink_moves(devid, new).run(tx, progress)?;
        tx = next;
        moved.absorb(r);
    }
    let report = ResizeReport { moved, ..report };
    // Growing: the file first, and the disk space the new superblock
    // copies take, so a full disk stops it before anything is committed.
    let grew = is_file && new > file_len;
    if grew {
        let grown = crate::volumes::raw::set_len(&image, new).and_then(|()| crate::volumes::raw::reserve_supers(&image, file_len, new));
        if let Err(e) = grown {
            let _ = crate::volumes::raw::set_len(&image, file_len);
            return Err(e);
        }
    }
    // What holds the lock until the file has its length: the committed
    // filesystem, or the transaction that had nothing to commit.
    let mut _held_fs = None;
    let mut _held_tx = None;
    if new != old {
        tx.set_device_size(devid, new)?;
        match tx.commit() {
            Ok(fs) => _held_fs = Some(fs),
            Err(e) => {
                // Cut the file back only when no superblock took the new size.
                let committed = Filesystem::open(&OpenOptions { writable: false, ..opts.clone() })
                    .and_then(|f| f.dev_items())
                    .map(|items| items.get(&devid).map(|i| i.total_bytes.get()) == Some(new))
                    .unwrap_or(true);
                if grew && !committed {
                    let _ = crate::volumes::raw::set_len(&image, file_len);
                }
                return Err(e);
            }
        }
    } else {
        _held_tx = Some(tx);
    }
    // Shrinking: the file last, still under the lock.
    if is_file && new < file_len {
        crate::volumes::raw::set_len(&image, new)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_like_btrfs_filesystem_resize() {
        let p = |s: &str| s.parse::<ResizeSpec>();
        assert_eq!(p("+64M").unwrap(), ResizeSpec { devid: 1, to: ResizeTo::Grow(64 << 20) });
        assert_eq!(p("2:-1G").unwrap(), ResizeSpec { devid: 2, to: ResizeTo::Shrink(1 << 30) });
        assert_eq!(p("3:max").unwrap(), ResizeSpec { devid: 3, to: ResizeTo::Max });
        assert_eq!(p("min").unwrap(), ResizeSpec { devid: 1, to: ResizeTo::Min });
        assert_eq!(p("300M").unwrap(), ResizeSpec { devid: 1, to: ResizeTo::Set(300 << 20) });
        for bad in ["", "0:+1M", "x:+1M", "2:", "+", "-", "+-5M", "5X", "1:2:3", "-1:max", "18446744073709551616"] {
            assert!(p(bad).is_err(), "{bad:?} parsed");
        }
    }
}
