//! File data: walking extents, reading data with checksum verification and
//! fallback to other copies, decompression, holes.

use super::{Filesystem, Inode, InodeId};
use crate::error::{Error, Result};
use crate::format::items::{FileExtent, FileExtentKind};
use crate::format::*;

/// Bytes of a file handed to a consumer in file order.
#[derive(Debug)]
pub enum FileChunk<'a> {
    Data { offset: u64, data: &'a [u8] },
    /// Reads as zeros: a hole, a prealloc extent, or implicit (NO_HOLES) gaps.
    Hole { offset: u64, len: u64 },
}

/// Largest piece read from disk at once for uncompressed extents.
const READ_PIECE: u64 = 4 << 20;
/// A compressed extent's on-disk size is capped at 128 KiB by the kernel;
/// allow slack but refuse absurd values before allocating.
const MAX_COMPRESSED_DISK: u64 = 1 << 20;

impl Filesystem {
    /// Stream a regular file's content, in order, ending at `inode.size`.
    pub fn read_file(&self, inode: &Inode, sink: &mut dyn FnMut(FileChunk<'_>) -> Result<()>) -> Result<()> {
        self.read_file_as(inode, &format!("inode {}", inode.id), sink)
    }

    /// Like `read_file`, naming the file `label` (usually its path) in
    /// warnings and errors.
    pub fn read_file_as(&self, inode: &Inode, label: &str, sink: &mut dyn FnMut(FileChunk<'_>) -> Result<()>) -> Result<()> {
        let id = label;
        let size = inode.size;
        let nodatasum = inode.flags & INODE_NODATASUM != 0;
        let mut pos = 0u64;
        for (off, fe) in self.file_extents(inode.id)? {
            if off >= size {
                break;
            }
            if off < pos {
                return Err(Error::corrupt(id.to_string(), format!("extent at {off} overlaps the previous one ending at {pos}")));
            }
            if off > pos {
                sink(FileChunk::Hole { offset: pos, len: off - pos })?;
            }
            let len = fe.file_len().min(size - off);
            self.read_extent(id, off, len, &fe, nodatasum, sink)?;
            pos = off + len;
        }
        if pos < size {
            sink(FileChunk::Hole { offset: pos, len: size - pos })?;
        }
        Ok(())
    }

    /// A whole file in memory (for small files and tests).
    pub fn read_file_bytes(&self, id: InodeId) -> Result<Vec<u8>> {
        let inode = self.inode(id)?;
        let cap = usize::try_from(inode.size).map_err(|_| Error::Invalid("file too large for memory".into()))?;
        let mut out = Vec::with_capacity(cap.min(1 << 30));
        self.read_file(&inode, &mut |c| {
            match c {
                FileChunk::Data { data, .. } => out.extend_from_slice(data),
                FileChunk::Hole { len, .. } => out.resize(out.len() + len as usize, 0),
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn read_extent(
        &self,
        id: &str,
        off: u64,
        len: u64,
        fe: &FileExtent,
        nodatasum: bool,
        sink: &mut dyn FnMut(FileChunk<'_>) -> Result<()>,
    ) -> Result<()> {
        let at = || format!("{id} file offset {off}");
        if fe.encryption != 0 || fe.other_encoding != 0 {
            return Err(Error::Unsupported(format!("{}: encrypted or encoded extent", at())));
        }
        match &fe.kind {
            FileExtentKind::Inline { data } => {
                let plain;
                let bytes: &[u8] = if fe.compression == COMPRESS_NONE {
                    data
                } else {
                    plain = self.decompress(fe.compression, data, fe.ram_bytes, &at())?;
                    &plain
                };
                let n = (len as usize).min(bytes.len());
                sink(FileChunk::Data { offset: off, data: &bytes[..n] })?;
                if (n as u64) < len {
                    sink(FileChunk::Hole { offset: off + n as u64, len: len - n as u64 })?;
                }
                Ok(())
            }
            FileExtentKind::Regular { prealloc, disk_bytenr, disk_num_bytes, offset, .. } => {
                if *prealloc || *disk_bytenr == 0 {
                    return sink(FileChunk::Hole { offset: off, len });
                }
                if fe.compression == COMPRESS_NONE {
                    let mut done = 0u64;
                    while done < len {
                        let n = (len - done).min(READ_PIECE);
                        let logical = disk_bytenr + offset + done;
                        let buf = self.read_data(logical, n, nodatasum, &|l| {
                            format!("{id} file offset {}", off + done + (l - logical))
                        })?;
                        sink(FileChunk::Data { offset: off + done, data: &buf })?;
                        done += n;
                    }
                    Ok(())
                } else {
                    if *disk_num_bytes > MAX_COMPRESSED_DISK || fe.ram_bytes > MAX_COMPRESSED_DISK {
                        return Err(Error::corrupt(at(), format!("compressed extent of {disk_num_bytes} bytes ({} uncompressed) is too large", fe.ram_bytes)));
                    }
                    let raw = self.read_data(*disk_bytenr, *disk_num_bytes, nodatasum, &|l| {
                        format!("{id} compressed extent at file offset {off} (disk byte {})", l - disk_bytenr)
                    })?;
                    let plain = self.decompress(fe.compression, &raw, fe.ram_bytes, &at())?;
                    let start = (*offset as usize).min(plain.len());
                    let end = (start + len as usize).min(plain.len());
                    sink(FileChunk::Data { offset: off, data: &plain[start..end] })?;
                    if ((end - start) as u64) < len {
                        sink(FileChunk::Hole { offset: off + (end - start) as u64, len: len - (end - start) as u64 })?;
                    }
                    Ok(())
                }
            }
        }
    }

    /// Data checksums for each sector of [logical, logical+len); `None` where the csum tree has none.
    pub fn data_csums(&self, logical: u64, len: u64) -> Result<Vec<Option<CsumBytes>>> {
        let ss = self.sectorsize as u64;
        let nsect = len.div_ceil(ss) as usize;
        let mut out = vec![None; nsect];
        let root = match self.tree_root(CSUM_TREE_OBJECTID) {
            Ok(r) => r,
            Err(Error::NotFound(_)) => return Ok(out),
            Err(e) => return Err(e),
        };
        let csize = self.csum.size();
        let end = logical + len;
        let mut c = self.reader.seek_le(&root, Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, logical))?;
        while let Some(item) = c.next_item()? {
            let k = item.key;
            if k.objectid != EXTENT_CSUM_OBJECTID || k.item_type != EXTENT_CSUM_KEY {
                if k > Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, end) {
                    break;
                }
                continue;
            }
            if k.offset >= end {
                break;
            }
            let data = item.data();
            if data.len() % csize != 0 {
                return Err(Error::corrupt(format!("csum item {k}"), format!("size {} not a multiple of {csize}", data.len())));
            }
            for (i, c) in data.chunks_exact(csize).enumerate() {
                let s = k.offset + i as u64 * ss;
                if s >= end {
                    break;
                }
                if s >= logical && (s - logical) % ss == 0 {
                    let mut v = [0u8; CSUM_SIZE];
                    v[..csize].copy_from_slice(c);
                    out[((s - logical) / ss) as usize] = Some(v);
                }
            }
        }
        Ok(out)
    }

    /// Read data bytes, verifying each sector against the csum tree (unless
    /// `nodatasum`) and serving bad sectors from another copy. `describe`
    /// turns a logical address into "which file, which offset" for messages.
    pub fn read_data(&self, logical: u64, len: u64, nodatasum: bool, describe: &dyn Fn(u64) -> String) -> Result<Vec<u8>> {
        let vol = self.volume();
        let ss = self.sectorsize as u64;
        let n = usize::try_from(len).map_err(|_| Error::Invalid("read too large".into()))?;
        let mut buf = vec![0u8; n];
        let copies = vol.num_copies(logical).map_err(|e| e.within(describe(logical)))?;
        // First copy that reads at all.
        let mut first_err = None;
        let mut base = None;
        for m in 0..copies {
            match vol.read_copy(logical, &mut buf, m) {
                Ok(()) => {
                    base = Some(m);
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let Some(base) = base else {
            return Err(first_err.unwrap_or_else(|| Error::Devices("no copy readable".into())).within(describe(logical)));
        };
        if nodatasum || logical % ss != 0 {
            return Ok(buf);
        }
        let csums = self.data_csums(logical, len)?;
        let mut sector = vec![0u8; ss as usize];
        for (i, want) in csums.iter().enumerate() {
            let Some(want) = want else { continue };
            let s = i * ss as usize;
            let e = (s + ss as usize).min(n);
            if e - s < ss as usize {
                continue;
            }
            if self.csum.matches(&self.csum.compute(&buf[s..e]), want) {
                continue;
            }
            let sl = logical + s as u64;
            let mut fixed = false;
            for m in (0..copies).filter(|&m| m != base) {
                if vol.read_copy(sl, &mut sector, m).is_ok() && self.csum.matches(&self.csum.compute(&sector), want) {
                    buf[s..e].copy_from_slice(&sector);
                    let bad = vol.locate(sl, base).ok();
                    self.warn(format!(
                        "{}: csum mismatch on copy {}{}; read copy {} instead",
                        describe(sl),
                        base + 1,
                        bad.map(|p| format!(" (devid {} physical {})", p.devid, p.physical)).unwrap_or_default(),
                        m + 1
                    ));
                    fixed = true;
                    break;
                }
            }
            if !fixed {
                let locs: Vec<String> = (0..copies)
                    .filter_map(|m| vol.locate(sl, m).ok().map(|p| format!("copy {} devid {} physical {}", m + 1, p.devid, p.physical)))
                    .collect();
                return Err(Error::corrupt(
                    describe(sl),
                    format!("data csum mismatch at logical {sl} on every copy ({})", locs.join(", ")),
                ));
            }
        }
        Ok(buf)
    }
}
