//! Directory entries, xattrs, inode refs and extrefs, root refs: the name-bearing items.
#![no_main]

use btrs::format::items;
use btrs::format::Key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let parent = u64::from_le_bytes(data[..8].try_into().unwrap());
    let d = &data[8..];
    if let Ok(es) = items::parse_dir_items(d) {
        for e in es {
            let _ = items::name_hash(&e.name);
        }
    }
    if let Ok(rs) = items::parse_inode_refs(Key::new(257, 12, parent), d) {
        for r in rs {
            let _ = items::extref_hash(parent, &r.name);
        }
    }
    let _ = items::parse_inode_extrefs(d);
    let _ = items::parse_root_ref(d);
});
