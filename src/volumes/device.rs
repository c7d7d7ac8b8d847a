//! One image file acting as one btrfs device: positioned reads and writes,
//! and finding its valid superblock copies.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::guard::Lock;
use crate::error::{Error, Result};
use crate::format::superblock::{parse_super, SuperProblem};
use crate::format::{u64_of, SuperBlock, SUPER_INFO_OFFSET, SUPER_INFO_SIZE, SUPER_MIRROR_OFFSETS};

/// What was found at one superblock location.
#[derive(Debug, Clone)]
pub(crate) struct SuperCopy {
    pub(crate) index: usize,
    pub(crate) offset: u64,
    pub(crate) result: std::result::Result<SuperBlock, SuperProblem>,
}

#[derive(Debug)]
pub struct Device {
    pub path: PathBuf,
    /// Only `volumes/` reads and writes image files.
    pub(super) file: File,
    pub(crate) size: u64,
    /// The valid superblock copy with the highest generation on this device.
    pub(crate) sb: SuperBlock,
    pub(crate) devid: u64,
    /// An image that held no data when it was opened (a replacement made
    /// sparse a moment before): the ranges written since. A read of
    /// anything else is zeros without asking the kernel, which would fill
    /// page-cache pages with zeros for every hole read (a rebuild reads
    /// each of the new image's blank copies once before writing it).
    blank: Option<std::sync::Mutex<Written>>,
    /// A new image standing in for a missing device: nothing on it counts
    /// until its superblocks are written, so its copies need no flush of
    /// their own before then (see [`Self::defers_flush`]).
    replacement: bool,
    /// Test builds: the fault plan of the volume (see `volumes::fault`).
    #[cfg(test)]
    pub(crate) fault: std::sync::OnceLock<std::sync::Arc<super::fault::FaultPlan>>,
}

impl Device {
    fn new(path: &Path, file: File, size: u64, sb: SuperBlock) -> Device {
        Device {
            path: path.to_path_buf(),
            file,
            size,
            devid: sb.dev_item.devid.get(),
            sb,
            blank: None,
            replacement: false,
            #[cfg(test)]
            fault: Default::default(),
        }
    }

    /// Open an image read-only and pick its best superblock copy. An image
    /// with no valid copy is an error naming each copy's problem.
    pub fn open(path: &Path, writable: bool) -> Result<Device> {
        Device::open_locked(path, if writable { Lock::Exclusive } else { Lock::Shared })
    }

    /// A new image standing in for a missing device (see
    /// [`super::Replacement`]): locked for writing, its superblock the
    /// filesystem's newest with `dev_item` and generation 0, in memory only.
    pub(crate) fn open_replacement(path: &Path, newest: &SuperBlock, dev_item: crate::format::DevItem) -> Result<Device> {
        let (file, size) = open_file(path, Lock::Exclusive, true)?;
        if size < dev_item.total_bytes.get() {
            return Err(Error::Invalid(format!(
                "{}: {size} bytes, smaller than devid {}'s {}",
                path.display(),
                dev_item.devid.get(),
                dev_item.total_bytes.get()
            )));
        }
        let mut sb = *newest;
        sb.dev_item = dev_item;
        sb.generation = 0.into();
        sb.bytenr = SUPER_INFO_OFFSET.into();
        let blank = holds_no_data(&file).then(Default::default);
        Ok(Device { blank, replacement: true, ..Device::new(path, file, size, sb) })
    }

    /// A new image joining the set (see [`super::Added`]): locked for
    /// writing, its superblock the filesystem's newest with `dev_item`, in
    /// memory only until the commit that adds it writes it.
    pub(crate) fn open_added(path: &Path, newest: &SuperBlock, dev_item: crate::format::DevItem) -> Result<Device> {
        let (file, size) = open_file(path, Lock::Exclusive, true)?;
        if size < dev_item.total_bytes.get() {
            return Err(Error::Invalid(format!("{}: {size} bytes, smaller than {}", path.display(), dev_item.total_bytes.get())));
        }
        let mut sb = *newest;
        sb.dev_item = dev_item;
        sb.bytenr = SUPER_INFO_OFFSET.into();
        Ok(Device::new(path, file, size, sb))
    }

    /// Zero every superblock copy (after `device remove` committed): the
    /// image is no device of the filesystem any more, and nothing should
    /// take it for one.
    pub(crate) fn wipe_supers(&self) -> Result<()> {
        let zero = [0u8; SUPER_INFO_SIZE];
        for &off in SUPER_MIRROR_OFFSETS.iter() {
            if off.saturating_add(u64_of(SUPER_INFO_SIZE)) <= self.size {
                self.write_all_at(off, &zero)?;
            }
        }
        self.sync()
    }

    /// Open with an explicit lock mode (`Exclusive` opens for writing).
    pub fn open_locked(path: &Path, lock: Lock) -> Result<Device> {
        Device::open_locked_for(path, lock, lock == Lock::Exclusive)
    }

    /// Like [`Self::open_locked`]; `writable` false opens the file read-only
    /// whatever the lock (`btrs replace` holds the other devices exclusively
    /// and only reads them: the kernel refuses any write to them).
    pub(crate) fn open_locked_for(path: &Path, lock: Lock, writable: bool) -> Result<Device> {
        let (file, size) = open_file(path, lock, writable)?;
        let copies = read_super_copies(&file, path, size, false)?;
        // Highest generation wins; on a tie the lowest copy, because an fsync
        // (log tree) updates only the primary copy without bumping generation.
        let best = copies
            .iter()
            .filter_map(|c| c.result.as_ref().ok().filter(|sb| sb.bytenr.get() == c.offset))
            .rev()
            .max_by_key(|sb| sb.generation.get())
            .copied();
        match best {
            Some(sb) => Ok(Device::new(path, file, size, sb)),
            None => {
                let why: Vec<String> = copies
                    .iter()
                    .map(|c| match &c.result {
                        Ok(_) => format!("copy {} at {}: bytenr field does not match its location", c.index, c.offset),
                        Err(p) => format!("copy {} at {}: {p}", c.index, c.offset),
                    })
                    .collect();
                if size < SUPER_INFO_OFFSET.saturating_add(u64_of(SUPER_INFO_SIZE)) {
                    return Err(Error::Devices(format!(
                        "{}: not a btrfs image: {size} bytes is too small to hold a superblock",
                        path.display()
                    )));
                }
                Err(Error::Devices(format!("{}: no valid btrfs superblock ({})", path.display(), why.join("; "))))
            }
        }
    }

    /// Open an image without requiring a valid superblock, for tools that show
    /// damaged superblocks (`dump-super`). `sb` is zeroed when no copy is valid.
    pub fn open_raw(path: &Path) -> Result<Device> {
        use zerocopy::FromZeros;
        refuse_directory(path)?;
        let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
        let size = if meta.file_type().is_block_device() { block_device_size(&file, path)? } else { meta.len() };
        let sb = read_super_copies(&file, path, size, true)?.into_iter().find_map(|c| c.result.ok()).unwrap_or_else(SuperBlock::new_zeroed);
        Ok(Device::new(path, file, size, sb))
    }

    pub(crate) fn read_exact_at(&self, physical: u64, buf: &mut [u8]) -> Result<()> {
        #[cfg(test)]
        if self.fault.get().is_some_and(|p| p.fail_reads) {
            return Err(Error::io(
                &self.path,
                format!("read {} bytes at {physical}", buf.len()),
                std::io::Error::other("injected read error"),
            ));
        }
        let end = physical.checked_add(u64_of(buf.len()));
        if end.is_none_or(|e| e > self.size) {
            return Err(Error::io(
                &self.path,
                format!("read {} bytes at {physical}", buf.len()),
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "beyond the end of the image (truncated?)"),
            ));
        }
        if let Some(written) = &self.blank {
            let len = u64_of(buf.len());
            if !written.lock().unwrap_or_else(std::sync::PoisonError::into_inner).touches(physical, len) {
                buf.fill(0);
                return Ok(());
            }
        }
        self.file.read_exact_at(buf, physical).map_err(|e| Error::io(&self.path, format!("read {} bytes at {physical}", buf.len()), e))
    }

    /// A plain positioned read of what is on the image, with no bounds check
    /// and no fault injection: what `dump-super` shows, damaged or not.
    pub(crate) fn read_raw_at(&self, physical: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, physical)
    }

    /// Copies written here may wait for one flush before the device's
    /// superblocks are written (a replacement: until then it is no device
    /// of the set), instead of one flush per repair.
    pub(crate) fn defers_flush(&self) -> bool {
        self.replacement
    }

    /// For an image opened blank (see `blank`): the first range that holds
    /// data the writes through this device did not put there (another
    /// process wrote into the file), rounded to the file's block size.
    /// None when there is none, or when nothing is tracked.
    pub(crate) fn foreign_data(&self) -> Result<Option<(u64, u64)>> {
        let Some(written) = &self.blank else { return Ok(None) };
        let w = written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.unknown {
            return Ok(None);
        }
        let block = rustix::fs::fstat(&self.file).map_or(4096, |st| u64::try_from(st.st_blksize).unwrap_or(4096)).max(1);
        let mut pos = 0u64;
        while pos < self.size {
            let Ok(at) = i64::try_from(pos) else { break };
            let Ok(start) = rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(at)) else { break };
            let from = i64::try_from(start).map_err(|_| Error::Invalid(format!("{}: offset {start}", self.path.display())))?;
            let end = rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(from))
                .map_err(|e| Error::io(&self.path, "seek hole", e.into()))?
                .min(self.size);
            // Every block of [start, end) must overlap something written.
            let mut b = start.checked_div(block).and_then(|q| q.checked_mul(block)).unwrap_or(start);
            while b < end {
                if !w.touches(b, block) {
                    return Ok(Some((b, block)));
                }
                b = b.saturating_add(block);
            }
            pos = end.max(start.saturating_add(1));
        }
        Ok(None)
    }

    /// The file is about to be written other than through
    /// [`Self::write_all_at`] (the bio writer's own descriptors): reads go to
    /// the file from now on.
    pub(super) fn forget_blank(&self) {
        if let Some(written) = &self.blank {
            written.lock().unwrap_or_else(std::sync::PoisonError::into_inner).unknown = true;
        }
    }

    /// The image was opened for writing.
    pub(crate) fn opened_writable(&self) -> Result<bool> {
        let mode = rustix::fs::fcntl_getfl(&self.file).map_err(|e| Error::io(&self.path, "fcntl", e.into()))?;
        Ok(mode & rustix::fs::OFlags::ACCMODE != rustix::fs::OFlags::RDONLY)
    }

    pub(crate) fn write_all_at(&self, physical: u64, buf: &[u8]) -> Result<()> {
        #[cfg(test)]
        if let Some(plan) = self.fault.get() {
            plan.before_write(&self.file, &self.path, physical, buf)?;
        }
        if let Some(written) = &self.blank {
            // Recorded first: a write that fails half way may have landed.
            written.lock().unwrap_or_else(std::sync::PoisonError::into_inner).add(physical, u64_of(buf.len()));
        }
        self.file.write_all_at(buf, physical).map_err(|e| Error::io(&self.path, format!("write {} bytes at {physical}", buf.len()), e))
    }

    /// Start writing `len` bytes at `physical` back to the disk now, without
    /// waiting: long writes then overlap the device's work with the CPU's,
    /// and the flush before the superblocks finds little left. Linux starts
    /// asynchronous writeback of a range's dirty pages for
    /// POSIX_FADV_DONTNEED (and drops only pages already clean). Only a
    /// hint: durability still comes from [`Self::sync`].
    pub(crate) fn start_writeback(&self, physical: u64, len: u64) {
        #[cfg(test)]
        if self.fault.get().is_some() {
            return;
        }
        let _ = rustix::fs::fadvise(&self.file, physical, len, rustix::fs::Advice::DontNeed);
    }

    pub(crate) fn sync(&self) -> Result<()> {
        #[cfg(test)]
        if let Some(plan) = self.fault.get() {
            if !matches!(plan.tick(0), super::fault::Verdict::Go) {
                return Err(Error::io(&self.path, "fsync", std::io::Error::other("injected flush failure")));
            }
        }
        self.file.sync_data().map_err(|e| Error::io(&self.path, "fsync", e))
    }

    /// The generation of this device's best superblock as it is on disk now
    /// (a writer may have committed since the device was opened).
    pub(crate) fn current_generation(&self) -> Result<u64> {
        Ok(read_super_copies(&self.file, &self.path, self.size, false)?
            .iter()
            .filter_map(|c| c.result.as_ref().ok().filter(|sb| sb.bytenr.get() == c.offset && sb.fsid == self.sb.fsid))
            .map(|sb| sb.generation.get())
            .max()
            .unwrap_or(0))
    }

    /// Every superblock copy location that fits on this device, decoded.
    pub(crate) fn super_copies(&self) -> Result<Vec<SuperCopy>> {
        read_super_copies(&self.file, &self.path, self.size, true)
    }
}

/// Whether a commit writes the superblock copy at `offset` on a device of
/// `total_bytes` (its dev item's size): the kernel's write_dev_supers stops at
/// the first copy that does not end before the device does. Copies past it
/// (an image file longer than its device, or one shrunk) are left alone, by
/// commits and by scrub.
pub(crate) fn super_copy_in_use(offset: u64, total_bytes: u64) -> bool {
    offset.saturating_add(u64_of(SUPER_INFO_SIZE)) < total_bytes
}

/// An image opened for reading (and writing when `writable`: never a loop
/// device's backing file), `lock` taken, with its size (a block device's too).
fn open_file(path: &Path, lock: Lock, writable: bool) -> Result<(File, u64)> {
    refuse_directory(path)?;
    let file = std::fs::OpenOptions::new().read(true).write(writable).open(path).map_err(|e| Error::io(path, "open", e))?;
    if writable {
        super::guard::refuse_loop_attached(path)?;
    }
    super::guard::lock(&file, path, lock)?;
    let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
    let size = if meta.file_type().is_block_device() { block_device_size(&file, path)? } else { meta.len() };
    Ok((file, size))
}

/// Whether the file at `path` carries the btrfs magic in its primary
/// superblock (for hints: nothing is verified beyond those 8 bytes).
pub fn has_btrfs_magic(path: &Path) -> bool {
    // The magic follows the superblock's csum (32), fsid (16), bytenr and flags (8 each).
    const MAGIC_AT: u64 = 64;
    let mut magic = [0u8; 8];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut magic, SUPER_INFO_OFFSET + MAGIC_AT))
        .is_ok_and(|()| magic == crate::format::ondisk::BTRFS_MAGIC)
}

/// A directory given where an image file is wanted (opening one read-only
/// succeeds, and it would then read as a too-small image).
pub(crate) fn refuse_directory(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::Invalid(format!("{} is a directory, not an image file", path.display()))),
        _ => Ok(()),
    }
}

/// Whether the file has no data at all, only holes (SEEK_DATA finds none).
/// A filesystem without SEEK_DATA answers no.
fn holds_no_data(file: &File) -> bool {
    matches!(rustix::fs::seek(file, rustix::fs::SeekFrom::Data(0)), Err(rustix::io::Errno::NXIO))
}

/// Byte ranges written, kept disjoint and merged: start → end. `unknown`:
/// the file is written by other means too (see [`Device::forget_blank`]).
#[derive(Debug, Default)]
struct Written {
    ranges: std::collections::BTreeMap<u64, u64>,
    unknown: bool,
}

impl Written {
    /// Whether anything in [start, start + len) may have been written.
    fn touches(&self, start: u64, len: u64) -> bool {
        let end = start.saturating_add(len);
        self.unknown || self.ranges.range(..end).next_back().is_some_and(|(_, &e)| e > start)
    }

    fn add(&mut self, start: u64, len: u64) {
        let (mut s, mut e) = (start, start.saturating_add(len));
        // Absorb every range that overlaps or touches [s, e).
        while let Some((&rs, &re)) = self.ranges.range(..=e).next_back() {
            if re < s {
                break;
            }
            s = s.min(rs);
            e = e.max(re);
            self.ranges.remove(&rs);
        }
        self.ranges.insert(s, e);
    }
}

fn read_super_copies(file: &File, path: &Path, size: u64, all: bool) -> Result<Vec<SuperCopy>> {
    let mut out = Vec::new();
    for (index, &offset) in SUPER_MIRROR_OFFSETS.iter().enumerate() {
        if offset.saturating_add(u64_of(SUPER_INFO_SIZE)) > size {
            break;
        }
        let mut buf = vec![0u8; SUPER_INFO_SIZE];
        let result = match file.read_exact_at(&mut buf, offset) {
            Ok(()) => parse_super(&buf),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(SuperProblem::TooShort),
            Err(e) => return Err(Error::io(path, format!("read superblock at {offset}"), e)),
        };
        out.push(SuperCopy { index, offset, result });
        if !all && index == 0 && out.first().is_some_and(|c| c.result.is_err()) {
            // Keep looking: a damaged primary copy is exactly when the mirrors matter.
            continue;
        }
    }
    Ok(out)
}

fn block_device_size(file: &File, path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file.try_clone().map_err(|e| Error::io(path, "dup", e))?;
    f.seek(SeekFrom::End(0)).map_err(|e| Error::io(path, "seek", e))
}

use std::os::unix::fs::FileTypeExt;

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // tests: a panic is a failure
mod tests {
    use super::*;

    #[test]
    fn written_ranges_merge_and_answer_overlap() {
        let mut w = Written::default();
        assert!(!w.touches(0, u64::MAX));
        w.add(100, 50);
        w.add(300, 100);
        assert!(!w.touches(0, 100) && !w.touches(150, 150) && !w.touches(400, 10));
        assert!(w.touches(149, 1) && w.touches(0, 101) && w.touches(350, 1) && w.touches(0, 1000));
        // Touching and overlapping ranges merge into one.
        w.add(150, 150);
        assert_eq!(w.ranges.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>(), vec![(100, 400)]);
        w.add(50, 60);
        w.add(1000, 1);
        assert_eq!(w.ranges.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>(), vec![(50, 400), (1000, 1001)]);
        w.unknown = true;
        assert!(w.touches(500, 1));
    }

    /// A blank replacement reads zeros without the file until written, then
    /// exactly what was written; data put in the file behind its back after
    /// forget_blank is read too.
    #[test]
    fn a_blank_image_reads_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.img");
        std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        assert!(holds_no_data(&file), "a sparse file holds no data");
        use zerocopy::FromZeros;
        let dev = Device { blank: Some(Default::default()), ..Device::new(&path, file, 1 << 20, SuperBlock::new_zeroed()) };
        let mut buf = vec![7u8; 8192];
        dev.read_exact_at(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        dev.write_all_at(8192, &[9u8; 4096]).unwrap();
        dev.read_exact_at(4096, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0) && buf[4096..].iter().all(|&b| b == 9));
        std::os::unix::fs::FileExt::write_all_at(&std::fs::OpenOptions::new().write(true).open(&path).unwrap(), &[5u8; 16], 0).unwrap();
        dev.forget_blank();
        dev.read_exact_at(0, &mut buf[..16]).unwrap();
        assert_eq!(&buf[..16], &[5u8; 16]);
    }

    /// Data another process puts into a blank image outside what was
    /// written through it is found (attacker's pass on 61ab620: a zero
    /// NODATASUM copy read as blank was never written, and a foreign
    /// write there stayed).
    #[test]
    fn data_written_behind_a_blank_images_back_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.img");
        std::fs::File::create(&path).unwrap().set_len(4 << 20).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        use zerocopy::FromZeros;
        let dev = Device { blank: Some(Default::default()), ..Device::new(&path, file, 4 << 20, SuperBlock::new_zeroed()) };
        assert_eq!(dev.foreign_data().unwrap(), None);
        dev.write_all_at(1 << 20, &[1u8; 65536]).unwrap();
        assert_eq!(dev.foreign_data().unwrap(), None, "its own writes are not foreign");
        let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&other, &[0xaa; 4096], 3 << 20).unwrap();
        let (at, _) = dev.foreign_data().unwrap().expect("the foreign write is found");
        assert!((3 << 20) - 65536 < at + 65536 && at <= 3 << 20, "found at {at}");
    }
}
