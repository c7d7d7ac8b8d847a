//! Writes to image files outside any filesystem: the damage that test
//! fixtures put on purpose, blank images for tests, and the reference images
//! unpacked for tests. Nothing here reads or keeps a superblock.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Overwrite `bytes` at byte `offset` of the image at `path`, and flush.
pub(crate) fn patch(path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, "open", e))?;
    f.write_all_at(bytes, offset).map_err(|e| Error::io(path, format!("write {} bytes at {offset}", bytes.len()), e))?;
    f.sync_all().map_err(|e| Error::io(path, "fsync", e))
}

/// Make `path` an image file of `len` bytes: created (sparse) when missing,
/// its length set when not.
pub fn set_len(path: &Path, len: u64) -> Result<()> {
    #[cfg(test)]
    if let Some(plan) = super::fault::for_writers() {
        plan.before_set_len(path, len)?;
    }
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path).map_err(|e| Error::io(path, "open", e))?;
    f.set_len(len).map_err(|e| Error::io(path, "set size", e))
}

/// Make a new image file of `len` bytes at `path` (which must not exist),
/// its superblock copies' disk space allocated (see [`reserve_supers`]).
/// A failure removes the file again.
pub(crate) fn create_new(path: &Path, len: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| Error::io(path, "create", e))?;
    let sized = f.set_len(len).map_err(|e| Error::io(path, "set size", e));
    drop(f);
    let r = sized.and_then(|()| reserve_supers(path, 0, len));
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Up to `len` bytes of the file at `path` from `offset` (fewer at its end).
pub(crate) fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut buf = Vec::with_capacity(len);
    let mut at = std::io::BufReader::new(f);
    std::io::Seek::seek(&mut at, std::io::SeekFrom::Start(offset)).map_err(|e| Error::io(path, format!("seek to {offset}"), e))?;
    at.take(crate::format::u64_of(len)).read_to_end(&mut buf).map_err(|e| Error::io(path, format!("read at {offset}"), e))?;
    Ok(buf)
}

/// Allocate the disk space of every superblock copy that lies in
/// `from..to` of the image at `path` (a grown file is a hole there), so that
/// a full disk fails now and not in the middle of a commit's superblocks.
pub fn reserve_supers(path: &Path, from: u64, to: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, "open", e))?;
    for &off in crate::format::SUPER_MIRROR_OFFSETS.iter().filter(|&&o| o >= from && o < to) {
        let len = crate::format::u64_of(crate::format::SUPER_INFO_SIZE);
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::KEEP_SIZE, off, len)
            .map_err(|e| Error::io(path, format!("allocate {len} bytes at {off}"), e.into()))?;
    }
    Ok(())
}

/// The length of the image file at `path`.
pub fn len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path).map_err(|e| Error::io(path, "stat", e))?.len())
}

/// Decompress a zstd-packed image (the reference images under `fixtures/`),
/// leaving all-zero runs as holes.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)] // OK: n ≤ buf.len() (64 KiB); len counts one file's bytes.
#[cfg(test)]
pub(crate) fn unpack_zstd(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut dec = zstd::stream::read::Decoder::new(std::fs::File::open(src)?)?;
    dec.window_log_max(31)?;
    let mut out = std::fs::File::create(dst)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match dec.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(n as i64))?;
        } else {
            out.write_all(&buf[..n])?;
        }
        len += n as u64;
    }
    out.set_len(len)
}
