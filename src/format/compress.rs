//! Codecs for btrfs compressed extents, byte-compatible with the Linux kernel
//! (fs/btrfs/{zlib,lzo,zstd}.c).
//!
//! A compressed file extent (regular or inline) stores one compressed stream
//! whose decompressed size is the extent's `ram_bytes`. How the stream is
//! framed depends on the algorithm:
//!
//! * zlib: a plain zlib stream (RFC 1950 header, deflate data, adler32).
//! * zstd: one zstd frame. The kernel writes frames with a window of at most
//!   128 KiB and reads them with that same limit.
//! * lzo: a btrfs-specific container around LZO1X data:
//!
//!   ```text
//!   [total: le32]                 length of everything, this header included
//!   [seg_len: le32][seg_len bytes of LZO1X]   one segment per sector of input
//!   [seg_len: le32][...]
//!   ```
//!
//!   A segment header never straddles a sector boundary (counted from the
//!   start of the compressed data): when fewer than 4 bytes remain in the
//!   current sector after a segment, they are zero padding and the next
//!   header starts at the boundary. Segment *payloads* may straddle sectors.
//!   Inline extents use the same container with a single segment.
//!
//! Decompression always yields exactly `ram_bytes` bytes: a stream that ends
//! early is padded with zeros (the kernel does the same, e.g. the last
//! extent of a file whose size is not sector aligned has `ram_bytes` rounded
//! up to the sector size while the stream only holds the real bytes), and a
//! stream that would produce more is cut off.

// Bytes here come from images and users: every sum, index and cast is
// checked, or allowed where it cannot fail with the reason beside it.
#![warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]

use std::fmt;
use std::io::Write;

/// Most uncompressed bytes one compressed extent may cover
/// (`BTRFS_MAX_UNCOMPRESSED`).
pub const MAX_UNCOMPRESSED: usize = 128 * 1024;

/// Most bytes a compressed extent may occupy on disk (`BTRFS_MAX_COMPRESSED`).
pub const MAX_COMPRESSED: usize = 128 * 1024;

/// Largest `out_len` that [`decompress`] accepts. Real extents never exceed
/// [`MAX_UNCOMPRESSED`]; the slack only exists so a slightly odd but harmless
/// `ram_bytes` does not become a hard error, while a corrupt one cannot make
/// us allocate gigabytes.
pub const MAX_DECOMPRESSED_LEN: usize = 1024 * 1024;

/// Size of the lzo total-length header and of each segment header.
const LZO_LEN: usize = 4;

/// The kernel caps the zstd window at 128 KiB both when writing and when
/// reading (`ZSTD_BTRFS_MAX_WINDOWLOG`). Using the same limit for reading
/// keeps the decoder's memory bounded whatever a frame header claims.
const ZSTD_MAX_WINDOW_LOG: u32 = 17;

const ZLIB_DEFAULT_LEVEL: i32 = 3;
const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// Compression type of a file extent, with the values used on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    #[default]
    None,
    Zlib,
    Lzo,
    Zstd,
}

impl Compression {
    /// Parses the on-disk `compression` byte of a file extent item.
    pub fn from_raw(raw: u8) -> Result<Self, CompressError> {
        match raw {
            0 => Ok(Self::None),
            1 => Ok(Self::Zlib),
            2 => Ok(Self::Lzo),
            3 => Ok(Self::Zstd),
            _ => Err(CompressError::UnknownType { raw }),
        }
    }

    /// The on-disk `compression` byte.
    pub fn raw(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Zlib => 1,
            Self::Lzo => 2,
            Self::Zstd => 3,
        }
    }

    /// Lower-case name as used by the kernel's mount options.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zlib => "zlib",
            Self::Lzo => "lzo",
            Self::Zstd => "zstd",
        }
    }

    /// Level used by [`compress`] when the caller passes `None`
    /// (`None` here means the algorithm has no levels).
    pub fn default_level(self) -> Option<i32> {
        match self {
            Self::Zlib => Some(ZLIB_DEFAULT_LEVEL),
            Self::Zstd => Some(ZSTD_DEFAULT_LEVEL),
            Self::None | Self::Lzo => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub use crate::error::CompressError;

fn corrupt(algo: &'static str, detail: impl Into<String>) -> CompressError {
    CompressError::Corrupt { algo, detail: detail.into() }
}

fn compressor_failed(algo: &'static str, detail: impl fmt::Display) -> CompressError {
    CompressError::Compressor { algo, detail: detail.to_string() }
}

/// Btrfs only supports power-of-two sector sizes up to 64 KiB; the lzo
/// container's padding rule depends on the value, so a bogus one from a
/// corrupt superblock must be refused rather than silently misparsed.
fn check_sectorsize(sectorsize: u32) -> Result<usize, CompressError> {
    if sectorsize.is_power_of_two() && (512..=65536).contains(&sectorsize) {
        usize::try_from(sectorsize).map_err(|_| CompressError::InvalidSectorSize { sectorsize })
    } else {
        Err(CompressError::InvalidSectorSize { sectorsize })
    }
}

fn round_up(len: usize, align: usize) -> usize {
    // `align` is a validated sector size and `len` at most a few MiB, so this
    // cannot overflow; saturate anyway rather than trust that.
    len.div_ceil(align).saturating_mul(align)
}

/// Decompresses a whole compressed extent (regular or inline) whose
/// uncompressed size is `out_len` (the extent's `ram_bytes`).
///
/// The result is always exactly `out_len` bytes: zero-filled past the end of
/// a stream that stops short, cut off if the stream holds more. `input` may
/// carry trailing bytes after the stream (on-disk sector padding), they are
/// ignored. For [`Compression::None`] the input is copied the same way.
///
/// The kernel is stricter in two places a checker may want to mirror: for
/// lzo it refuses an extent whose `disk_num_bytes` exceeds
/// `round_up(total length, sectorsize)` (unused trailing sectors), and for
/// inline extents it treats a stream shorter than `ram_bytes` as an error
/// (see [`decompress_with_len`]).
pub fn decompress(kind: Compression, input: &[u8], out_len: usize, sectorsize: u32) -> Result<Vec<u8>, CompressError> {
    decompress_with_len(kind, input, out_len, sectorsize).map(|(data, _)| data)
}

/// Like [`decompress`], but also returns how many of the `out_len` bytes the
/// stream itself produced (the rest is zero fill).
///
/// Callers that want the kernel's stricter rule for *inline* extents, where
/// a stream shorter than `ram_bytes` is an I/O error, compare the count with
/// `out_len`; for regular extents a short stream is normal.
pub fn decompress_with_len(kind: Compression, input: &[u8], out_len: usize, sectorsize: u32) -> Result<(Vec<u8>, usize), CompressError> {
    let sectorsize = check_sectorsize(sectorsize)?;
    if out_len > MAX_DECOMPRESSED_LEN {
        return Err(CompressError::TooLarge { len: out_len, max: MAX_DECOMPRESSED_LEN });
    }
    let mut out = vec![0u8; out_len];
    let produced = match kind {
        Compression::None => {
            let n = input.len().min(out_len);
            if let (Some(dst), Some(src)) = (out.get_mut(..n), input.get(..n)) {
                dst.copy_from_slice(src);
            }
            n
        }
        Compression::Zlib => zlib_decode(input, &mut out)?,
        Compression::Lzo => lzo_decode(input, &mut out, sectorsize)?,
        Compression::Zstd => zstd_decode(input, &mut out)?,
    }
    .min(out_len);
    // zstd may leave scratch bytes past the position it reports (btrfs-progs
    // ran into this with zstd 1.5.2), so zero the tail explicitly instead of
    // trusting the initial fill.
    if let Some(tail) = out.get_mut(produced..) {
        tail.fill(0);
    }
    Ok((out, produced))
}

/// Compresses `input` (at most [`MAX_UNCOMPRESSED`] bytes, starting at a
/// sector-aligned file offset) for a regular extent, or returns `Ok(None)`
/// when compressing is not worth it.
///
/// The rule is the kernel's (`compress_file_range()` in fs/btrfs/inode.c):
/// with both sizes rounded up to `sectorsize`, the compressed extent must be
/// at least one sector smaller than the input, otherwise the data is written
/// uncompressed. So inputs of one sector or less are never compressed here.
/// Inline extents do not follow that rule; use [`encode`] for them and let
/// the caller decide.
///
/// The returned bytes are not padded; the caller writes them into an extent
/// of exactly `round_up(len, sectorsize)` bytes (`disk_num_bytes`), padded
/// with zeros. Not larger: the kernel's lzo reader rejects an extent with
/// sectors the stream does not reach. `ram_bytes` (and `num_bytes`) are
/// `round_up(input.len(), sectorsize)`, as the kernel writes them; the tail
/// past the stream reads back as zeros.
///
/// `level`: zlib 1..=9 (default 3), zstd 1..=15 or the fast levels -15..=-1
/// (default 3); lzo has no levels and ignores it. [`Compression::None`]
/// never saves anything and always yields `Ok(None)`.
pub fn compress(kind: Compression, input: &[u8], sectorsize: u32, level: Option<i32>) -> Result<Option<Vec<u8>>, CompressError> {
    let sector = check_sectorsize(sectorsize)?;
    check_input_len(input)?;
    if kind == Compression::None {
        return Ok(None);
    }
    let encoded = encode_unchecked(kind, input, sector, level)?;
    if round_up(encoded.len(), sector).saturating_add(sector) <= round_up(input.len(), sector) {
        Ok(Some(encoded))
    } else {
        Ok(None)
    }
}

/// Produces the on-disk compressed form of `input` without the "is it
/// worth it" check; see [`compress`] for levels and input limits. For
/// [`Compression::None`] it returns a copy of the input.
///
/// Meant for inline extents, where the kernel keeps the compressed form when
/// it fits inline (its size is what must fit `max_inline`), and for tests.
/// A result longer than [`MAX_COMPRESSED`] is no valid extent (the kernel's
/// lzo reader refuses it), so it is reported as `TooLarge` instead.
pub fn encode(kind: Compression, input: &[u8], sectorsize: u32, level: Option<i32>) -> Result<Vec<u8>, CompressError> {
    let sector = check_sectorsize(sectorsize)?;
    check_input_len(input)?;
    let encoded = encode_unchecked(kind, input, sector, level)?;
    if encoded.len() > MAX_COMPRESSED {
        return Err(CompressError::TooLarge { len: encoded.len(), max: MAX_COMPRESSED });
    }
    Ok(encoded)
}

fn encode_unchecked(kind: Compression, input: &[u8], sector: usize, level: Option<i32>) -> Result<Vec<u8>, CompressError> {
    match kind {
        Compression::None => Ok(input.to_vec()),
        Compression::Zlib => zlib_encode(input, zlib_level(level)?),
        Compression::Lzo => lzo_encode(input, sector),
        Compression::Zstd => zstd_encode(input, zstd_level(level)?),
    }
}

fn check_input_len(input: &[u8]) -> Result<(), CompressError> {
    if input.len() > MAX_UNCOMPRESSED {
        return Err(CompressError::TooLarge { len: input.len(), max: MAX_UNCOMPRESSED });
    }
    Ok(())
}

fn zlib_level(level: Option<i32>) -> Result<u32, CompressError> {
    let level = level.unwrap_or(ZLIB_DEFAULT_LEVEL);
    match u32::try_from(level) {
        Ok(l @ 1..=9) => Ok(l),
        _ => Err(CompressError::InvalidLevel { algo: "zlib", level }),
    }
}

fn zstd_level(level: Option<i32>) -> Result<i32, CompressError> {
    // Kernels since 6.15 also accept the negative "fast" levels down to -15.
    match level.unwrap_or(ZSTD_DEFAULT_LEVEL) {
        l @ (1..=15 | -15..=-1) => Ok(l),
        level => Err(CompressError::InvalidLevel { algo: "zstd", level }),
    }
}

// ---------------------------------------------------------------- zlib ----

fn zlib_encode(input: &[u8], level: u32) -> Result<Vec<u8>, CompressError> {
    let mut enc =
        flate2::write::ZlibEncoder::new(Vec::with_capacity((input.len() >> 1).saturating_add(64)), flate2::Compression::new(level));
    enc.write_all(input).map_err(|e| compressor_failed("zlib", e))?;
    enc.finish().map_err(|e| compressor_failed("zlib", e))
}

/// Inflates into `out`, returning how many bytes were produced.
///
/// Like the kernel, the 2-byte zlib header is checked by hand and the body is
/// inflated raw, so the trailing adler32 is never verified (btrfs data
/// checksums cover the compressed bytes already, and a stream the kernel
/// reads must not fail here).
fn zlib_decode(input: &[u8], out: &mut [u8]) -> Result<usize, CompressError> {
    const ALGO: &str = "zlib";
    let (cmf, flg) = match input {
        [cmf, flg, ..] => (*cmf, *flg),
        _ => return Err(corrupt(ALGO, "input shorter than the 2-byte zlib header")),
    };
    if cmf & 0x0f != 8 {
        return Err(corrupt(ALGO, format!("compression method {} is not deflate", cmf & 0x0f)));
    }
    if cmf >> 4 > 7 {
        return Err(corrupt(ALGO, format!("window size 2^{} too large", (cmf >> 4).saturating_add(8))));
    }
    if (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 {
        return Err(corrupt(ALGO, "header check bits are wrong"));
    }
    if flg & 0x20 != 0 {
        return Err(corrupt(ALGO, "stream needs a preset dictionary"));
    }
    let body = input.get(2..).unwrap_or_default();

    let mut inflater = flate2::Decompress::new(false);
    loop {
        let in_pos = as_index(inflater.total_in(), ALGO)?;
        let out_pos = as_index(inflater.total_out(), ALGO)?;
        let Some(dst) = out.get_mut(out_pos..) else {
            return Err(corrupt(ALGO, "inflate overran the output buffer"));
        };
        if dst.is_empty() {
            // All of ram_bytes is there; what follows does not matter.
            return Ok(out_pos);
        }
        let src = body.get(in_pos..).unwrap_or_default();
        let status = inflater.decompress(src, dst, flate2::FlushDecompress::None).map_err(|e| corrupt(ALGO, e.to_string()))?;
        let produced = as_index(inflater.total_out(), ALGO)?;
        match status {
            flate2::Status::StreamEnd => return Ok(produced),
            flate2::Status::Ok | flate2::Status::BufError => {
                // With output room left, no progress means the input ran
                // out before the end of the stream.
                if as_index(inflater.total_in(), ALGO)? == in_pos && produced == out_pos {
                    return Err(corrupt(ALGO, format!("stream truncated after {produced} bytes of output")));
                }
            }
        }
    }
}

fn as_index(value: u64, algo: &'static str) -> Result<usize, CompressError> {
    usize::try_from(value).map_err(|_| corrupt(algo, "stream position overflows usize"))
}

// ---------------------------------------------------------------- zstd ----

fn zstd_err(code: usize) -> String {
    zstd::zstd_safe::get_error_name(code).to_string()
}

fn zstd_encode(input: &[u8], level: i32) -> Result<Vec<u8>, CompressError> {
    use zstd::zstd_safe::{CCtx, CParameter};
    const ALGO: &str = "zstd";
    let mut cctx = CCtx::try_create().ok_or_else(|| compressor_failed(ALGO, "cannot allocate a context"))?;
    // The window must stay within what the kernel's decoder accepts. zstd
    // shrinks it further for small inputs, and since the input size is known
    // the frame header records the content size, as the kernel's does.
    for param in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(ZSTD_MAX_WINDOW_LOG),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(false),
    ] {
        cctx.set_parameter(param).map_err(|code| compressor_failed(ALGO, zstd_err(code)))?;
    }
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(input.len()));
    cctx.compress2(&mut out, input).map_err(|code| compressor_failed(ALGO, zstd_err(code)))?;
    Ok(out)
}

/// Decodes the first zstd frame of `input` into `out`, returning how many
/// bytes were produced. Memory is bounded by `out` plus the 128 KiB window
/// limit, whatever the frame header claims about its content size.
fn zstd_decode(input: &[u8], out: &mut [u8]) -> Result<usize, CompressError> {
    use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer};
    const ALGO: &str = "zstd";
    let mut dctx = DCtx::try_create().ok_or_else(|| compressor_failed(ALGO, "cannot allocate a context"))?;
    dctx.set_parameter(DParameter::WindowLogMax(ZSTD_MAX_WINDOW_LOG)).map_err(|code| compressor_failed(ALGO, zstd_err(code)))?;
    let mut src = InBuffer::around(input);
    let mut dst = OutBuffer::around(out);
    loop {
        let (in_before, out_before) = (src.pos(), dst.pos());
        if out_before >= dst.capacity() {
            return Ok(out_before);
        }
        let hint = dctx.decompress_stream(&mut dst, &mut src).map_err(|code| corrupt(ALGO, zstd_err(code)))?;
        if hint == 0 {
            // End of the frame; anything after it is padding.
            return Ok(dst.pos());
        }
        if src.pos() == in_before && dst.pos() == out_before {
            return Err(corrupt(ALGO, format!("frame truncated after {} bytes of output", dst.pos())));
        }
    }
}

// ----------------------------------------------------------------- lzo ----

/// Worst-case LZO1X output for `len` input bytes; the kernel refuses
/// segments longer than this for one sector of input.
fn lzo_worst(len: usize) -> usize {
    lzokay::compress::compress_worst_size(len)
}

fn read_le32(buf: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; LZO_LEN] = buf.get(at..at.checked_add(LZO_LEN)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(bytes)).ok()
}

fn lzo_encode(input: &[u8], sectorsize: usize) -> Result<Vec<u8>, CompressError> {
    const ALGO: &str = "lzo";
    let mut dict = lzokay::compress::Dict::new();
    let mut scratch = vec![0u8; lzo_worst(sectorsize)];
    let mut out = Vec::with_capacity((input.len() >> 1).saturating_add(64));
    // Placeholder for the total length, filled in at the end.
    out.extend_from_slice(&[0u8; LZO_LEN]);
    // One segment per sector of input, exactly as lzo_compress_folios()
    // does, so segment boundaries line up with what the kernel expects.
    for chunk in input.chunks(sectorsize) {
        let n = lzokay::compress::compress_no_alloc(chunk, &mut scratch, &mut dict).map_err(|e| compressor_failed(ALGO, e))?;
        let seg = scratch.get(..n).ok_or_else(|| compressor_failed(ALGO, "segment larger than its buffer"))?;
        let seg_len = u32::try_from(n).map_err(|_| compressor_failed(ALGO, "segment length overflow"))?;
        out.extend_from_slice(&seg_len.to_le_bytes());
        out.extend_from_slice(seg);
        // The next segment header must not straddle a sector boundary: if
        // it would not fit, zero-pad to the boundary. The kernel also pads
        // after the last segment and counts that padding in the total.
        let left = match out.len().checked_rem(sectorsize) {
            Some(r) if r > 0 => sectorsize.saturating_sub(r),
            _ => 0,
        };
        if left < LZO_LEN {
            out.resize(out.len().saturating_add(left), 0);
        }
    }
    let total = u32::try_from(out.len()).map_err(|_| compressor_failed(ALGO, "total length overflow"))?;
    if let Some(header) = out.get_mut(..LZO_LEN) {
        header.copy_from_slice(&total.to_le_bytes());
    }
    Ok(out)
}

/// Decodes the lzo container into `out`, returning how many bytes the
/// segments produced. Follows lzo_decompress_bio(): segments are
/// concatenated, a segment may yield less than a sector, and decoding stops
/// as soon as `out` is full.
fn lzo_decode(input: &[u8], out: &mut [u8], sectorsize: usize) -> Result<usize, CompressError> {
    const ALGO: &str = "lzo";
    let total = read_le32(input, 0).ok_or_else(|| corrupt(ALGO, "input shorter than the 4-byte length header"))?;
    if total < LZO_LEN {
        return Err(corrupt(ALGO, format!("total length {total} is smaller than its header")));
    }
    if total > input.len() {
        return Err(corrupt(ALGO, format!("total length {total} exceeds the {} bytes available", input.len())));
    }
    if total > MAX_COMPRESSED {
        return Err(corrupt(ALGO, format!("total length {total} exceeds the btrfs limit of {MAX_COMPRESSED}")));
    }
    let max_segment = lzo_worst(sectorsize);
    let mut segment_out = vec![0u8; sectorsize];
    let mut pos = LZO_LEN;
    let mut produced = 0usize;
    // Every pass consumes at least a segment header, so this terminates.
    while pos < total && produced < out.len() {
        let left_in_sector = sectorsize.saturating_sub(pos.checked_rem(sectorsize).unwrap_or(0));
        if left_in_sector < LZO_LEN {
            // Padding; the next header (if any) starts at the boundary.
            pos = pos.saturating_add(left_in_sector);
            if pos >= total {
                break;
            }
        }
        let header_end = pos.saturating_add(LZO_LEN);
        if header_end > total {
            return Err(corrupt(ALGO, format!("segment header at {pos} runs past the total length {total}")));
        }
        let seg_len = read_le32(input, pos).ok_or_else(|| corrupt(ALGO, format!("segment header at {pos} is truncated")))?;
        if seg_len > max_segment {
            return Err(corrupt(ALGO, format!("segment at {pos} is {seg_len} bytes, more than the {max_segment} one sector can need")));
        }
        let seg_end = header_end
            .checked_add(seg_len)
            .filter(|&end| end <= total)
            .ok_or_else(|| corrupt(ALGO, format!("segment at {pos} ({seg_len} bytes) runs past the total length {total}")))?;
        let seg = input.get(header_end..seg_end).ok_or_else(|| corrupt(ALGO, format!("segment at {pos} is truncated")))?;
        // A segment holds at most one sector; decoding into a sector-sized
        // buffer turns anything larger into an error instead of an overrun.
        let n = lzokay::decompress::decompress(seg, &mut segment_out).map_err(|e| corrupt(ALGO, format!("segment at {pos}: {e}")))?;
        let take = n.min(out.len().saturating_sub(produced));
        if let (Some(dst), Some(src)) = (out.get_mut(produced..produced.saturating_add(take)), segment_out.get(..take)) {
            dst.copy_from_slice(src);
        }
        produced = produced.saturating_add(take);
        pos = seg_end;
    }
    Ok(produced)
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
#[path = "compress_tests.rs"]
mod tests;
