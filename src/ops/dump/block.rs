//! One tree block: its header, then a node's pointers or a leaf's items.

use std::io::Write;

use super::item::print_item;
use super::names::{header_flags_str, key_str, objectid_str};
use super::DumpCtx;
use crate::format::ondisk::BACKREF_REV_SHIFT;
use crate::format::types::uuid_string;
use crate::tree::block::{HEADER_SIZE, ITEM_SIZE, KEY_PTR_SIZE};
use crate::tree::TreeBlock;

/// Free space of a leaf as btrfs-progs computes it (`btrfs_leaf_free_space`):
/// data area minus the span from the first item's end to the last item's
/// start, minus the item headers. Equals nodesize - 101 - sum(sizes) - 25*n
/// for a packed leaf.
fn leaf_free_space(block: &TreeBlock) -> i64 {
    let data_size = block.bytes().len() as i64 - HEADER_SIZE as i64;
    let n = block.nritems();
    if n == 0 {
        return data_size;
    }
    let (off0, size0) = block.item_location(0);
    let (off_last, _) = block.item_location(n - 1);
    let used = (off0 as i64 + size0 as i64) - off_last as i64 + (ITEM_SIZE * n) as i64;
    data_size - used
}

/// Print one tree block (node header and pointers, or leaf header and every
/// item) into `buf`, like btrfs-progs' `btrfs_print_tree` without following.
pub fn print_block(buf: &mut Vec<u8>, ctx: &DumpCtx, block: &TreeBlock) {
    let h = &block.header;
    let n = block.nritems();
    let raw_flags = h.flags.get();
    let flags = raw_flags & !(0xffu64 << BACKREF_REV_SHIFT);
    let rev = raw_flags >> BACKREF_REV_SHIFT;
    let owner = objectid_str(h.owner.get(), 0);
    if block.is_leaf() {
        w!(
            buf,
            "leaf {} items {n} free space {} generation {} owner {owner}\n",
            h.bytenr.get(),
            leaf_free_space(block),
            h.generation.get()
        );
    } else {
        let ptrs = ((block.bytes().len() - HEADER_SIZE) / KEY_PTR_SIZE) as u32;
        w!(
            buf,
            "node {} level {} items {n} free space {} generation {} owner {owner}\n",
            block.logical,
            h.level,
            ptrs.wrapping_sub(n as u32),
            h.generation.get()
        );
    }
    w!(
        buf,
        "{} {} flags {flags:#x}({}) backref revision {rev}",
        if block.is_leaf() { "leaf" } else { "node" },
        h.bytenr.get(),
        header_flags_str(flags)
    );
    if ctx.csum_headers {
        w!(buf, " csum 0x");
        for b in h.csum.iter().take(ctx.csum_size) {
            w!(buf, "{b:02x}");
        }
    }
    buf.push(b'\n');
    w!(buf, "fs uuid {}\nchunk uuid {}\n", uuid_string(&h.fsid), uuid_string(&h.chunk_tree_uuid));
    if !block.is_leaf() {
        for i in 0..n {
            let (key, ptr, gen) = block.ptr(i);
            w!(buf, "\t{} block {ptr} gen {gen}\n", key_str(&key));
        }
        return;
    }
    for i in 0..n {
        let key = block.key(i);
        let (off, size) = block.item_location(i);
        w!(buf, "\titem {i} {} itemoff {off} itemsize {size}\n", key_str(&key));
        print_item(buf, ctx, key, block.item_data(i));
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::dump_leaf;
    use crate::format::encode;
    use crate::format::items::InodeRefEntry;
    use crate::format::ondisk::*;
    use crate::format::Key;

    fn inode_item(mode: u32, size: u64) -> Vec<u8> {
        let mut ii = <InodeItem as zerocopy::FromZeros>::new_zeroed();
        ii.generation = 3.into();
        ii.size = size.into();
        ii.nlink = 1.into();
        ii.mode = mode.into();
        ii.atime = Timespec::new(1_795_462_101, 5);
        encode::inode_item(&ii)
    }

    #[test]
    fn leaf_header_and_items() {
        let s = dump_leaf(&[
            (Key::new(256, INODE_ITEM_KEY, 0), inode_item(0o40755, 0)),
            (
                Key::new(256, INODE_REF_KEY, 256),
                encode::inode_refs(&[InodeRefEntry { parent: 256, index: 0, name: b"..".to_vec() }]).unwrap(),
            ),
        ]);
        let free = 4096 - 101 - 160 - 12 - 2 * 25;
        assert!(s.starts_with(&format!("leaf 65536 items 2 free space {free} generation 3 owner FS_TREE\n")), "{s}");
        assert!(s.contains("leaf 65536 flags 0x1(WRITTEN) backref revision 1\n"), "{s}");
        assert!(s.contains("fs uuid 07070707-0707-0707-0707-070707070707\n"), "{s}");
        assert!(s.contains("\titem 0 key (256 INODE_ITEM 0) itemoff 3835 itemsize 160\n"), "{s}");
        assert!(s.contains("\t\tblock group 0 mode 40755 links 1 uid 0 gid 0 rdev 0\n"), "{s}");
        assert!(s.contains("\t\tsequence 0 flags 0x0(none)\n"), "{s}");
        assert!(s.contains("\t\tatime 1795462101.5 (2026-11-23 19:28:21)\n"), "{s}");
        assert!(s.contains("\t\tctime 0.0 (1970-01-01 00:00:00)\n"), "{s}");
        assert!(s.contains("\titem 1 key (256 INODE_REF 256) itemoff 3823 itemsize 12\n\t\tindex 0 namelen 2 name: ..\n"), "{s}");
    }
}
