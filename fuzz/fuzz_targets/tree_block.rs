//! A tree block through the verifier (checksum recomputed, so the structure checks run), then
//! every item through its decoder and the dump-tree printer, which decodes every item type;
//! the raw block through the tree-checker port.
#![no_main]

use btrs::format::items;
use btrs::format::{CsumType, Key};
use btrs::ops::dump::{print_block, print_item, DumpCtx};
use btrs::tree::{Expect, TreeBlock};
use libfuzzer_sys::fuzz_target;

const LOGICAL: u64 = 30_408_704;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let nodesize = [4096usize, 16384, 65536][sel as usize % 3];
    let csum = [CsumType::Crc32c, CsumType::Xxhash64, CsumType::Sha256, CsumType::Blake2b256][(sel as usize / 3) % 4];
    let mut b = vec![0u8; nodesize];
    let n = rest.len().min(nodesize);
    b[..n].copy_from_slice(&rest[..n]);
    // The block claims to be where it was read from, and carries a valid checksum.
    b[48..56].copy_from_slice(&LOGICAL.to_le_bytes());
    let c = csum.compute(&b[32..]);
    b[..32].copy_from_slice(&c);
    let fsid: [u8; 16] = b[32..48].try_into().unwrap();
    // The port of the kernel's tree-checker reads every field of every item:
    // it must answer for any bytes, structure checks passed or not.
    let rules = btrs::tree::checker::Rules {
        nodesize: nodesize as u32,
        sectorsize: 4096,
        csum_size: csum.size(),
        incompat: u64::from(sel).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        super_generation: u64::from_le_bytes(b[80..88].try_into().unwrap()),
    };
    let _ = btrs::tree::checker::check_block(&b, &rules);
    let Ok(block) = TreeBlock::parse(LOGICAL, b, csum, &fsid, Expect::default()) else { return };
    // The optional printers (checksums, hidden names) from the selector byte's high bits.
    let ctx = DumpCtx {
        nodesize: nodesize as u32,
        sectorsize: 4096,
        csum_size: csum.size(),
        csum_headers: sel & 0x20 != 0,
        csum_items: sel & 0x40 != 0,
        hide_names: sel & 0x80 != 0,
    };
    let mut out = Vec::new();
    print_block(&mut out, &ctx, &block);
    for i in 0..block.nritems() {
        let key = block.key(i);
        if block.is_leaf() {
            let d = block.item_data(i);
            print_item(&mut out, &ctx, key, d);
            decode(key, d);
        } else {
            let _ = block.ptr(i);
        }
    }
    let _ = block.slot_le(&Key::new(256, 1, 0));
});

/// Every public item decoder, whatever the key type says (a damaged key sends a body to the
/// wrong decoder, which must fail cleanly too).
fn decode(key: Key, d: &[u8]) {
    let _ = items::parse_chunk(d);
    let _ = items::parse_inode_refs(key, d);
    let _ = items::parse_inode_extrefs(d);
    let _ = items::parse_dir_items(d);
    let _ = items::parse_file_extent(d);
    let _ = items::parse_root_item(d);
    let _ = items::parse_root_ref(d);
    let _ = items::parse_extent_item(key, d);
    let _ = items::parse_keyed_ref(key, d);
    let _ = items::parse_u64_array(d, "fuzz");
    let _ = btrs::fs::Inode::parse(btrs::fs::InodeId { subvol: 5, ino: key.objectid }, d);
}
