//! Image files for a filesystem being made (`mkfs`): opened or created,
//! checked for a filesystem already there, locked, sized once a layout fits,
//! wiped, written at device offsets (file data copied file to file where the
//! host allows), and flushed. A failed mkfs gives existing images their
//! lengths back and removes the ones it created.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::chunks::MapEntry;
use super::guard::{lock_exclusive, refuse_loop_attached};
use crate::error::{Error, Result};
use crate::format::{u64_of, BTRFS_MAGIC, SUPER_INFO_OFFSET, SUPER_INFO_SIZE, SUPER_MIRROR_OFFSETS};

/// Largest end of a filesystem in its image file (offset + size): the
/// largest file size Linux allows (MAX_LFS_FILESIZE).
pub(crate) const MAX_IMAGE_END: u64 = i64::MAX.unsigned_abs();

impl NewImages {
    /// Open (or, `may_create`, create) every image; their lengths change only
    /// once a layout is known to fit ([`Self::resize`]), so a failed mkfs
    /// leaves an existing file's length alone. Without `force`, an image
    /// that holds a filesystem is refused.
    pub(crate) fn open(paths: &[PathBuf], may_create: bool, force: bool, offset: u64) -> Result<NewImages> {
        let mut files = Vec::new();
        let mut file_lens = Vec::new();
        for p in paths {
            let (f, len) = open_image(p, may_create, force, offset)?;
            files.push(f);
            file_lens.push(len);
        }
        Ok(NewImages {
            files,
            paths: paths.to_vec(),
            file_lens,
            offset,
            may_cut: Cell::new(force),
            copy_range: Cell::new(true),
            copied: Cell::new(0),
            written: Cell::new(0),
        })
    }

    /// Existing files may be cut shorter too (`--shrink` asks for the
    /// smallest image whatever the file's length).
    pub(crate) fn allow_cut(&self) {
        self.may_cut.set(true);
    }

    /// Each image file's length when it was opened.
    pub(crate) fn file_lens(&self) -> &[u64] {
        &self.file_lens
    }

    /// Make each device `sizes[i]` bytes long (the file `--offset` more).
    /// Inside a larger file (`--offset`), whatever follows the filesystem is
    /// someone else's (a backup GPT, other partitions): the file only ever
    /// grows. On failure the images resized so far get their lengths back.
    pub(crate) fn resize(&self, sizes: &[u64]) -> Result<()> {
        // An existing file is never cut shorter unless --force says so:
        // what lies past the new end is not the filesystem's to drop.
        if !self.may_cut.get() && self.offset == 0 {
            for ((p, s), len) in self.paths.iter().zip(sizes).zip(&self.file_lens) {
                if *s < *len {
                    return Err(Error::Invalid(format!(
                        "{}: the file is {len} bytes long and the filesystem {s}: making it would cut off the rest of \
                         the file; use --force to cut it, or another file",
                        p.display()
                    )));
                }
            }
        }
        for (i, ((f, p), s)) in self.files.iter().zip(&self.paths).zip(sizes).enumerate() {
            let cur = self.file_lens.get(i).map_or(0, |l| l.saturating_sub(self.offset));
            if self.offset == 0 || *s > cur {
                let r = match self.offset.checked_add(*s).filter(|&e| e <= MAX_IMAGE_END) {
                    Some(end) => f.set_len(end).map_err(|e| Error::io(p, "set size", e)),
                    None => Err(Error::Invalid(format!(
                        "{}: --offset {} plus {s} bytes is past the largest file size",
                        p.display(),
                        self.offset
                    ))),
                };
                if let Err(e) = r {
                    // Nothing is written yet: the images resized so far get
                    // their lengths back (new ones are removed by the caller).
                    for (g, len) in self.files.iter().zip(&self.file_lens).take(i) {
                        let _ = g.set_len(*len);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Some device of `sizes[i]` bytes holds a btrfs superblock magic at one
    /// of its copy locations.
    pub(crate) fn hold_btrfs(&self, sizes: &[u64]) -> bool {
        self.files.iter().zip(sizes).any(|(f, size)| {
            SUPER_MIRROR_OFFSETS.iter().filter(|&&m| m.saturating_add(u64_of(SUPER_INFO_SIZE)) <= *size).any(|&m| {
                let mut magic = [0u8; 8];
                let at = self.offset.checked_add(m).and_then(|at| at.checked_add(64));
                at.is_some_and(|at| f.read_exact_at(&mut magic, at).is_ok()) && magic == BTRFS_MAGIC
            })
        })
    }

    /// File data bytes written by copy_file_range, and by pwrite (all copies).
    pub(crate) fn data_copied_and_written(&self) -> (u64, u64) {
        (self.copied.get(), self.written.get())
    }
}

/// The first image path that names the same file as an earlier one, however
/// spelt (`a.img` and `./a.img`, a symlink, a hard link): (earlier, later).
/// Files that exist compare by device and inode; paths not yet there by their
/// directory's real path and their name, or as spelt when that directory
/// cannot be resolved either. Without this, mkfs would open the
/// file twice and wait on its own lock, then blame "another process".
pub(crate) fn same_file_twice(paths: &[PathBuf]) -> Option<(usize, usize)> {
    use std::os::unix::fs::MetadataExt;
    #[derive(PartialEq)]
    enum Id {
        Inode(u64, u64),
        Path(PathBuf),
    }
    let id = |p: &PathBuf| match std::fs::metadata(p) {
        Ok(m) => Id::Inode(m.dev(), m.ino()),
        Err(_) => {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            match (std::fs::canonicalize(dir), p.file_name()) {
                (Ok(d), Some(n)) => Id::Path(d.join(n)),
                _ => Id::Path(p.clone()),
            }
        }
    };
    let ids: Vec<Id> = paths.iter().map(id).collect();
    ids.iter().enumerate().find_map(|(j, b)| ids.iter().take(j).position(|a| a == b).map(|i| (i, j)))
}

/// A new, empty image file of `size` bytes (sparse) for `btrs replace`;
/// refused when `path` exists. Removed again with [`remove_created`].
pub(crate) fn create_blank(path: &Path, size: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| Error::io(path, "create", e))?;
    let r = f.set_len(size).map_err(|e| Error::io(path, "size", e));
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// The images of `paths` that do not exist yet (a failed mkfs removes them
/// again with [`remove_created`]).
pub(crate) fn not_yet_there(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths.iter().filter(|p| !p.exists()).cloned().collect()
}

/// Remove images this mkfs created, after it failed.
pub(crate) fn remove_created(paths: Vec<PathBuf>) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// The image files of a filesystem being made, open for writing and
/// locked, written at device (physical) offsets.
pub(crate) struct NewImages {
    files: Vec<File>,
    paths: Vec<PathBuf>,
    /// Their lengths when opened, given back when sizing them fails.
    file_lens: Vec<u64>,
    /// Where the filesystem starts in every image file (`--offset`).
    offset: u64,
    /// `--force` or `--shrink`: an existing file may also be cut shorter.
    may_cut: Cell<bool>,
    /// copy_file_range still worth trying (turned off at its first refusal).
    copy_range: Cell<bool>,
    /// File data bytes written by copy_file_range and by pwrite (all copies).
    copied: Cell<u64>,
    written: Cell<u64>,
}

impl NewImages {
    /// Image file and path of `devid` (1 for the first image).
    fn image(&self, devid: u64) -> Result<(&File, &PathBuf)> {
        let i = devid.checked_sub(1).and_then(|i| usize::try_from(i).ok());
        match i.and_then(|i| self.files.get(i).zip(self.paths.get(i))) {
            Some(fp) => Ok(fp),
            None => Err(Error::Invalid(format!("no device {devid}"))),
        }
    }

    /// Where `physical` of a device is in its image file (past `--offset`).
    fn file_offset(&self, physical: u64) -> Result<u64> {
        physical.checked_add(self.offset).ok_or_else(|| Error::Invalid(format!("offset {physical} too large")))
    }

    pub(crate) fn write_phys(&self, devid: u64, physical: u64, data: &[u8]) -> Result<()> {
        let (f, p) = self.image(devid)?;
        let at = self.file_offset(physical)?;
        f.write_all_at(data, at).map_err(|e| Error::io(p, format!("write at {at}"), e))
    }

    /// Write `data` at `physical`; its first `valid` bytes are also bytes
    /// `src_off..` of `src`: copied file to file where the host allows (a
    /// reflink on xfs or btrfs, an in-kernel copy elsewhere), the rest — and
    /// everything once copy_file_range is refused — written from `data`.
    pub(crate) fn copy_phys(&self, devid: u64, physical: u64, data: &[u8], src: &File, src_off: u64, valid: u64) -> Result<()> {
        let mut done = 0usize;
        let valid = usize::try_from(valid).map_or(data.len(), |v| v.min(data.len()));
        if self.copy_range.get() && valid > 0 {
            let (dst, _) = self.image(devid)?;
            let start = self.file_offset(physical)?;
            while let Some(left) = valid.checked_sub(done).filter(|&l| l > 0) {
                let from = src_off.checked_add(u64_of(done));
                let to = start.checked_add(u64_of(done));
                let (Some(mut from), Some(mut to)) = (from, to) else { break };
                match rustix::fs::copy_file_range(src, Some(&mut from), dst, Some(&mut to), left) {
                    Ok(0) | Err(_) => {
                        // EXDEV, EINVAL, EOPNOTSUPP, ENOSYS, a short source:
                        // plain writes from here on.
                        self.copy_range.set(false);
                        break;
                    }
                    Ok(n) => done = done.saturating_add(n.min(left)),
                }
            }
            self.copied.set(self.copied.get().saturating_add(u64_of(done)));
        }
        self.written.set(self.written.get().saturating_add(u64_of(data.len().saturating_sub(done))));
        match data.get(done..) {
            Some(rest) if !rest.is_empty() => {
                let at = physical.checked_add(u64_of(done)).ok_or_else(|| Error::Invalid(format!("offset {physical} too large")))?;
                self.write_phys(devid, at, rest)
            }
            _ => Ok(()),
        }
    }

    /// Count `n` bytes of file data written by pwrite.
    fn count_written(&self, n: usize) {
        self.written.set(self.written.get().saturating_add(u64_of(n)));
    }

    /// Start writing file data back now, without waiting (Linux starts
    /// asynchronous writeback of dirty pages for POSIX_FADV_DONTNEED): the
    /// data's disk writes overlap the rest of mkfs, and the final flush finds
    /// little left. A hint only; the images are fsynced at the end.
    pub(crate) fn start_writeback(&self, devid: u64, physical: u64, len: u64) {
        if let (Ok((f, _)), Ok(at)) = (self.image(devid), self.file_offset(physical)) {
            let _ = rustix::fs::fadvise(f, at, len, rustix::fs::Advice::DontNeed);
        }
    }

    /// Make `len` bytes at `physical` read as zeros. A range that is already a
    /// hole (a fresh sparse image) needs nothing; otherwise punching a hole is a
    /// metadata change where writing zeros would allocate and later flush real
    /// blocks. Zeros are written where the host filesystem cannot punch.
    pub(crate) fn zero_phys(&self, devid: u64, physical: u64, len: u64) -> Result<()> {
        use rustix::fs::{fallocate, seek, FallocateFlags, SeekFrom};
        let (f, _) = self.image(devid)?;
        let at = self.file_offset(physical)?;
        let end = at.checked_add(len).ok_or_else(|| Error::Invalid(format!("offset {physical} + {len} too large")))?;
        match i64::try_from(at).map(|at| seek(f, SeekFrom::Data(at))) {
            Ok(Ok(next)) if next >= end => return Ok(()),
            Ok(Err(rustix::io::Errno::NXIO)) => return Ok(()),
            _ => {}
        }
        if fallocate(f, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, at, len).is_ok() {
            return Ok(());
        }
        let len = usize::try_from(len).map_err(|_| Error::Invalid(format!("{len} bytes of zeros")))?;
        self.write_phys(devid, physical, &vec![0u8; len])
    }

    /// fsync every image, in parallel: each waits on its own disk flush.
    pub(crate) fn sync(&self) -> Result<()> {
        let images: Vec<(&File, &PathBuf)> = self.files.iter().zip(&self.paths).collect();
        super::in_parallel(&images, "fsync", |(f, p)| f.sync_data().map_err(|e| Error::io(p, "fsync", e)))
    }
}

/// Writes at logical addresses through a planned chunk map, to every copy.
pub(crate) struct ChunkWriter<'a> {
    pub(crate) devs: &'a NewImages,
    pub(crate) map: Vec<MapEntry>,
}

impl ChunkWriter<'_> {
    /// Write `data` at `logical` to every copy, split at stripe boundaries.
    pub(crate) fn write(&self, logical: u64, data: &[u8]) -> Result<()> {
        self.write_from(logical, data, None)
    }

    /// [`Self::write`] for file data (`data` Some), counted per copy, and
    /// copied file to file where `data` says the bytes also lie in a file
    /// (the data sink of `mkfs --rootdir`).
    pub(crate) fn write_from(&self, logical: u64, data: &[u8], file_data: Option<Option<(&File, u64, u64)>>) -> Result<()> {
        let mut done = 0usize;
        while let Some(rest) = data.get(done..).filter(|r| !r.is_empty()) {
            let at = logical.checked_add(u64_of(done)).ok_or_else(|| Error::Invalid(format!("logical {logical} + {done} overflows")))?;
            let entry = self
                .map
                .iter()
                .find(|e| e.logical <= at && at < e.end())
                .ok_or_else(|| Error::Invalid(format!("logical {at} is in no chunk")))?;
            let (copies, contiguous) = entry.map(at)?;
            let n = usize::try_from(contiguous).map_or(rest.len(), |c| c.min(rest.len()));
            let piece = rest.get(..n).unwrap_or(rest);
            for c in copies {
                match file_data {
                    Some(Some((f, off, valid))) => {
                        let valid_here = valid.saturating_sub(u64_of(done)).min(u64_of(n));
                        let src_off = off
                            .checked_add(u64_of(done))
                            .ok_or_else(|| Error::Invalid(format!("source offset {off} + {done} overflows")))?;
                        self.devs.copy_phys(c.devid, c.physical, piece, f, src_off, valid_here)?
                    }
                    Some(None) => {
                        self.devs.count_written(n);
                        self.devs.write_phys(c.devid, c.physical, piece)?
                    }
                    None => self.devs.write_phys(c.devid, c.physical, piece)?,
                }
                if file_data.is_some() {
                    self.devs.start_writeback(c.devid, c.physical, u64_of(n));
                }
            }
            done = done.saturating_add(n.max(1));
        }
        Ok(())
    }
}

/// Name the filesystem or signature found at the start of an image, if any.
fn existing_signature(f: &File, offset: u64) -> Option<&'static str> {
    let mut buf = vec![0u8; 128 * 1024];
    let n = read_up_to(f, &mut buf, offset);
    let b = buf.get(..n).unwrap_or_default();
    let at = |off: usize, sig: &[u8]| off.checked_add(sig.len()).and_then(|end| b.get(off..end)) == Some(sig);
    if usize::try_from(SUPER_INFO_OFFSET).is_ok_and(|o| at(o.saturating_add(64), &BTRFS_MAGIC)) {
        return Some("btrfs");
    }
    if at(1080, &[0x53, 0xef]) {
        return Some("ext2/3/4");
    }
    if at(0, b"XFSB") {
        return Some("xfs");
    }
    if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        return Some("swap");
    }
    None
}

/// Read what there is of `buf.len()` bytes at `off`; how many were read.
fn read_up_to(f: &File, buf: &mut [u8], off: u64) -> usize {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        let Some(at) = off.checked_add(u64_of(done)) else { break };
        match f.read_at(rest, at) {
            Ok(0) | Err(_) => break,
            Ok(n) => done = done.saturating_add(n),
        }
    }
    done
}

/// Open (or create) an image; its size is set only once the layout is known
/// to fit, so a failed mkfs leaves an existing file's length alone.
fn open_image(path: &Path, may_create: bool, force: bool, offset: u64) -> Result<(File, u64)> {
    super::device::refuse_directory(path)?;
    refuse_loop_attached(path)?;
    let exists = path.exists();
    if !exists && !may_create {
        return Err(Error::Invalid(format!("{}: does not exist; give --size or --shrink to create it", path.display())));
    }
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(|e| Error::io(path, "open", e))?;
    lock_exclusive(&f, path)?;
    let meta = f.metadata().map_err(|e| Error::io(path, "stat", e))?;
    if !meta.is_file() {
        return Err(Error::Unsupported(format!("{}: not a regular file (btrs makes filesystems in image files)", path.display())));
    }
    if exists && !force {
        if let Some(sig) = existing_signature(&f, offset) {
            return Err(Error::Devices(format!("{} contains a {sig} filesystem; use --force to overwrite it", path.display())));
        }
        // A filesystem at the start of the file that --offset would write
        // into (a partition table there has no such signature).
        if offset > 0 && offset < meta.len() {
            if let Some(sig) = existing_signature(&f, 0) {
                return Err(Error::Devices(format!(
                    "{} contains a {sig} filesystem at offset 0 that a filesystem at --offset {offset} would overwrite; use --force to overwrite it",
                    path.display()
                )));
            }
        }
    }
    Ok((f, meta.len()))
}
