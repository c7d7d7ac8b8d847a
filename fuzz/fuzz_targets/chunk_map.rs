//! The chunk map: arbitrary chunk items inserted, then arbitrary logical addresses mapped.
#![no_main]

use arbitrary::Arbitrary;
use btrs::format::items::parse_chunk;
use btrs::volumes::ChunkMap;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    chunks: Vec<(u64, Vec<u8>)>,
    lookups: Vec<u64>,
}

fuzz_target!(|input: Input| {
    let map = ChunkMap::default();
    for (logical, bytes) in input.chunks.iter().take(16) {
        if let Ok((c, _)) = parse_chunk(bytes) {
            let _ = map.insert(*logical, c);
        }
    }
    for l in input.lookups.iter().take(64) {
        if let Ok(e) = map.lookup(*l) {
            let _ = e.num_copies();
            let _ = e.map(*l);
        }
    }
    for e in map.entries() {
        let _ = e.map(e.logical);
        let _ = e.map(e.end().wrapping_sub(1));
    }
});
