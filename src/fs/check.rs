//! The kernel's tree-checker rules ([`crate::tree::checker`]) over every
//! block of an open filesystem: what the attack tests and the model test ask
//! of an image btrs wrote, besides `btrfs check`.

use crate::format::*;
use crate::fs::Filesystem;
use crate::tree::checker::{check_block, Rules};
use crate::tree::RootPtr;

impl Filesystem {
    /// The rules for blocks of this filesystem, as the kernel reads them.
    pub(crate) fn block_rules(&self) -> Rules {
        let fs = self;
        Rules {
            nodesize: fs.sb.nodesize.get(),
            sectorsize: fs.sectorsize,
            csum_size: fs.csum.size(),
            incompat: fs.sb.incompat_flags.get(),
            super_generation: fs.sb.generation.get(),
        }
    }
}

/// Check every block of every tree of a filesystem (root and chunk trees,
/// and each tree with a root item); every violation found, as
/// "tree block LOGICAL (TREE): ...". Unreadable blocks are errors.
pub fn check_filesystem(fs: &Filesystem) -> crate::error::Result<Vec<String>> {
    let rules = fs.block_rules();
    let mut roots = vec![fs.tree_root(ROOT_TREE_OBJECTID)?, fs.tree_root(CHUNK_TREE_OBJECTID)?];
    let root_tree = fs.tree_root(ROOT_TREE_OBJECTID)?;
    let mut c = fs.reader.seek(&root_tree, Key::MIN)?;
    while let Some(it) = c.next_item()? {
        if it.key.item_type == ROOT_ITEM_KEY {
            let ri = crate::format::items::parse_root_item(it.data())?;
            roots.push(RootPtr { bytenr: ri.bytenr.get(), level: ri.level, generation: ri.generation.get(), owner: it.key.objectid });
        }
    }
    let mut found = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for root in roots {
        let mut stack = vec![fs.reader.root_block(&root)?];
        while let Some(b) = stack.pop() {
            if !seen.insert(b.logical) {
                continue;
            }
            if let Err(v) = check_block(b.bytes(), &rules) {
                let tree = crate::format::types::tree_name(b.owner()).map(str::to_string).unwrap_or_else(|| format!("tree {}", b.owner()));
                found.push(format!("tree block {} ({tree}): {v}", b.logical));
            }
            if !b.is_leaf() {
                for slot in 0..b.nritems() {
                    stack.push(fs.reader.child(&b, slot, root.owner)?);
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::tree::block::{HEADER_SIZE, ITEM_SIZE};
    use zerocopy::FromBytes;

    fn read<T: FromBytes>(data: &[u8], at: usize) -> Option<T> {
        T::read_from_prefix(data.get(at..)?).ok().map(|(v, _)| v)
    }
    use crate::tree::block::TreeBlock;
    use std::sync::Arc;
    use zerocopy::{FromZeros, IntoBytes};

    fn fixture_names() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/foreign");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// A foreign fixture (mkfs.btrfs + kernel), unpacked and opened; it must be there.
    fn open_fixture(name: &str) -> (tempfile::TempDir, crate::Filesystem) {
        crate::fs::testutil::open_fixture(name).unwrap_or_else(|| panic!("fixture {name} missing"))
    }

    /// Images made by mkfs.btrfs and filled by the kernel pass every rule,
    /// btrs's own included: the checker is not stricter than the kernel on
    /// what the kernel writes.
    #[test]
    fn accepts_every_block_of_the_foreign_fixtures() {
        let names = fixture_names();
        assert!(!names.is_empty());
        for name in names {
            let (_tmp, fs) = open_fixture(&name);
            let found = check_filesystem(&fs).unwrap();
            assert!(found.is_empty(), "{name}: {found:#?}");
        }
    }

    /// Every block of every tree of `fs`.
    fn all_blocks(fs: &crate::Filesystem) -> Vec<Arc<TreeBlock>> {
        let mut roots = vec![fs.tree_root(ROOT_TREE_OBJECTID).unwrap(), fs.tree_root(CHUNK_TREE_OBJECTID).unwrap()];
        for id in [EXTENT_TREE_OBJECTID, DEV_TREE_OBJECTID, FS_TREE_OBJECTID, CSUM_TREE_OBJECTID] {
            roots.push(fs.tree_root(id).unwrap());
        }
        let mut out = Vec::new();
        for r in roots {
            let mut stack = vec![fs.reader.root_block(&r).unwrap()];
            while let Some(b) = stack.pop() {
                if !b.is_leaf() {
                    for s in 0..b.nritems() {
                        stack.push(fs.reader.child(&b, s, r.owner).unwrap());
                    }
                }
                out.push(b);
            }
        }
        out
    }

    struct Sample {
        rules: Rules,
        blocks: Vec<Arc<TreeBlock>>,
    }

    impl Sample {
        /// A leaf holding an item `pick` accepts: the block's bytes and the slot.
        fn leaf_with(&self, pick: impl Fn(Key, &[u8]) -> bool) -> (Vec<u8>, usize) {
            for b in self.blocks.iter().filter(|b| b.is_leaf()) {
                for s in 0..b.nritems() {
                    if pick(b.key(s), b.item_data(s)) {
                        return (b.bytes().to_vec(), s);
                    }
                }
            }
            panic!("no such item in the sample image");
        }

        /// Change bytes at `at` inside item `ty`'s body (first such item
        /// `pick` accepts), and return what the checker says.
        fn mutate_item(&self, pick: impl Fn(Key, &[u8]) -> bool, at: usize, bytes: &[u8]) -> String {
            let (mut block, slot) = self.leaf_with(pick);
            assert!(check_block(&block, &self.rules).is_ok(), "the unchanged leaf passes");
            let item = read::<Item>(&block, HEADER_SIZE + slot * ITEM_SIZE).unwrap();
            let start = HEADER_SIZE + item.offset.get() as usize + at;
            block[start..start + bytes.len()].copy_from_slice(bytes);
            match check_block(&block, &self.rules) {
                Err(v) => {
                    assert_eq!(v.slot, Some(slot), "{v}");
                    v.what
                }
                Ok(()) => panic!("mutation at {at} of slot {slot} not caught"),
            }
        }

        /// Change the key of the first item `pick` accepts.
        fn mutate_key(&self, pick: impl Fn(Key, &[u8]) -> bool, f: impl Fn(Key) -> Key) -> String {
            let (mut block, slot) = self.leaf_with(pick);
            let at = HEADER_SIZE + slot * ITEM_SIZE;
            let mut item = read::<Item>(&block, at).unwrap();
            item.key = f(Key::from_disk(&item.key)).to_disk();
            block[at..at + ITEM_SIZE].copy_from_slice(item.as_bytes());
            check_block(&block, &self.rules).expect_err("key change not caught").what
        }
    }

    fn ty(t: u8) -> impl Fn(Key, &[u8]) -> bool {
        move |k, _| k.item_type == t
    }

    fn le64(v: u64) -> [u8; 8] {
        v.to_le_bytes()
    }

    /// One mutation per rule, each in a real leaf of a kernel-made image:
    /// the rule catches it, naming the slot.
    #[test]
    fn each_rule_catches_its_mutation() {
        let (_tmp, fs) = open_fixture("single");
        let s = Sample { rules: fs.block_rules(), blocks: all_blocks(&fs) };
        // Leaf layout: key order, item ends.
        let (mut block, _) = s.leaf_with(|_, _| true);
        let (k0, k1) = (read::<Item>(&block, HEADER_SIZE).unwrap(), read::<Item>(&block, HEADER_SIZE + ITEM_SIZE).unwrap());
        let mut swapped = block.clone();
        let (mut a, mut b) = (k0, k1);
        (a.key, b.key) = (k1.key, k0.key);
        swapped[HEADER_SIZE..HEADER_SIZE + ITEM_SIZE].copy_from_slice(a.as_bytes());
        swapped[HEADER_SIZE + ITEM_SIZE..HEADER_SIZE + 2 * ITEM_SIZE].copy_from_slice(b.as_bytes());
        assert!(check_block(&swapped, &s.rules).unwrap_err().what.contains("bad key order"));
        let mut moved = k1;
        moved.offset = (k1.offset.get() - 1).into();
        block[HEADER_SIZE + ITEM_SIZE..HEADER_SIZE + 2 * ITEM_SIZE].copy_from_slice(moved.as_bytes());
        assert!(check_block(&block, &s.rules).unwrap_err().what.contains("unexpected item end"));

        // File extents (struct offsets: ram_bytes 8, compression 16, encryption 17, type 20, disk_num_bytes 29).
        let regular = |k: Key, d: &[u8]| k.item_type == EXTENT_DATA_KEY && d.len() == 53 && d[20] == FILE_EXTENT_REG && d[16] == 0;
        let inline = |k: Key, d: &[u8]| k.item_type == EXTENT_DATA_KEY && d.get(20) == Some(&FILE_EXTENT_INLINE) && d[16] == 0;
        assert!(s.mutate_item(regular, 29, &le64(4097)).contains("disk_num_bytes"));
        assert!(s.mutate_item(regular, 8, &le64(4097)).contains("ram_bytes"));
        assert!(s.mutate_item(regular, 16, &[9]).contains("compression"));
        assert!(s.mutate_item(regular, 17, &[1]).contains("encryption"));
        assert!(s.mutate_item(regular, 20, &[3]).contains("extent type"));
        assert!(s.mutate_item(inline, 8, &le64(1 << 20)).contains("inline extent"));
        assert!(s.mutate_key(regular, |k| Key { offset: k.offset + 1, ..k }).contains("unaligned file offset"));
        // Checksums.
        assert!(s.mutate_key(ty(EXTENT_CSUM_KEY), |k| Key { offset: k.offset + 1, ..k }).contains("not aligned"));
        // Dir items (location 0..17, transid 17, data_len 25, name_len 27, type 29).
        let dir_item = |k: Key, d: &[u8]| k.item_type == DIR_ITEM_KEY && d.len() == 30 + d[27] as usize && d[8] == INODE_ITEM_KEY;
        assert!(s.mutate_key(dir_item, |k| Key { offset: k.offset ^ 1, ..k }).contains("name hash"));
        assert!(s.mutate_item(dir_item, 29, &[FT_XATTR + 1]).contains("dir item type"));
        assert!(s.mutate_item(dir_item, 29, &[FT_XATTR]).contains("non-XATTR key"));
        assert!(s.mutate_item(dir_item, 8, &[5]).contains("location key type"));
        assert!(s.mutate_item(dir_item, 25, &1u16.to_le_bytes()).contains("data"));
        assert!(s.mutate_item(dir_item, 27, &300u16.to_le_bytes()).contains("at most 255"));
        assert!(s.mutate_item(dir_item, 0, &le64(3)).contains("inode objectid"));
        let dir_index = |k: Key, d: &[u8]| k.item_type == DIR_INDEX_KEY && d.len() == 30 + d[27] as usize && d[27] > 1;
        assert!(s.mutate_item(dir_index, 31, b"/").contains("without '/' or NUL"));
        let xattr = |k: Key, _: &[u8]| k.item_type == XATTR_ITEM_KEY;
        assert!(s.mutate_item(xattr, 25, &65000u16.to_le_bytes()).contains("name and data"));
        assert!(s.mutate_item(xattr, 29, &[FT_REG_FILE]).contains("under an XATTR key"));
        assert!(s.mutate_item(xattr, 0, &le64(256)).contains("xattr location"));
        // Inode refs (index 0..8, name_len 8).
        assert!(s.mutate_item(ty(INODE_REF_KEY), 8, &1000u16.to_le_bytes()).contains("overflows"));
        assert!(s.mutate_item(ty(INODE_REF_KEY), 8, &0u16.to_le_bytes()).contains("of 0 bytes"));
        // Inode items (generation 0, transid 8, size 16, nlink 40, mode 52, flags 64).
        let gen = s.rules.super_generation;
        let mode = |d: &[u8]| read::<zerocopy::little_endian::U32>(d, 52).map_or(0, |m| m.get() & S_IFMT);
        let file = move |k: Key, d: &[u8]| k.item_type == INODE_ITEM_KEY && mode(d) == S_IFREG;
        let dir = move |k: Key, d: &[u8]| k.item_type == INODE_ITEM_KEY && mode(d) == S_IFDIR && k.objectid >= 256;
        assert!(s.mutate_item(file, 0, &le64(gen + 2)).contains("inode generation"));
        assert!(s.mutate_item(file, 8, &le64(gen + 2)).contains("inode transid"));
        assert!(s.mutate_item(file, 52, &(0o170644u32).to_le_bytes()).contains("file type"));
        assert!(s.mutate_item(file, 52, &(0o1100644u32).to_le_bytes()).contains("mode bits"));
        assert!(s.mutate_item(file, 64, &le64(1 << 20)).contains("inode flags"));
        assert!(s.mutate_item(file, 64, &le64(1 << 40)).contains("read-only compat"));
        assert!(s.mutate_item(file, 16, &le64(1 << 63)).contains("largest file size"));
        assert!(s.mutate_item(dir, 40, &2u32.to_le_bytes()).contains("nlink"));
        assert!(s.mutate_key(file, |k| Key { offset: 1, ..k }).contains("offset"));
        // Root items (inode 0..160, generation 160, bytenr 176, flags 208, level 238).
        assert!(s.mutate_item(ty(ROOT_ITEM_KEY), 160, &le64(gen + 2)).contains("root generation"));
        assert!(s.mutate_item(ty(ROOT_ITEM_KEY), 176, &le64(4097)).contains("bytenr"));
        assert!(s.mutate_item(ty(ROOT_ITEM_KEY), 208, &le64(4)).contains("root flags"));
        assert!(s.mutate_item(ty(ROOT_ITEM_KEY), 238, &[8]).contains("level"));
        // Extent items (refs 0, generation 8, flags 16, inline refs from 24).
        let data_extent = |k: Key, d: &[u8]| k.item_type == EXTENT_ITEM_KEY && d.get(16) == Some(&1) && d.len() == 24 + 29;
        assert!(s.mutate_item(ty(METADATA_ITEM_KEY), 16, &le64(3)).contains("exactly one"));
        assert!(s.mutate_item(ty(METADATA_ITEM_KEY), 8, &le64(gen + 2)).contains("extent generation"));
        assert!(s.mutate_item(ty(METADATA_ITEM_KEY), 0, &le64(0)).contains("inline refs"));
        assert!(s.mutate_item(ty(METADATA_ITEM_KEY), 24, &[99]).contains("unknown inline ref"));
        assert!(s.mutate_item(data_extent, 16, &le64(1 | BLOCK_FLAG_FULL_BACKREF)).contains("FULL_BACKREF"));
        assert!(s.mutate_item(data_extent, 24 + 1 + 16, &le64(1)).contains("data ref offset"));
        assert!(s.mutate_item(data_extent, 24, &[SHARED_BLOCK_REF_KEY]).contains("parent 5 not aligned"));
        let mut no_skinny = s.rules;
        no_skinny.incompat &= !INCOMPAT_SKINNY_METADATA;
        let (b, _) = s.leaf_with(ty(METADATA_ITEM_KEY));
        assert!(check_block(&b, &no_skinny).unwrap_err().what.contains("skinny"));
        // Block groups (used 0, chunk_objectid 8, flags 16).
        assert!(s.mutate_item(ty(BLOCK_GROUP_ITEM_KEY), 0, &le64(u64::MAX)).contains("used"));
        assert!(s.mutate_item(ty(BLOCK_GROUP_ITEM_KEY), 8, &le64(0)).contains("chunk objectid"));
        assert!(s.mutate_item(ty(BLOCK_GROUP_ITEM_KEY), 16, &le64(BLOCK_GROUP_DATA | BLOCK_GROUP_SYSTEM)).contains("type"));
        assert!(s
            .mutate_item(ty(BLOCK_GROUP_ITEM_KEY), 16, &le64(BLOCK_GROUP_DATA | BLOCK_GROUP_RAID1 | BLOCK_GROUP_DUP))
            .contains("profile"));
        // Chunks (length 0, stripe_len 16, type 24, sector_size 40, num_stripes 44).
        assert!(s.mutate_item(ty(CHUNK_ITEM_KEY), 16, &le64(4096)).contains("stripe length"));
        assert!(s.mutate_item(ty(CHUNK_ITEM_KEY), 40, &512u32.to_le_bytes()).contains("sectorsize"));
        assert!(s.mutate_item(ty(CHUNK_ITEM_KEY), 0, &le64(0)).contains("chunk length"));
        assert!(s.mutate_item(ty(CHUNK_ITEM_KEY), 44, &3u16.to_le_bytes()).contains("bytes"));
        // Dev items (devid 0, total 8, used 16) and dev extents (chunk_tree 0, chunk_objectid 8, offset 16, length 24).
        assert!(s.mutate_item(ty(DEV_ITEM_KEY), 0, &le64(9)).contains("devid"));
        assert!(s.mutate_item(ty(DEV_ITEM_KEY), 16, &le64(u64::MAX)).contains("bytes_used"));
        assert!(s.mutate_item(ty(DEV_EXTENT_KEY), 0, &le64(4)).contains("chunk tree"));
        assert!(s.mutate_item(ty(DEV_EXTENT_KEY), 24, &le64(4097)).contains("length"));
        // Nodes: pointers non-null and aligned, keys increasing.
        let node = s.blocks.iter().find(|b| !b.is_leaf());
        if let Some(n) = node {
            let mut b = n.bytes().to_vec();
            let at = HEADER_SIZE + 17;
            b[at..at + 8].copy_from_slice(&le64(4097));
            assert!(check_block(&b, &s.rules).unwrap_err().what.contains("not aligned"));
            b[at..at + 8].copy_from_slice(&le64(0));
            assert!(check_block(&b, &s.rules).unwrap_err().what.contains("null"));
        }
        // Empty leaves of trees that may never be empty.
        let (mut b, _) = s.leaf_with(ty(INODE_ITEM_KEY));
        b[96..100].copy_from_slice(&0u32.to_le_bytes());
        b[88..96].copy_from_slice(&le64(FS_TREE_OBJECTID));
        assert!(check_block(&b, &s.rules).unwrap_err().what.contains("never be empty"));
        b[88..96].copy_from_slice(&le64(CSUM_TREE_OBJECTID));
        assert!(check_block(&b, &s.rules).is_ok());
    }

    /// Blocks the write engine seals go through the rules: a leaf with an
    /// xattr past the kernel's limit is refused as an internal error, not written.
    #[test]
    fn sealing_refuses_a_bad_leaf() {
        use crate::tree::{edit::EditLeaf, encode::BlockFormat};
        let fmt = BlockFormat::new(4096, CsumType::Crc32c, [7; 16], [9; 16]).unwrap().checked(4096, INCOMPAT_SKINNY_METADATA);
        let mut inode = InodeItem::new_zeroed();
        inode.mode = (S_IFREG | 0o644).into();
        inode.nlink = 1.into();
        let ok = EditLeaf { items: vec![(Key::new(256, INODE_ITEM_KEY, 0), encode::inode_item(&inode))] };
        assert!(ok.to_bytes(&fmt, 1 << 20, 5, FS_TREE_OBJECTID).is_ok());
        let mut bad = ok.clone();
        inode.mode = 0o644.into();
        bad.items[0].1 = encode::inode_item(&inode);
        let e = bad.to_bytes(&fmt, 1 << 20, 5, FS_TREE_OBJECTID).unwrap_err();
        assert!(matches!(e, Error::TreeCheck { block: 1048576, .. }), "{e}");
        assert!(e.to_string().contains("slot 0 key") && e.to_string().contains("file type"), "{e}");
        // Without rules (tests of the layout alone), nothing is checked.
        let plain = BlockFormat::new(4096, CsumType::Crc32c, [7; 16], [9; 16]).unwrap();
        assert!(bad.to_bytes(&plain, 1 << 20, 5, FS_TREE_OBJECTID).is_ok());
    }
}
