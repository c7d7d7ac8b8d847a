//! Superblock parsing and the sys_chunk_array it carries. The checksum is recomputed for the
//! csum type the input names, so the fuzzer gets past it to the sanity checks and the array.
#![no_main]

use btrs::format::superblock::{parse_super, super_csum_region};
use btrs::format::CsumType;
use libfuzzer_sys::fuzz_target;

const SUPER_SIZE: usize = 4096;
/// Offset of `csum_type` (u16) in the superblock.
const CSUM_TYPE_AT: usize = 0xc4;

fuzz_target!(|data: &[u8]| {
    let mut b = vec![0u8; SUPER_SIZE];
    let n = data.len().min(SUPER_SIZE);
    b[..n].copy_from_slice(&data[..n]);
    let raw = u16::from_le_bytes([b[CSUM_TYPE_AT], b[CSUM_TYPE_AT + 1]]);
    if let Some(ct) = CsumType::from_raw(raw) {
        let c = ct.compute(super_csum_region(&b));
        b[..32].copy_from_slice(&c);
    }
    if let Ok(sb) = parse_super(&b) {
        let _ = sb.csum_kind();
        let _ = sb.label_string();
        let _ = sb.unsupported_incompat();
        if let Ok(chunks) = sb.sys_chunks() {
            let map = btrs::volumes::chunks::ChunkMap::default();
            for (key, c) in chunks {
                let _ = map.insert(key.offset, c);
            }
        }
    }
});
