//! Compressed extent decoders (zlib, lzo with its btrfs segment framing, zstd) with an
//! arbitrary claimed output length and sector size.
#![no_main]

use arbitrary::Arbitrary;
use btrs::format::compress::{decompress, Compression};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    kind: u8,
    out_len: u32,
    sectorsize: u8,
    data: Vec<u8>,
}

fuzz_target!(|i: Input| {
    let kind = match i.kind % 3 {
        0 => Compression::Zlib,
        1 => Compression::Lzo,
        _ => Compression::Zstd,
    };
    // Mostly valid sector sizes, sometimes nonsense.
    let sectorsize = match i.sectorsize % 5 {
        0 => 4096,
        1 => 16384,
        2 => 65536,
        3 => 512,
        _ => u32::from(i.sectorsize) << 8,
    };
    if let Ok(out) = decompress(kind, &i.data, i.out_len as usize, sectorsize) {
        assert_eq!(out.len(), i.out_len as usize, "decompress must return exactly out_len bytes");
    }
});
