//! One leaf item's body: [`print_item`] hands it to its family's printer
//! by item type and prints what does not decode as an error and a hex dump.

use std::io::Write;

use super::body::need;
use super::names::type_str;
use super::text::hex_dump;
use super::DumpCtx;
use super::{item_extent as extent, item_inode as inode, item_root as root, item_volume as volume};
use crate::error::Result;
use crate::format::items;
use crate::format::ondisk::*;
use crate::format::Key;

/// Print the body of one leaf item. Never fails: undecodable bodies become
/// an `ERROR:` line and a hex dump.
pub fn print_item(buf: &mut Vec<u8>, ctx: &DumpCtx, key: Key, data: &[u8]) {
    match decode_item(buf, ctx, key, data) {
        Ok(Decoded::Done) => {}
        Ok(Decoded::Unknown) => {
            if !data.is_empty() {
                hex_dump(buf, data);
            }
        }
        Err(e) => {
            w!(buf, "\t\tERROR: cannot decode {} item: {e}\n", type_str(key.objectid, key.item_type));
            hex_dump(buf, data);
        }
    }
}

enum Decoded {
    Done,
    Unknown,
}

/// Print a body by its item type. `Unknown`: a type (or body) this does not
/// know, which the caller hex-dumps.
fn decode_item(buf: &mut Vec<u8>, ctx: &DumpCtx, key: Key, data: &[u8]) -> Result<Decoded> {
    if key.item_type == 0 && key.objectid == FREE_SPACE_OBJECTID {
        extent::free_space_header(buf, data)?;
        return Ok(Decoded::Done);
    }
    match key.item_type {
        INODE_ITEM_KEY => inode::print_inode_item(buf, &need(data, "inode item")?),
        INODE_REF_KEY => inode::inode_refs(buf, ctx, key, data)?,
        INODE_EXTREF_KEY => inode::inode_extrefs(buf, ctx, data)?,
        DIR_ITEM_KEY | DIR_INDEX_KEY | XATTR_ITEM_KEY => inode::dir_items(buf, ctx, data)?,
        DIR_LOG_ITEM_KEY | DIR_LOG_INDEX_KEY => inode::dir_log(buf, data)?,
        ORPHAN_ITEM_KEY => w!(buf, "\t\torphan item\n"),
        ROOT_ITEM_KEY => root::print_root_item(buf, data)?,
        ROOT_REF_KEY | ROOT_BACKREF_KEY => root::root_ref(buf, key, data)?,
        EXTENT_ITEM_KEY | METADATA_ITEM_KEY => extent::print_extent_item(buf, key, data)?,
        TREE_BLOCK_REF_KEY => w!(buf, "\t\ttree block backref\n"),
        SHARED_BLOCK_REF_KEY => w!(buf, "\t\tshared block backref\n"),
        EXTENT_DATA_REF_KEY => extent::extent_data_ref(buf, key, data)?,
        SHARED_DATA_REF_KEY => extent::shared_data_ref(buf, key, data)?,
        EXTENT_OWNER_REF_KEY => extent::extent_owner_ref(buf, key, data)?,
        180 => w!(buf, "\t\textent ref v0 (deprecated)\n"),
        120 => w!(buf, "\t\tcsum item\n"),
        EXTENT_CSUM_KEY => extent::extent_csum(buf, ctx, key, data)?,
        EXTENT_DATA_KEY => inode::print_file_extent(buf, data)?,
        BLOCK_GROUP_ITEM_KEY => extent::block_group(buf, data)?,
        FREE_SPACE_INFO_KEY => extent::free_space_info(buf, data)?,
        FREE_SPACE_EXTENT_KEY => w!(buf, "\t\tfree space extent\n"),
        FREE_SPACE_BITMAP_KEY => w!(buf, "\t\tfree space bitmap\n"),
        CHUNK_ITEM_KEY => volume::print_chunk(buf, &items::parse_chunk(data)?.0),
        DEV_ITEM_KEY => volume::dev_item(buf, data)?,
        DEV_EXTENT_KEY => volume::dev_extent(buf, data)?,
        QGROUP_STATUS_KEY => root::qgroup_status(buf, data)?,
        QGROUP_INFO_KEY => root::qgroup_info(buf, data)?,
        QGROUP_LIMIT_KEY => root::qgroup_limit(buf, data)?,
        QGROUP_RELATION_KEY => {
            if !data.is_empty() {
                return Ok(Decoded::Unknown);
            }
        }
        UUID_KEY_SUBVOL | UUID_KEY_RECEIVED_SUBVOL => root::uuid_item(buf, data)?,
        STRING_ITEM_KEY => root::string_item(buf, data)?,
        PERSISTENT_ITEM_KEY => volume::persistent_item(buf, key, data)?,
        TEMPORARY_ITEM_KEY => volume::temporary_item(buf, key, data)?,
        DEV_REPLACE_KEY => volume::dev_replace(buf, data)?,
        VERITY_DESC_ITEM_KEY => inode::verity_desc(buf, key, data)?,
        VERITY_MERKLE_ITEM_KEY => {
            w!(buf, "\t\tverity merkle tree data at offset {}, {} bytes\n", key.offset, data.len());
        }
        _ => return Ok(Decoded::Unknown),
    }
    Ok(Decoded::Done)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::dump_leaf;
    use super::*;
    use crate::format::encode::{self, RootItemSize};
    use crate::format::items::*;
    use zerocopy::IntoBytes;

    #[test]
    fn garbage_item_body_is_hex_dumped() {
        let s = dump_leaf(&[
            // Too short for an inode item.
            (Key::new(256, INODE_ITEM_KEY, 0), vec![0xde, 0xad, 0xbe, 0xef, b'A']),
            // A dir item whose name runs past the item.
            (Key::new(256, DIR_ITEM_KEY, 5), {
                let mut v = DirItem {
                    location: DiskKey::new(257, INODE_ITEM_KEY, 0),
                    transid: 7.into(),
                    data_len: 0.into(),
                    name_len: 200.into(),
                    dir_type: FT_REG_FILE,
                }
                .as_bytes()
                .to_vec();
                v.extend_from_slice(b"abc");
                v
            }),
            // An item type nobody knows.
            (Key::new(256, 90, 0), b"0123456789abcdefXYZ".to_vec()),
            // And a good item after them, still printed.
            (Key::new(257, ORPHAN_ITEM_KEY, 0), Vec::new()),
        ]);
        assert!(s.contains("\t\tERROR: cannot decode INODE_ITEM item: "), "{s}");
        assert!(s.contains("\t\t00000000  de ad be ef 41 "), "{s}");
        assert!(s.contains("|....A|"), "{s}");
        assert!(s.contains("\t\tERROR: cannot decode DIR_ITEM item: "), "{s}");
        assert!(s.contains("\titem 2 key (256 UNKNOWN.90 0) itemoff"), "{s}");
        assert!(s.contains("|0123456789abcdef|\n\t\t00000010  58 59 5a "), "{s}");
        assert!(!s.contains("ERROR: cannot decode UNKNOWN"), "unknown types are dumped, not errors: {s}");
        assert!(s.contains("\titem 3 key (257 ORPHAN_ITEM 0) itemoff"), "{s}");
        assert!(s.contains("\t\torphan item\n"), "{s}");
    }

    #[test]
    fn decodes_extent_file_and_root_items() {
        let extent = |flags: u64, r: ExtentRef| {
            encode::extent_item(&ExtentInfo { refs: 1, generation: 6, flags, tree_block: None, inline_refs: vec![r] }).unwrap()
        };
        let ext = extent(EXTENT_FLAG_DATA, ExtentRef::Data { root: 5, objectid: 257, offset: 0, count: 1 });
        let meta = extent(EXTENT_FLAG_TREE_BLOCK, ExtentRef::TreeBlock { root: 2 });
        let file_extent = |ram_bytes: u64, compression: u8, kind: FileExtentKind| {
            encode::file_extent(&FileExtent { generation: 8, ram_bytes, compression, encryption: 0, other_encoding: 0, kind })
        };
        let fe_reg = file_extent(
            8192,
            COMPRESS_ZSTD,
            FileExtentKind::Regular { prealloc: false, disk_bytenr: 13631488, disk_num_bytes: 4096, offset: 0, num_bytes: 8192 },
        );
        let fe_inline = file_extent(5, 0, FileExtentKind::Inline { data: b"hello".to_vec() });
        let mut ri = <RootItem as zerocopy::FromZeros>::new_zeroed();
        ri.generation = 5.into();
        ri.generation_v2 = 5.into();
        ri.root_dirid = 256.into();
        ri.bytenr = 30425088.into();
        ri.refs = 1.into();
        ri.flags = ROOT_SUBVOL_RDONLY.into();
        let mut csum = vec![0u8; 4 * 3];
        csum[0] = 1;
        let s = dump_leaf(&[
            (Key::new(257, EXTENT_DATA_KEY, 0), fe_inline),
            (Key::new(257, EXTENT_DATA_KEY, 4096), fe_reg),
            (Key::new(258, ROOT_ITEM_KEY, 0), encode::root_item(&ri, RootItemSize::Full)),
            (Key::new(13631488, EXTENT_ITEM_KEY, 4096), ext),
            (Key::new(30408704, METADATA_ITEM_KEY, 0), meta),
            (Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, 13631488), csum),
        ]);
        for want in [
            "\t\tgeneration 8 type 0 (inline)\n\t\tinline extent data size 5 ram_bytes 5 compression 0 (none)\n",
            "\t\tgeneration 8 type 1 (regular)\n\t\textent data disk byte 13631488 nr 4096\n\t\textent data offset 0 nr 8192 ram 8192\n\t\textent compression 3 (zstd)\n",
            "\t\tgeneration 5 root_dirid 256 bytenr 30425088 byte_limit 0 bytes_used 0\n\t\tlast_snapshot 0 flags 0x1(RDONLY) refs 1\n\t\tdrop_progress key (0 UNKNOWN.0 0) drop_level 0\n\t\tlevel 0 generation_v2 5\n\t\tuuid 00000000-0000-0000-0000-000000000000\n",
            "\t\trefs 1 gen 6 flags DATA\n\t\textent data backref root FS_TREE objectid 257 offset 0 count 1\n",
            "\t\trefs 1 gen 6 flags TREE_BLOCK\n\t\ttree block skinny level 0\n\t\ttree block backref root EXTENT_TREE\n",
            "\titem 5 key (EXTENT_CSUM EXTENT_CSUM 13631488) itemoff",
            "\t\trange start 13631488 end 13643776 length 12288\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("ERROR"), "{s}");
    }

    #[test]
    fn decodes_remaining_item_types() {
        let zeroed = |n: usize| vec![0u8; n];
        let mut balance = <BalanceItem as zerocopy::FromZeros>::new_zeroed();
        balance.flags = 3.into();
        balance.data.usage = ((90u64 << 32) | 10).into();
        let replace = DevReplaceItem {
            src_devid: 1.into(),
            cursor_left: 2.into(),
            cursor_right: 3.into(),
            cont_reading_from_srcdev_mode: 0.into(),
            replace_state: 2.into(),
            time_started: 4.into(),
            time_stopped: 5.into(),
            num_write_errors: 6.into(),
            num_uncorrectable_read_errors: 7.into(),
        };
        let verity = VerityDescriptorItem { size: 256.into(), reserved: [0.into(); 2], encryption: 0 };
        let xattr = encode::dir_item(&DirEntry {
            location: Key::MIN,
            transid: 8,
            dir_type: FT_XATTR,
            name: b"user.x".to_vec(),
            data: b"ab\0cde".to_vec(),
        })
        .unwrap();
        let extref = encode::inode_extrefs(&[InodeRefEntry { parent: 256, index: 9, name: b"name".to_vec() }]).unwrap();
        let rref = encode::root_ref(&RootRefEntry { dirid: 256, sequence: 2, name: b"sub".to_vec() }).unwrap();
        let chunk = encode::chunk_item(&ChunkInfo {
            length: 8 << 20,
            owner: 2,
            stripe_len: STRIPE_LEN,
            chunk_type: BLOCK_GROUP_SYSTEM | BLOCK_GROUP_DUP,
            io_align: 65536,
            io_width: 65536,
            sector_size: 4096,
            sub_stripes: 1,
            stripes: vec![StripeInfo { devid: 1, offset: 22020096, dev_uuid: [0x11; 16] }],
        })
        .unwrap();
        let mut fsh = DiskKey::new(256, INODE_ITEM_KEY, 0).as_bytes().to_vec();
        for v in [7u64, 3, 1] {
            fsh.extend_from_slice(&v.to_le_bytes());
        }
        let s = dump_leaf(&[
            (Key::new(0, DEV_STATS_OBJECTID as u8, 0), Vec::new()),
            (Key::new(0, PERSISTENT_ITEM_KEY, 1), zeroed(40)),
            (Key::new(0, DEV_REPLACE_KEY, 0), replace.as_bytes().to_vec()),
            (Key::new(1, DEV_ITEM_KEY, 1), zeroed(98)),
            (Key::new(1, DEV_EXTENT_KEY, 1 << 20), zeroed(48)),
            // Qgroup status as kernels before 6.7 wrote it: 32 bytes.
            (Key::new(0, QGROUP_STATUS_KEY, 0), {
                let mut v = zeroed(32);
                v[0] = 1;
                v[16] = 1;
                v
            }),
            (Key::new(256, INODE_EXTREF_KEY, 77), extref),
            (Key::new(256, XATTR_ITEM_KEY, 5), xattr),
            (Key::new(256, VERITY_DESC_ITEM_KEY, 0), verity.as_bytes().to_vec()),
            (Key::new(256, ROOT_REF_KEY, 257), rref),
            (Key::new(256, CHUNK_ITEM_KEY, 22020096), chunk),
            (Key::new(1 << 20, BLOCK_GROUP_ITEM_KEY, 8 << 20), {
                encode::block_group_item(&BlockGroupInfo { used: 4096, chunk_objectid: 256, flags: BLOCK_GROUP_DATA })
            }),
            (Key::new(1 << 20, FREE_SPACE_INFO_KEY, 8 << 20), encode::free_space_info(1, 1)),
            (Key::new(1 << 20, FREE_SPACE_BITMAP_KEY, 8 << 20), zeroed(64)),
            (Key::new(BALANCE_OBJECTID, TEMPORARY_ITEM_KEY, 0), balance.as_bytes().to_vec()),
            (Key::new(FREE_SPACE_OBJECTID, 0, 1 << 20), fsh),
            (Key::new(0x1234, UUID_KEY_SUBVOL, 0x5678), encode::u64_array(&[257])),
            (Key::new(u64::MAX - 100, STRING_ITEM_KEY, 0), b"a string".to_vec()),
        ]);
        for want in [
            "\titem 0 key (0 UNKNOWN.0 0) itemoff 3995 itemsize 0\n\titem 1",
            "\t\tpersistent item objectid DEV_STATS offset 1\n\t\tdevice stats\n\t\twrite_errs 0 read_errs 0 flush_errs 0 corruption_errs 0 generation 0\n",
            "\t\tsrc devid 1 cursor left 2 cursor right 3 cont reading from srcdev mode 0\n\t\treplace state 2 time started 4 time stopped 5\n",
            "\t\tdevid 0 total_bytes 0 bytes_used 0\n\t\tio_align 0 io_width 0 sector_size 0 type 0\n",
            "\t\tdev extent chunk_tree 0\n\t\tchunk_objectid 0 chunk_offset 0 length 0\n",
            "\t\tversion 1 generation 0 flags ON scan 0\n",
            "\t\tindex 9 parent 256 namelen 4 name: name\n",
            "\t\tlocation key (0 UNKNOWN.0 0) type XATTR\n\t\ttransid 8 data_len 6 name_len 6\n\t\tname: user.x\n\t\tdata ab\n",
            "\t\tverity descriptor size 256 encryption 0\n",
            "\t\troot ref key dirid 256 sequence 2 name sub\n",
            "\t\tlength 8388608 owner 2 stripe_len 65536 type SYSTEM|DUP\n\t\tio_align 65536 io_width 65536 sector_size 4096\n\t\tnum_stripes 1 sub_stripes 1\n\t\t\tstripe 0 devid 1 offset 22020096\n\t\t\tdev_uuid 11111111-1111-1111-1111-111111111111\n",
            "\t\tblock group used 4096 chunk_objectid 256 flags DATA|single\n",
            "\t\tfree space info extent count 1 flags 1\n",
            "\t\tfree space bitmap\n",
            "\t\ttemporary item objectid BALANCE offset 0\n\t\tbalance status flags 3\n\t\tDATA\n\t\tprofiles 0 devid 0 target 0 flags 0\n\t\tusage_min 10 usage_max 90 pstart 0 pend 0\n",
            " key (FREE_SPACE UNTYPED 1048576) itemoff",
            "\t\tlocation key (256 INODE_ITEM 0)\n\t\tcache generation 7 entries 3 bitmaps 1\n",
            "key (0x0000000000001234 UUID_KEY_SUBVOL 0x0000000000005678) itemoff",
            "\t\tsubvol_id 257\n",
            "\t\titem data a string\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("ERROR"), "{s}");
    }

    #[test]
    fn print_item_never_panics_on_random_bodies() {
        // xorshift: deterministic, no extra dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let ctx = DumpCtx { nodesize: 16384, sectorsize: 4096, csum_size: 4, csum_headers: false, csum_items: true, hide_names: true };
        for t in 0..=255u8 {
            for round in 0..40 {
                let len = (next() % 600) as usize;
                let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if round % 4 == 0 && !body.is_empty() {
                    // Plausible small lengths in the usual places.
                    body[0] = 1;
                    for b in body.iter_mut().skip(8).take(12) {
                        *b = 0;
                    }
                }
                let objectid = [0, 1, 5, 256, FREE_SPACE_OBJECTID, BALANCE_OBJECTID, u64::MAX][round % 7];
                let key = Key::new(objectid, t, next() % 3);
                let mut buf = Vec::new();
                print_item(&mut buf, &ctx, key, &body);
            }
        }
    }
}
