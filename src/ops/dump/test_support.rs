//! Test helpers shared by the files of `dump`: leaves made in memory, and
//! images made by mkfs.btrfs compared with btrfs-progs' output.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{print_block, DumpCtx};
use crate::format::{CsumType, Key};
use crate::fs::Filesystem;
use crate::tree::{Expect, TreeBlock};

const FSID: [u8; 16] = [7; 16];

/// A leaf of `nodesize` bytes at logical 65536 with the given items,
/// serialized by the tree layer's own leaf writer.
fn leaf_with(items: &[(Key, Vec<u8>)], nodesize: usize) -> Vec<u8> {
    let fmt = crate::tree::encode::BlockFormat::new(nodesize as u32, CsumType::Crc32c, FSID, [9; 16]).expect("format");
    let leaf = crate::tree::edit::EditLeaf { items: items.to_vec() };
    leaf.to_bytes(&fmt, 65536, 3, 5).expect("leaf fits")
}

pub(super) fn dump_leaf(items: &[(Key, Vec<u8>)]) -> String {
    let mut items = items.to_vec();
    items.sort_by_key(|(k, _)| *k);
    let raw = leaf_with(&items, 4096);
    let block = TreeBlock::parse(65536, raw, CsumType::Crc32c, &FSID, Expect::default()).expect("leaf parses");
    let ctx = DumpCtx { nodesize: 4096, sectorsize: 4096, csum_size: 4, csum_headers: false, csum_items: false, hide_names: false };
    let mut buf = Vec::new();
    print_block(&mut buf, &ctx, &block);
    String::from_utf8_lossy(&buf).into_owned()
}

fn have_mkfs() -> bool {
    Command::new("mkfs.btrfs").arg("--version").output().is_ok_and(|o| o.status.success())
}

pub(super) fn mkfs(dir: &Path, name: &str, extra: &[&str]) -> Option<PathBuf> {
    if !have_mkfs() {
        eprintln!("mkfs.btrfs not installed: skipping");
        return None;
    }
    let p = dir.join(name);
    crate::volumes::raw::set_len(&p, 300 << 20).unwrap();
    let st = Command::new("mkfs.btrfs").arg("-q").arg("-f").args(extra).arg(&p).output().unwrap();
    assert!(st.status.success(), "mkfs.btrfs failed: {}", String::from_utf8_lossy(&st.stderr));
    Some(p)
}

pub(super) fn open_fs(p: &Path) -> Filesystem {
    let opts = crate::volumes::OpenOptions { image: p.to_path_buf(), ..Default::default() };
    Filesystem::open(&opts).unwrap()
}

/// Output of btrfs-progs, when the reference version (6.2) is installed:
/// other versions word some lines differently.
pub(super) fn progs(args: &[&str]) -> Option<String> {
    let v = Command::new("btrfs").arg("--version").output().ok()?;
    if !String::from_utf8_lossy(&v.stdout).starts_with("btrfs-progs v6.2\n") {
        eprintln!("btrfs-progs 6.2 not installed: not comparing with it");
        return None;
    }
    let o = Command::new("btrfs").env("TZ", "UTC").args(args).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}
