//! Promise: `btrs extract` never creates, writes, chowns, chmods or times anything outside
//! DEST, whatever the image holds (duplicate names, `.`/`..`, `/` or NUL in names, symlinks
//! anywhere, hard links to a symlink-shadowed place, directory loops) or DEST already holds
//! (symlinks where the image has entries); an entry that cannot be extracted is named in a
//! summary, exit 1, and everything else is extracted.
//!
//! The hostile images are real `btrs mkfs -r` images whose DIR_INDEX items are patched
//! (names of the same length, locations) and resealed in every copy; `read_dir`, which
//! extract walks, reads DIR_INDEX.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::fixtures::walk_manifest;
use crate::common::interop::is_root;
use crate::util::{btrs, fingerprint, ok, pseudo, s};

const HEADER_SIZE: usize = 101;
const ITEM_SIZE: usize = 25;

fn open_fs(img: &Path) -> btrs::Filesystem {
    btrs::Filesystem::open(&btrs::volumes::OpenOptions { image: img.to_path_buf(), ..Default::default() }).unwrap()
}

fn mkfs_r(src: &Path, img: &Path) {
    ok(&["mkfs", "-f", "-b", "128M", "-r", s(src), s(img)]);
}

/// Apply `edit` to the bytes of every leaf of the top-level subvolume's tree; a leaf it
/// changes (returns true) is resealed and written to each of its copies. Leaves changed.
fn edit_fs_leaves(img: &Path, mut edit: impl FnMut(&mut [u8]) -> bool) -> usize {
    let fs = open_fs(img);
    let nodesize = fs.sb.nodesize.get() as usize;
    let root = fs.tree_root(btrs::format::FS_TREE_OBJECTID).unwrap();
    let mut stack = vec![fs.reader.root_block(&root).unwrap()];
    let mut leaves = Vec::new();
    while let Some(b) = stack.pop() {
        if b.is_leaf() {
            leaves.push(b.logical);
        } else {
            for i in 0..b.nritems() {
                stack.push(fs.reader.child(&b, i, root.owner).unwrap());
            }
        }
    }
    let f = fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let mut changed = 0;
    for logical in leaves {
        let copies: Vec<u64> = (0..fs.volume().num_copies(logical).unwrap())
            .map(|m| {
                let p = fs.volume().locate(logical, m).unwrap();
                assert_eq!(p.devid, 1, "one-image filesystem");
                p.physical
            })
            .collect();
        let mut b = vec![0u8; nodesize];
        f.read_exact_at(&mut b, copies[0]).unwrap();
        if edit(&mut b) {
            let c = fs.csum.compute(&b[32..]);
            b[..32].copy_from_slice(&c);
            for p in copies {
                f.write_all_at(&b, p).unwrap();
            }
            changed += 1;
        }
    }
    changed
}

fn get_u16(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize
}

fn get_u32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

/// Offsets of the DIR_INDEX item bodies of a leaf (one entry each: location key 0..17,
/// transid, data_len at 25, name_len at 27, type at 29, name from 30).
fn dir_index_bodies(b: &[u8]) -> Vec<usize> {
    (0..get_u32(b, 96))
        .map(|i| HEADER_SIZE + i * ITEM_SIZE)
        .filter(|&item| b[item + 8] == btrs::format::DIR_INDEX_KEY)
        .map(|item| HEADER_SIZE + get_u32(b, item + 17))
        .collect()
}

fn entry_name(b: &[u8], body: usize) -> &[u8] {
    &b[body + 30..body + 30 + get_u16(b, body + 27)]
}

/// Rename DIR_INDEX entries `from` -> `to` (same length; an empty `to` sets name_len to 0).
/// Each `from` must be the name of exactly one entry.
fn rename_entries(img: &Path, renames: &[(&[u8], &[u8])]) {
    let mut found = vec![0; renames.len()];
    edit_fs_leaves(img, |b| {
        let mut changed = false;
        for body in dir_index_bodies(b) {
            let Some(k) = renames.iter().position(|(from, _)| entry_name(b, body) == *from) else { continue };
            let to = renames[k].1;
            if to.is_empty() {
                b[body + 27..body + 29].copy_from_slice(&0u16.to_le_bytes());
            } else {
                assert_eq!(to.len(), renames[k].0.len(), "same length");
                b[body + 30..body + 30 + to.len()].copy_from_slice(to);
            }
            found[k] += 1;
            changed = true;
        }
        changed
    });
    assert!(found.iter().all(|&n| n == 1), "entries found per rename: {found:?}");
}

/// Point the DIR_INDEX entry `name` (unique in the image) at inode `ino`.
fn repoint_entry(img: &Path, name: &[u8], ino: u64) {
    let mut found = 0;
    edit_fs_leaves(img, |b| {
        let mut changed = false;
        for body in dir_index_bodies(b) {
            if entry_name(b, body) == name {
                b[body..body + 8].copy_from_slice(&ino.to_le_bytes());
                found += 1;
                changed = true;
            }
        }
        changed
    });
    assert_eq!(found, 1, "entry {:?}", String::from_utf8_lossy(name));
}

/// Everything about the tree at `root` (itself included) that a write, chown, chmod, utimes
/// or xattr change would alter: type, mode, owner, mtime, ctime, size, content, link target.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let extra = if md.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            String::new()
        } else if md.file_type().is_symlink() {
            format!("-> {:?}", fs::read_link(&p).unwrap())
        } else if md.is_file() {
            format!("{:?}", fingerprint(&p))
        } else {
            String::new()
        };
        let what = format!(
            "mode {:o} owner {}:{} mtime {}.{} ctime {}.{} size {} nlink {} {extra}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec(),
            md.size(),
            md.nlink()
        );
        out.insert(p.strip_prefix(root).unwrap().to_path_buf(), what);
    }
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A scratch dir with the host tree an attack aims at: `outside/` (files, a subdirectory).
struct Scene {
    tmp: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("outside");
        fs::create_dir_all(out.join("sub")).unwrap();
        fs::write(out.join("victim"), b"do not touch").unwrap();
        fs::write(out.join("victim2"), b"nor this").unwrap();
        fs::write(out.join("sub/file"), b"deep").unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o750)).unwrap();
        fs::create_dir(tmp.path().join("src")).unwrap();
        Scene { tmp }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
    fn src(&self, rel: &str) -> PathBuf {
        self.p("src").join(rel)
    }
    fn file(&self, rel: &str, data: &[u8]) {
        let p = self.src(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    fn dir(&self, rel: &str) {
        fs::create_dir_all(self.src(rel)).unwrap();
    }
    fn link(&self, target: impl AsRef<Path>, rel: &str) {
        let p = self.src(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, p).unwrap();
    }
    fn image(&self) -> PathBuf {
        let img = self.p("fs.img");
        mkfs_r(&self.p("src"), &img);
        img
    }

    /// Run `btrs extract IMG DEST`; assert that nothing outside DEST changed (`outside/` is
    /// identical, the scratch dir gained only DEST) and that it exited `code`, with a summary
    /// naming `failures` entries when 1. Its stderr.
    fn extract(&self, img: &Path, dest: &Path, code: i32, failures: usize) -> String {
        let before = snapshot(&self.p("outside"));
        let mut top = names(self.tmp.path());
        let dest_name = dest.file_name().unwrap().to_string_lossy().into_owned();
        if !top.contains(&dest_name) {
            top.push(dest_name);
            top.sort();
        }
        let (c, _, err) = btrs(&["extract", s(img), s(dest)]);
        assert_eq!(snapshot(&self.p("outside")), before, "extract changed things outside DEST; stderr: {err}");
        assert_eq!(names(self.tmp.path()), top, "extract made entries beside DEST; stderr: {err}");
        assert_eq!(c, code, "exit status; stderr: {err}");
        if code == 1 {
            let what = if failures == 1 { "entry" } else { "entries" };
            assert!(err.contains(&format!("btrs: error: {failures} {what} could not be extracted:")), "summary: {err}");
        }
        err
    }
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn is_symlink_to(p: &Path, target: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) && fs::read_link(p).unwrap() == target
}

/// Regression: a symlink `a -> /abs/outside` followed by a directory entry also named `a`
/// made extract create `a/pwned` (and `a/sub/deep`) inside the symlink's target and chmod it
/// to the directory's mode (is_dir() and chmod followed the symlink). A regular file and a
/// hard link named `a` too are the same attack on files. Now each later `a` is a duplicate
/// name, reported, and the rest of the tree is extracted.
#[test]
fn symlink_then_directory_of_the_same_name_stays_inside() {
    let sc = Scene::new();
    let outside = sc.p("outside");
    sc.file("d/0", b"zero");
    sc.link(&outside, "d/a");
    sc.file("d/b/pwned", b"pwned");
    sc.file("d/b/sub/deep", b"deep");
    fs::set_permissions(sc.src("d/b"), fs::Permissions::from_mode(0o777)).unwrap();
    sc.file("d/c", b"clobber");
    fs::set_permissions(sc.src("d/c"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::hard_link(sc.src("d/0"), sc.src("d/e")).unwrap();
    sc.file("d/f", b"after");
    sc.file("k/k", b"kept");
    sc.file("z", b"last");
    let img = sc.image();
    // Index order in d: 0, a (symlink), b, c, e; b, c and e all become `a`.
    rename_entries(&img, &[(b"b", b"a"), (b"c", b"a"), (b"e", b"a")]);
    let dest = sc.p("dest");
    let err = sc.extract(&img, &dest, 1, 3);
    assert_eq!(err.matches("duplicate name").count(), 3, "{err}");
    assert!(is_symlink_to(&dest.join("d/a"), &outside), "the symlink itself is extracted");
    assert_eq!(read(&dest.join("d/0")), b"zero");
    assert_eq!(fs::metadata(dest.join("d/0")).unwrap().nlink(), 1, "the duplicate hard link is not made");
    assert_eq!(read(&dest.join("d/f")), b"after");
    assert_eq!(read(&dest.join("k/k")), b"kept");
    assert_eq!(read(&dest.join("z")), b"last");
}

/// Regression: the same with a relative symlink `a/x -> ../../outside` that climbs out of
/// DEST, then entries under `a/x`.
#[test]
fn relative_symlink_escape_stays_inside() {
    let sc = Scene::new();
    sc.link("../../outside", "a/x");
    sc.file("a/y/pwned", b"pwned");
    sc.file("a/y/sub/deep", b"deep");
    sc.file("a/z", b"sibling");
    sc.file("b", b"top");
    let img = sc.image();
    rename_entries(&img, &[(b"y", b"x")]);
    let dest = sc.p("dest");
    let err = sc.extract(&img, &dest, 1, 1);
    assert!(err.contains("/a: entry \"x\": duplicate name"), "{err}");
    assert!(is_symlink_to(&dest.join("a/x"), Path::new("../../outside")));
    assert_eq!(read(&dest.join("a/z")), b"sibling");
    assert_eq!(read(&dest.join("b")), b"top");
    assert!(!sc.p("pwned").exists() && !sc.p("outside/pwned").exists());
}

/// Regression: names no host directory can hold (`..`, `.`, `a/b`, with NUL, empty) aborted
/// the whole extraction at the first one (or, for an empty name, extracted a directory's
/// entries into its parent). Each is now a failure named with its parent path; a directory
/// whose listing holds an empty name (the reader refuses it) is one; the rest is extracted.
#[test]
fn corrupt_names_fail_alone() {
    let sc = Scene::new();
    sc.file("n/aa/inner", b"inner of ..");
    sc.file("n/b/inner2", b"inner of .");
    sc.dir("n/a");
    sc.file("n/ccc", b"slash");
    sc.file("n/ddd", b"nul");
    sc.file("n/e", b"fine");
    sc.file("m/x1", b"empty name");
    sc.file("m/y", b"in m");
    sc.file("z", b"last");
    let img = sc.image();
    rename_entries(&img, &[(b"aa", b".."), (b"b", b"."), (b"ccc", b"a/b"), (b"ddd", b"d\0d"), (b"x1", b"")]);
    let dest = sc.p("dest");
    let err = sc.extract(&img, &dest, 1, 5);
    for want in [
        "/n: entry \"..\": not a valid name",
        "/n: entry \".\": not a valid name",
        "/n: entry \"a/b\": name contains '/'",
        "/n: entry \"d\\0d\": name contains a NUL byte",
        "/m: corrupt",
    ] {
        assert!(err.contains(want), "want {want:?} in {err}");
    }
    assert_eq!(read(&dest.join("n/e")), b"fine");
    assert_eq!(read(&dest.join("z")), b"last");
    assert_eq!(names(&dest.join("n")), ["a", "e"]);
    assert!(names(&dest.join("n/a")).is_empty());
    assert_eq!(names(&dest), ["m", "n", "z"]);
    assert!(names(&dest.join("m")).is_empty(), "m's listing is unreadable");
}

/// Regression: merging into an existing DEST whose entries are symlinks out of it, where the
/// image has a directory (`a`, whose file `t` has a second link `b/t2`), a file, a hard link,
/// a symlink and a fifo of the same names. The directory was entered through the symlink
/// (its files written outside, the target chmodded) and `b/t2` hard-linked to the file made
/// outside. Now every such entry is a failure and is left alone; `b/t2` becomes the first
/// extracted copy of its inode.
#[test]
fn merge_never_follows_host_symlinks() {
    let sc = Scene::new();
    let outside = sc.p("outside");
    sc.file("a/pwned", b"pwned");
    sc.file("a/t", b"shared");
    fs::set_permissions(sc.src("a"), fs::Permissions::from_mode(0o777)).unwrap();
    sc.dir("b");
    fs::hard_link(sc.src("a/t"), sc.src("b/t2")).unwrap();
    sc.file("f", b"image f");
    sc.file("g", b"image g");
    fs::hard_link(sc.src("g"), sc.src("h")).unwrap();
    sc.link("elsewhere", "l");
    assert!(std::process::Command::new("mkfifo").arg(sc.src("p")).status().unwrap().success());
    sc.file("real/new", b"new");
    sc.file("z", b"last");
    let img = sc.image();

    let dest = sc.p("dest");
    fs::create_dir_all(dest.join("real")).unwrap();
    fs::write(dest.join("real/mine"), b"host file").unwrap();
    symlink(&outside, dest.join("a")).unwrap();
    symlink(outside.join("victim"), dest.join("f")).unwrap();
    symlink(outside.join("victim2"), dest.join("h")).unwrap();
    symlink(&outside, dest.join("l")).unwrap();
    symlink(outside.join("fifo"), dest.join("p")).unwrap();
    let err = sc.extract(&img, &dest, 1, 5);
    assert_eq!(err.matches("already exists on the host as a symlink (not followed)").count(), 5, "{err}");
    for name in ["a", "f", "h", "l", "p"] {
        assert!(err.contains(&format!("  /{name}: ")), "/{name} reported: {err}");
    }
    assert!(is_symlink_to(&dest.join("a"), &outside));
    assert!(is_symlink_to(&dest.join("f"), &outside.join("victim")));
    assert!(is_symlink_to(&dest.join("h"), &outside.join("victim2")));
    assert!(is_symlink_to(&dest.join("l"), &outside));
    assert!(is_symlink_to(&dest.join("p"), &outside.join("fifo")));
    let t2 = fs::symlink_metadata(dest.join("b/t2")).unwrap();
    assert!(t2.is_file() && t2.nlink() == 1, "b/t2 is a file of its own");
    assert_eq!(read(&dest.join("b/t2")), b"shared");
    assert_eq!(read(&dest.join("g")), b"image g");
    assert_eq!(read(&dest.join("real/mine")), b"host file");
    assert_eq!(read(&dest.join("real/new")), b"new");
    assert_eq!(read(&dest.join("z")), b"last");
}

/// Regression: a directory entry pointing at an ancestor (its parent, and the root) ended
/// the whole extraction at the loop. Now it is a failure ("reached twice") and the
/// entries after it are extracted.
#[test]
fn directory_loop_ends_and_the_rest_is_extracted() {
    let sc = Scene::new();
    sc.file("l/sub/inner", b"inner");
    sc.file("l/t", b"sibling");
    sc.file("l/up/inner", b"inner");
    sc.file("z", b"last");
    let img = sc.image();
    let l = open_fs(&img).resolve("l").unwrap().id.ino;
    repoint_entry(&img, b"sub", l);
    repoint_entry(&img, b"up", btrs::format::FIRST_FREE_OBJECTID);
    let dest = sc.p("dest");
    let start = std::time::Instant::now();
    let err = sc.extract(&img, &dest, 1, 2);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(err.matches("reached twice").count(), 2, "{err}");
    assert!(err.contains("  /l/sub: ") && err.contains("  /l/up: "), "{err}");
    assert_eq!(names(&dest), ["l", "z"]);
    assert_eq!(names(&dest.join("l")), ["t"]);
    assert_eq!(read(&dest.join("l/t")), b"sibling");
    assert_eq!(read(&dest.join("z")), b"last");
}

/// Regression: a file whose data fails its checksum in every copy ended the extraction; now
/// it is a failure and the other files are extracted.
#[test]
fn unreadable_file_fails_alone() {
    let sc = Scene::new();
    sc.file("a-bad", &pseudo(64 << 10, 1));
    sc.file("b-good", &pseudo(64 << 10, 2));
    let img = sc.image();
    {
        let fs = open_fs(&img);
        let ent = fs.resolve("a-bad").unwrap();
        let (_, fe) = fs.file_extents(ent.id).unwrap().into_iter().next().unwrap();
        let btrs::format::items::FileExtentKind::Regular { disk_bytenr, .. } = fe.kind else { panic!("a-bad is not a regular extent") };
        let f = fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
        for m in 0..fs.volume().num_copies(disk_bytenr).unwrap() {
            let p = fs.volume().locate(disk_bytenr, m).unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, p.physical + 100).unwrap();
            f.write_all_at(&[b[0] ^ 0x40], p.physical + 100).unwrap();
        }
    }
    let dest = sc.p("dest");
    let err = sc.extract(&img, &dest, 1, 1);
    assert!(err.contains("  /a-bad: ") && err.contains("csum"), "{err}");
    assert_eq!(read(&dest.join("b-good")), pseudo(64 << 10, 2));
}

/// A tree with every kind of entry and the metadata extract keeps, extracted into a fresh
/// DEST and merged into an existing directory named through a symlink (followed once, at
/// the top: the caller's choice), comes out as it went in: modes (setuid, setgid, read-only
/// directories), owners, nanosecond mtimes, xattrs (security.capability after chown, a
/// trusted xattr on a symlink), hard links across directories (one 100 levels down, deeper
/// than the directories kept open), holes, fifos, sockets, devices.
#[test]
fn valid_tree_round_trips() {
    let sc = Scene::new();
    let root = is_root();
    sc.file("setuid", b"#!/bin/sh\n");
    fs::set_permissions(sc.src("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    sc.file("g/file", b"in a setgid dir");
    fs::set_permissions(sc.src("g"), fs::Permissions::from_mode(0o2775)).unwrap();
    sc.file("ro/a", b"in a read-only dir");
    sc.file("empty", b"");
    let sparse = fs::File::create(sc.src("sparse")).unwrap();
    sparse.write_all_at(b"start", 0).unwrap();
    sparse.write_all_at(&[7u8; 5000], 3 << 20).unwrap();
    sparse.set_len(9 << 20).unwrap();
    drop(sparse);
    let mut deep = String::from("deep");
    for i in 0..100 {
        deep.push_str(&format!("/{}", i % 10));
    }
    sc.file(&format!("{deep}/bottom"), b"far down");
    fs::hard_link(sc.src(&format!("{deep}/bottom")), sc.src("top-link")).unwrap();
    fs::hard_link(sc.src("g/file"), sc.src(&format!("{deep}/up-link"))).unwrap();
    sc.link("setuid", "rel-link");
    sc.link("/nonexistent/abs", "dangling");
    xattr::set(sc.src("setuid"), "user.note", b"a value").unwrap();
    xattr::set(sc.src("g"), "user.empty", b"").unwrap();
    assert!(std::process::Command::new("mkfifo").arg(sc.src("fifo")).status().unwrap().success());
    drop(std::os::unix::net::UnixListener::bind(sc.src("sock")).unwrap());
    // security.capability v2: cap_net_bind_service (bit 10) permitted and effective.
    let mut cap = Vec::new();
    for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&w.to_le_bytes());
    }
    if root {
        assert!(std::process::Command::new("mknod").arg(sc.src("chr")).args(["c", "4", "5"]).status().unwrap().success());
        assert!(std::process::Command::new("mknod").arg(sc.src("blk")).args(["b", "259", "70000"]).status().unwrap().success());
        std::os::unix::fs::lchown(sc.src("g/file"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(sc.src("rel-link"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::chown(sc.src("fifo"), Some(77), Some(88)).unwrap();
        xattr::set(sc.src("setuid"), "security.capability", &cap).unwrap();
        xattr::set(sc.src("rel-link"), "trusted.note", b"on the link").unwrap();
    }
    fs::set_permissions(sc.src("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    for (i, p) in ["setuid", "g/file", "sparse", "empty", "g", "ro", ""].iter().enumerate() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000 + i as u64, 123_456_789 + i as u32);
        let f = fs::File::open(sc.src(p)).unwrap();
        f.set_times(fs::FileTimes::new().set_modified(t)).unwrap();
    }
    let img = sc.image();
    let expected = walk_manifest(&sc.p("src"));

    let check = |out: &Path, skip: &[&str]| {
        let (mut want, mut got) = (expected.clone(), walk_manifest(out));
        for m in [&mut want, &mut got] {
            m["entries"].as_array_mut().unwrap().retain(|e| !skip.iter().any(|s| e["path"] == *s));
        }
        crate::common::fixtures::assert_manifest_eq(&want, &got);
        let blocks = fs::metadata(out.join("sparse")).unwrap().blocks();
        assert!(blocks * 512 < 1 << 20, "sparse file is not sparse: {blocks} blocks");
        if root {
            assert_eq!(xattr::get(out.join("setuid"), "security.capability").unwrap(), Some(cap.clone()));
            assert_eq!(xattr::get(out.join("rel-link"), "trusted.note").unwrap().as_deref(), Some(&b"on the link"[..]));
        }
    };
    let fresh = sc.p("fresh");
    sc.extract(&img, &fresh, 0, 0);
    check(&fresh, &[]);

    let real = sc.p("real");
    fs::create_dir(&real).unwrap();
    fs::write(real.join("mine"), b"host file").unwrap();
    let via = sc.p("via-link");
    symlink(&real, &via).unwrap();
    let real_before = fs::metadata(&real).unwrap();
    sc.extract(&img, &via, 0, 0);
    assert!(fs::symlink_metadata(&via).unwrap().file_type().is_symlink());
    assert_eq!(read(&real.join("mine")), b"host file");
    // The directory merged into keeps its own metadata (see existing_directories_keep_their_metadata).
    let real_after = fs::metadata(&real).unwrap();
    assert_eq!((real_after.mode(), real_after.uid()), (real_before.mode(), real_before.uid()));
    check(&real, &["mine", ""]);

    // One file to a new name.
    let one = sc.p("one");
    sc.extract_path(&img, "/setuid", &one);
    assert_eq!(read(&one), b"#!/bin/sh\n");
    assert_eq!(fs::metadata(&one).unwrap().mode() & 0o7777, 0o4755);
}

/// Regression (third attacker pass): an image whose root is mode 4777, extracted into an
/// existing DEST, made DEST setuid and world-writable (and, as root, the image's uid owned
/// it); so did a merged subdirectory. Directories that were already there now keep their
/// own owner, mode and times; only what extract makes takes the image's.
#[test]
fn existing_directories_keep_their_metadata() {
    let sc = Scene::new();
    sc.file("sub/f", b"data");
    fs::set_permissions(sc.src("sub"), fs::Permissions::from_mode(0o4777)).unwrap();
    fs::set_permissions(sc.src(""), fs::Permissions::from_mode(0o4777)).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(sc.src(""), Some(4242), Some(4242)).unwrap();
        std::os::unix::fs::lchown(sc.src("sub"), Some(4242), Some(4242)).unwrap();
    }
    let img = sc.image();
    let old = std::time::UNIX_EPOCH + std::time::Duration::new(1_500_000_000, 0);
    let dest = sc.p("dest");
    fs::create_dir_all(dest.join("sub")).unwrap();
    for d in [dest.join("sub"), dest.clone()] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
        fs::File::open(&d).unwrap().set_times(fs::FileTimes::new().set_modified(old)).unwrap();
    }
    let want = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        // Not the mtime: a file made inside a directory moves it, as on any host.
        (m.mode() & 0o7777, m.uid(), m.gid())
    };
    let (dest_before, sub_before) = (want(&dest), want(&dest.join("sub")));
    sc.extract(&img, &dest, 0, 0);
    assert_eq!(read(&dest.join("sub/f")), b"data");
    assert_eq!(want(&dest), dest_before, "DEST took the image root's metadata");
    let dest_mtime = fs::metadata(&dest).unwrap().mtime();
    assert_eq!(dest_mtime, 1_500_000_000, "DEST took the image root's times");
    assert_eq!(want(&dest.join("sub")), sub_before, "a merged directory took the image's metadata");
    // What extract makes still takes the image's metadata.
    let fresh = sc.p("fresh");
    sc.extract(&img, &fresh, 0, 0);
    assert_eq!(want(&fresh).0, 0o4777);
    assert_eq!(want(&fresh.join("sub")).0, 0o4777);
}

impl Scene {
    fn extract_path(&self, img: &Path, path: &str, dest: &Path) {
        let before = snapshot(&self.p("outside"));
        ok(&["extract", s(img), path, s(dest)]);
        assert_eq!(snapshot(&self.p("outside")), before);
    }
}

/// DEST's own name: an image root extracted over an existing non-directory, or a file over
/// anything, is refused before anything is made.
#[test]
fn existing_dest_is_refused_whole() {
    let sc = Scene::new();
    sc.file("f", b"data");
    let img = sc.image();
    let dest = sc.p("dest");
    symlink(sc.p("outside/victim"), &dest).unwrap();
    let before = snapshot(&sc.p("outside"));
    let (c, _, err) = btrs(&["extract", s(&img), s(&dest)]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    let (c, _, err) = btrs(&["extract", s(&img), "/f", s(&dest)]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(snapshot(&sc.p("outside")), before);
}

/// A tree 1200 directories deep, with a hard link from its bottom to the top, extracts under
/// a limit of 128 open files: only the deepest directories along the path stay open, the
/// others are reopened by name from an open ancestor.
#[test]
fn deep_tree_extracts_with_few_descriptors() {
    use rustix::fs::{Mode, OFlags};
    const DEPTH: usize = 1200;
    let sc = Scene::new();
    // Built one level at a time through directory handles (a test must not chdir).
    let mut dir = rustix::fs::open(sc.src(""), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..DEPTH {
        rustix::fs::mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).unwrap();
        dir = rustix::fs::openat(&dir, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    let f = rustix::fs::openat(&dir, "f", OFlags::WRONLY | OFlags::CREATE, Mode::from_raw_mode(0o644)).unwrap();
    std::fs::File::from(f).write_all_at(b"bottom", 0).unwrap();
    let bottom = format!("{}/f", vec!["d"; DEPTH].join("/"));
    fs::hard_link(sc.src(&bottom), sc.src("top")).unwrap();
    let img = sc.image();
    let dest = sc.p("dest");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 128; exec \"$0\" \"$@\"")
        .arg(crate::util::BIN)
        .args(["extract", s(&img), s(&dest)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (fs::metadata(dest.join(&bottom)).unwrap(), fs::metadata(dest.join("top")).unwrap());
    assert_eq!(read(&dest.join("top")), b"bottom");
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "one inode, two links");
}

/// Extract walks one call per directory level, up to 4096 levels: on its own thread with
/// a large stack, so a small stack limit of the caller (`ulimit -s 1024`) cannot make
/// it overflow (on a 1 MiB main stack it did, at 4096 levels).
#[test]
fn deepest_allowed_tree_extracts_under_a_small_stack_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = crate::util::mkfs(tmp.path(), 1, "128M", "single", &[]);
    let deep = vec!["d"; 4096].join("/");
    crate::util::ok(&["mkdir", "-p", crate::util::s(&imgs[0]), &format!("/{deep}")]);
    let out = tmp.path().join("out");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -s 1024; exec \"$0\" extract \"$1\" / \"$2\"")
        .arg(crate::util::BIN)
        .arg(&imgs[0])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "extract under ulimit -s 1024: {:?} {}", status.status, String::from_utf8_lossy(&status.stderr));
    let dirs = std::process::Command::new("find").arg(&out).args(["-type", "d"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&dirs.stdout).lines().count(), 4097, "out itself and 4096 levels");
}
