//! Files on the host that btrs copies in (`mkfs --rootdir`, `put`): opened
//! without touching their atime, their data ranges found with
//! SEEK_DATA/SEEK_HOLE so holes stay holes, their xattrs and device numbers.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};

pub(crate) fn io(path: &Path, op: &str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    let op = op.to_string();
    move |e| Error::io(path, op, e)
}

/// Linux dev_t (glibc encoding) to the kernel's internal MKDEV (major << 20 | minor),
/// which is what btrfs stores in the inode's rdev.
pub(crate) fn host_rdev_to_btrfs(rdev: u64) -> u64 {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    ((major & 0xfff) << 20) | (minor & 0xf_ffff)
}

/// Open a source file for reading without touching its atime (O_NOATIME needs
/// ownership or CAP_FOWNER; fall back to a plain open), so that making an image
/// does not change the tree it is made from and two runs see the same times.
pub(crate) fn open_source(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let noatime = rustix::fs::OFlags::NOATIME.bits() as i32;
    match std::fs::OpenOptions::new().read(true).custom_flags(noatime).open(path) {
        Ok(f) => Ok(f),
        Err(_) => File::open(path).map_err(io(path, "open")),
    }
}

pub(crate) fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Data ranges of a file, sector aligned, via SEEK_DATA/SEEK_HOLE so holes stay holes.
pub(crate) fn data_ranges(file: &File, path: &Path, size: u64, sector: u64) -> Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(file, SeekFrom::Data(pos as i64)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: treat the file as all data.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => {
                out = vec![(0, round_up(size, sector))];
                break;
            }
            Err(e) => return Err(Error::io(path, "seek data", e.into())),
        };
        if start >= size {
            break;
        }
        let end = match seek(file, SeekFrom::Hole(start as i64)) {
            Ok(e) => e.min(size),
            Err(e) => return Err(Error::io(path, "seek hole", e.into())),
        };
        out.push((start, end));
        pos = end.max(start + 1);
    }
    Ok(sector_ranges(out.into_iter(), sector))
}

/// Byte ranges (in order) widened to whole sectors, touching ones merged.
pub(crate) fn sector_ranges(ranges: impl Iterator<Item = (u64, u64)>, sector: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in ranges {
        let (s, e) = (start / sector * sector, round_up(end, sector));
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

pub(crate) fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    // The xattr crate uses the l*xattr calls: symlinks' own attributes, not their targets'.
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => return Ok(out),
        Err(e) => return Err(Error::io(path, "listxattr", e)),
    };
    for name in names {
        if let Some(v) = xattr::get(path, &name).map_err(io(path, "getxattr"))? {
            out.push((name.as_bytes().to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_is_stored_as_kernel_mkdev() {
        // glibc makedev(8, 300) and makedev(259, 70000).
        let glibc = |major: u64, minor: u64| ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12);
        assert_eq!(host_rdev_to_btrfs(glibc(8, 300)), (8 << 20) | 300);
        assert_eq!(host_rdev_to_btrfs(glibc(259, 70000)), (259 << 20) | 70000);
    }
}
