//! `btrs dump-tree` against `btrfs inspect-internal dump-tree` of the same
//! unmounted images, flag set by flag set: the breadth-first default and
//! `--dfs` on trees of three levels, `-b` with and without `--follow`, `-e`,
//! `-d`, `-u`, `-r`, `-R`, `-t`, `--hide-names`, `--csum-headers`,
//! `--csum-items`, several devices as positionals and `--noscan`; on
//! btrs-made and mkfs.btrfs-made filesystems.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::interop::progs_for;
use common::{btrs, ok, s};

/// progs' dump-tree output without its `btrfs-progs vX.Y` banner line.
fn progs_dump(args: &[&str], images: &[PathBuf]) -> (i32, String) {
    let o = Command::new("btrfs")
        .env("TZ", "UTC")
        .args(["inspect-internal", "dump-tree"])
        .args(args)
        .args(images)
        .output()
        .expect("running btrfs");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let out = match out.split_once('\n') {
        Some((banner, rest)) if banner.starts_with("btrfs-progs v") => rest.to_string(),
        _ => out,
    };
    (o.status.code().unwrap_or(-1), out)
}

fn btrs_dump(args: &[&str], images: &[PathBuf]) -> (i32, String, String) {
    let mut a = vec!["dump-tree"];
    a.extend_from_slice(args);
    a.extend(images.iter().map(|p| s(p)));
    btrs(&a)
}

/// Both print the same for `args` on `images`, and both succeed.
fn same(args: &[&str], images: &[PathBuf], what: &str) -> String {
    let (pc, want) = progs_dump(args, images);
    let (bc, got, err) = btrs_dump(args, images);
    assert_eq!(pc, 0, "{what}: progs dump-tree {args:?} failed");
    assert_eq!(bc, 0, "{what}: btrs dump-tree {args:?}: {err}");
    if got != want {
        let line = got.lines().zip(want.lines()).position(|(a, b)| a != b).unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "{what}: dump-tree {args:?} differs from progs at line {} (btrs {} lines, progs {} lines):\nbtrs:  {:?}\nprogs: {:?}",
            line + 1,
            got.lines().count(),
            want.lines().count(),
            got.lines().nth(line),
            want.lines().nth(line)
        );
    }
    got
}

/// A source tree whose fs tree has three levels with 4 KiB nodes: 3000
/// files with names long enough to fill 150+ leaves, some data, a symlink.
fn source_tree(d: &Path) -> PathBuf {
    let src = d.join("src");
    for i in 0..30 {
        let dir = src.join(format!("directory-number-{i:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for j in 0..100 {
            let body = if j % 10 == 0 { common::pseudo(5000 + j, j as u64) } else { Vec::new() };
            std::fs::write(dir.join(format!("a-file-with-a-rather-long-name-{j:04}")), body).unwrap();
        }
    }
    std::os::unix::fs::symlink("directory-number-000", src.join("link")).unwrap();
    src
}

/// The logical addresses of `tree`'s blocks at `level`, from btrs's own dump.
fn blocks_at(img: &Path, tree: &str, level: u8) -> Vec<u64> {
    ok(&["dump-tree", "-t", tree, s(img)])
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(if level == 0 { "leaf " } else { "node " })?;
            let (bytenr, rest) = rest.split_once(' ')?;
            let is_level = if level == 0 { rest.starts_with("items ") } else { rest.starts_with(&format!("level {level} ")) };
            is_level.then(|| bytenr.parse().unwrap())
        })
        .collect()
}

#[test]
fn three_level_trees_print_as_progs_prints_them() {
    let test = "three_level_trees_print_as_progs_prints_them";
    if !progs_for(test, false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = source_tree(d);
    let ours = d.join("btrs.img");
    ok(&["mkfs", "-n", "4096", "-b", "300M", "-r", s(&src), s(&ours)]);
    ok(&["setfattr", s(&ours), "/directory-number-000", "-n", "user.secret", "-v", "value-of-it"]);
    let theirs = d.join("progs.img");
    std::fs::File::create(&theirs).unwrap().set_len(300 << 20).unwrap();
    let st = Command::new("mkfs.btrfs").args(["-q", "-f", "-n", "4096", "-r"]).arg(&src).arg(&theirs).output().unwrap();
    assert!(st.status.success(), "mkfs.btrfs: {}", String::from_utf8_lossy(&st.stderr));

    for (img, what) in [(&ours, "btrs-made"), (&theirs, "mkfs.btrfs-made")] {
        let one = [img.clone()];
        // The fs tree has three levels: the test is about them.
        let roots = same(&["-r"], &one, what);
        assert!(roots.lines().any(|l| l.starts_with("fs tree key (FS_TREE ROOT_ITEM 0) ") && l.ends_with(" level 2")), "{what}: {roots}");
        let whole = same(&[], &one, what);
        // Breadth first: the fs tree's root, then its level-1 nodes, then leaves.
        let fs_part = whole.split("fs tree key (FS_TREE ROOT_ITEM 0) \n").nth(1).unwrap();
        let first_leaf = fs_part.find("\nleaf ").unwrap();
        assert!(!fs_part[first_leaf..].split("tree key").next().unwrap().contains("\nnode "), "{what}: a node after a leaf");
        let dfs = same(&["--dfs"], &one, what);
        assert_ne!(dfs, whole, "{what}: --dfs is another order");
        assert_eq!(dfs.lines().count(), whole.lines().count(), "{what}: the same blocks");
        for args in [
            &["--bfs"][..],
            &["--dfs", "--bfs"],
            &["-t", "fs"],
            &["-t", "5", "--dfs"],
            &["-t", "root"],
            &["-t", "chunk"],
            &["-t", "extent"],
            &["-t", "csum", "--csum-items"],
            &["-e"],
            &["-d"],
            &["-u"],
            &["-R"],
            &["-r", "-t", "fs"],
            &["-e", "-d"],
            &["--hide-names"],
            &["--csum-headers"],
            &["--csum-items", "--csum-headers", "-t", "dev"],
            &["--noscan"],
            // As progs: --follow alone is ignored, the last -t counts.
            &["--follow", "-t", "chunk"],
            &["-t", "fs", "-t", "root"],
            &["-t", "TREE_RELOC"],
            &["-t", "tree_log_fixup"],
            // Trees that are not there: the totals alone.
            &["-t", "quota"],
            &["-t", "999"],
        ] {
            same(args, &one, what);
        }
        let hidden = same(&["--hide-names", "-t", "fs"], &one, what);
        assert!(hidden.contains("name: HIDDEN") && !hidden.contains("a-file-with"), "{what}");
        let csums = same(&["--csum-items", "-t", "csum"], &one, what);
        assert!(csums.lines().any(|l| l.starts_with("\t\t[") && l.matches("] 0x").count() == 4), "{what}: four crc32c a line");

        // Single blocks: the root node, a level-1 node, a leaf; alone, followed, several.
        let root = blocks_at(img, "fs", 2);
        let mid = blocks_at(img, "fs", 1);
        let leaves = blocks_at(img, "fs", 0);
        assert_eq!(root.len(), 1, "{what}");
        assert!(mid.len() >= 2 && leaves.len() > 121, "{what}: {} nodes, {} leaves", mid.len(), leaves.len());
        let (r, m, l) = (root[0].to_string(), mid[1].to_string(), leaves[leaves.len() / 2].to_string());
        for args in [
            &["-b", &r][..],
            &["-b", &m],
            &["-b", &l],
            &["-b", &r, "--follow"],
            &["-b", &r, "--follow", "--dfs"],
            &["-b", &m, "--follow"],
            &["-b", &l, "-b", &m, "-b", &r],
            &["-b", &l, "--csum-headers", "--hide-names"],
        ] {
            same(args, &one, what);
        }
        let followed = same(&["-b", &m, "--follow"], &one, what);
        assert!(followed.starts_with(&format!("node {m} level 1 ")), "{what}");
        assert!(followed.matches("\nleaf ").count() >= 2, "{what}: the node's leaves follow it");
        // 0x hex is taken too, and a block given twice is printed once.
        let hex = format!("{:#x}", leaves[0]);
        let (c, out, err) = btrs_dump(&["-b", &hex, "-b", &leaves[0].to_string()], &one);
        assert_eq!(c, 0, "{err}");
        assert_eq!(out.matches(&format!("leaf {} items", leaves[0])).count(), 1, "{what}");
        assert!(err.contains("given twice"), "{err}");
    }
}

#[test]
fn block_errors_name_the_block_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.img");
    ok(&["mkfs", "-b", "200M", s(&img)]);
    let one = [img.clone()];
    let leaf = blocks_at(&img, "fs", 0)[0];
    for (bytenr, want) in
        [((leaf + 1).to_string(), "not aligned to sectorsize 4096"), ("9999998976".to_string(), "failed to read tree block 9999998976")]
    {
        let (c, out, err) = btrs_dump(&["-b", &leaf.to_string(), "-b", &bytenr], &one);
        assert_eq!(c, 1, "{bytenr}: {err}");
        assert!(err.contains(want), "{bytenr}: {err}");
        assert!(out.starts_with(&format!("leaf {leaf} items ")), "the readable block is printed: {out}");
    }
    for (args, what) in
        [(&["-b", "12x"][..], "not a block number"), (&["-b", "-5"], "-5"), (&["-b", "99999999999999999999"], "not a block number")]
    {
        let (c, _, err) = btrs_dump(args, &one);
        assert_eq!(c, 2, "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: {err}");
    }
    let (c, _, err) = btrs(&["dump-tree"]);
    assert_eq!(c, 2, "{err}");
}

#[test]
fn several_devices_as_positionals() {
    let test = "several_devices_as_positionals";
    if !progs_for(test, false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("m{i}.img"))).collect();
    ok(&["mkfs", "-b", "200M", "-d", "raid1", "-m", "raid1", s(&imgs[0]), s(&imgs[1])]);
    let f = d.join("f");
    std::fs::write(&f, common::pseudo(100_000, 4)).unwrap();
    ok(&["write", s(&imgs[0]), "/f", "--from", s(&f)]);
    // A subvolume and a snapshot: root refs, "file tree" labels; their names
    // print under --hide-names as progs prints them.
    ok(&["subvolume", "create", s(&imgs[0]), "/sv"]);
    ok(&["subvolume", "snapshot", s(&imgs[0]), "/sv", "/snap"]);
    for args in
        [&[][..], &["-d"], &["--noscan"], &["-t", "chunk"], &["-r"], &["--hide-names"], &["-t", "root", "--hide-names"], &["-t", "256"]]
    {
        same(args, &imgs, "two devices");
    }
    let (c, _, err) = btrs_dump(&["-t", "quota"], &imgs);
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("tree QUOTA_TREE has no ROOT_ITEM in the root tree"), "the reason is said on the side: {err}");
    // Alone in a directory with its sibling, the image finds it; with
    // --noscan it is all there is, and the other device is missing.
    let one = [imgs[0].clone()];
    let (c, out, err) = btrs_dump(&["-t", "chunk"], &one);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("num_stripes 2"), "{out}");
    let (c, _, err) = btrs_dump(&["--noscan", "-t", "chunk"], &one);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("missing") || err.contains("devid 2"), "{err}");
    // With --degraded it is read as progs reads it alone: the missing device named first.
    for args in [&["--noscan", "--degraded", "-t", "chunk"][..], &["--noscan", "--degraded", "-d"]] {
        let (pc, want) = progs_dump(&args[2..], &one);
        let (bc, got, err) = btrs_dump(args, &one);
        assert_eq!((pc, bc), (0, 0), "{err}");
        assert!(got.starts_with("warning, device 2 is missing\n"), "{got}");
        assert_eq!(got, want, "{args:?}");
    }
}

/// Where logical `at` lies in the single-profile image `img`, from its chunk tree.
fn physical_single(img: &Path, at: u64) -> u64 {
    let text = ok(&["dump-tree", "-t", "chunk", s(img)]);
    let mut chunk: Option<(u64, u64)> = None;
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if line.contains("CHUNK_ITEM") {
            let logical = w.iter().find_map(|x| x.strip_suffix(')')).and_then(|x| x.parse().ok()).unwrap();
            chunk = Some((logical, 0));
        } else if w.first() == Some(&"length") {
            chunk = chunk.map(|(l, _)| (l, w[1].parse().unwrap()));
        } else if w.first() == Some(&"stripe") && w.get(2) == Some(&"devid") {
            let (start, len) = chunk.unwrap();
            if (start..start + len).contains(&at) {
                return w[5].parse::<u64>().unwrap() + (at - start);
            }
        }
    }
    panic!("{at} in no chunk");
}

/// A damaged node whose every pointer names the same child (checksum
/// resealed): each block is printed once, the repeats named, and the dump
/// ends; it does not print the subtree once per pointer at every level.
#[test]
fn a_node_pointing_at_one_child_many_times_prints_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = source_tree(d);
    let img = d.join("a.img");
    ok(&["mkfs", "-n", "4096", "-m", "single", "-b", "300M", "-r", s(&src), s(&img)]);
    let root = blocks_at(&img, "fs", 2)[0];
    let leaves = blocks_at(&img, "fs", 0).len();
    let at = physical_single(&img, root);
    let mut node = vec![0u8; 4096];
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut node, at).unwrap();
    let nritems = u32::from_le_bytes(node[96..100].try_into().unwrap()) as usize;
    assert!(nritems >= 2, "{nritems}");
    // struct btrfs_key_ptr: a 17-byte key, then blockptr and generation.
    let first: [u8; 16] = node[101 + 17..101 + 33].try_into().unwrap();
    for slot in 1..nritems {
        let o = 101 + slot * 33 + 17;
        node[o..o + 16].copy_from_slice(&first);
    }
    let c = btrs::format::CsumType::Crc32c.compute(&node[32..]);
    node[..32].copy_from_slice(&c);
    f.write_all_at(&node, at).unwrap();
    drop(f);
    for order in ["--bfs", "--dfs"] {
        let (c, out, err) = btrs_dump(&["-t", "fs", order], std::slice::from_ref(&img));
        assert_eq!(c, 0, "{err}");
        let printed = out.lines().filter(|l| l.starts_with("leaf ") && l.contains(" items ")).count();
        assert!(printed < leaves, "{order}: {printed} leaves printed, the tree has {leaves}");
        assert_eq!(out.matches("is reached a second time").count(), nritems - 1, "{order}");
    }
}
