//! Read-path corner cases on images made by mkfs.btrfs (no root needed).

mod common;

use std::process::Command;

/// Two names whose btrfs name hash (crc32c seeded with ~1) is the same, found
/// by search: both end up in one DIR_ITEM, and lookups must pick by name.
const COLLIDING: [&str; 2] = ["collide-1371838", "collide-2000402"];

#[test]
fn name_hash_collisions_resolve_by_name() {
    assert_eq!(btrs::format::items::name_hash(COLLIDING[0].as_bytes()), btrs::format::items::name_hash(COLLIDING[1].as_bytes()));
    if !common::interop::progs_available() {
        assert_ne!(std::env::var("BTRS_INTEROP").as_deref(), Ok("require"), "mkfs.btrfs missing");
        eprintln!("skipped: name_hash_collisions_resolve_by_name: btrfs-progs not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for (i, n) in COLLIDING.iter().enumerate() {
        std::fs::write(src.join(n), format!("content of {i}")).unwrap();
    }
    let img = tmp.path().join("img");
    std::fs::File::create(&img).unwrap().set_len(200 << 20).unwrap();
    // Its NOTE (printed even with -q) is captured, not printed among the test results.
    let st = Command::new("mkfs.btrfs").args(["-q", "-f", "--rootdir"]).arg(&src).arg(&img).output().unwrap();
    assert!(st.status.success(), "mkfs.btrfs: {}", String::from_utf8_lossy(&st.stderr));
    // The image really holds one DIR_ITEM with both names.
    let dump = Command::new("btrfs").args(["inspect-internal", "dump-tree", "-t", "5"]).arg(&img).output().unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    let hash = btrs::format::items::name_hash(COLLIDING[0].as_bytes());
    let item_line = dump.lines().position(|l| l.contains(&format!("DIR_ITEM {hash})"))).expect("dir item");
    assert!(dump.lines().nth(item_line).unwrap().contains("itemsize 90"), "two 15-byte names in one item");
    for (i, n) in COLLIDING.iter().enumerate() {
        let out = common::btrs_cmd().arg("cat").arg(&img).arg(n).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("content of {i}"));
    }
    let out = common::btrs_cmd().arg("ls").arg(&img).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(COLLIDING.iter().all(|n| listing.lines().any(|l| l == *n)), "{listing}");
}
