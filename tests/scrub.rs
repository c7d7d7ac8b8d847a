//! `btrs scrub` on the foreign fixtures, with damage injected by the test
//! itself at places found with btrfs-progs (dump-tree), independent of btrs's
//! own chunk and tree code.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixtures::{foreign_names, load_manifest, unpack_foreign};
use common::interop::KernelLock;
use serde_json::Value;

fn btrs(args: &[&str]) -> (i32, String, String) {
    let out = common::btrs_cmd().args(args).output().expect("running btrs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Run `btrs scrub --json IMAGE extra...`; exit code and the parsed report.
fn scrub(image: &Path, extra: &[&str]) -> (i32, Value) {
    let img = image.to_str().expect("utf-8 path");
    let mut args = vec!["scrub", "--json", "--no-progress", img];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = btrs(&args);
    let v =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("scrub {img} {extra:?}: exit {code}, bad JSON ({e}): {stdout}\n{stderr}"));
    (code, v)
}

const ERROR_COUNTERS: [&str; 7] =
    ["read_errors", "csum_errors", "verify_errors", "super_errors", "corrected_errors", "uncorrectable_errors", "mirror_mismatches"];

fn assert_clean(report: &Value, what: &str) {
    for c in ERROR_COUNTERS {
        assert_eq!(report["totals"][c], 0, "{what}: {c} in {report:#}");
    }
    assert_eq!(report["findings"].as_array().map(|a| a.len()), Some(0), "{what}: findings in {report:#}");
}

fn findings(report: &Value) -> Vec<Value> {
    report["findings"].as_array().cloned().unwrap_or_default()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `btrfs inspect-internal dump-tree` output (btrfs-progs, not btrs).
fn dump_tree(image: &Path, tree: &str) -> String {
    let out = Command::new("btrfs").args(["inspect-internal", "dump-tree", "-t", tree]).arg(image).output().expect("btrfs dump-tree");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Chunks from btrfs-progs' dump of the chunk tree: (logical, length, type, [(devid, offset)]).
type ChunkDump = Vec<(u64, u64, String, Vec<(u64, u64)>)>;

fn chunks(image: &Path) -> ChunkDump {
    let text = dump_tree(image, "chunk");
    let mut out: ChunkDump = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if line.contains("CHUNK_ITEM") {
            let logical = w.iter().find_map(|s| s.strip_suffix(')')).and_then(|s| s.parse().ok()).expect("chunk key");
            out.push((logical, 0, String::new(), Vec::new()));
        } else if w.first() == Some(&"length") {
            if let Some(c) = out.last_mut() {
                c.1 = w[1].parse().expect("length");
                c.2 = w[w.len() - 1].to_string();
            }
        } else if w.first() == Some(&"stripe") && w.get(2) == Some(&"devid") {
            if let Some(c) = out.last_mut() {
                c.3.push((w[3].parse().expect("devid"), w[5].parse().expect("offset")));
            }
        }
    }
    out
}

/// Physical offset of `logical` on `devid` for mirrored profiles (DUP/RAID1/RAID1C3/C4):
/// every stripe holds the whole chunk. With DUP, `nth` picks among the stripes on that device.
fn physical(image: &Path, logical: u64, devid: u64, nth: usize) -> u64 {
    for (start, len, ty, stripes) in chunks(image) {
        if logical >= start && logical < start + len {
            assert!(!ty.contains("RAID0") && !ty.contains("RAID10"), "striped chunk {ty}");
            let s = stripes.iter().filter(|s| s.0 == devid).nth(nth).unwrap_or_else(|| panic!("no stripe on devid {devid}"));
            return s.1 + (logical - start);
        }
    }
    panic!("logical {logical} in no chunk");
}

/// 1-based copy number of the stripe on `devid` in the chunk holding `logical`.
fn mirror_of(image: &Path, logical: u64, devid: u64) -> u64 {
    for (start, len, _, stripes) in chunks(image) {
        if logical >= start && logical < start + len {
            return stripes.iter().position(|s| s.0 == devid).expect("stripe on devid") as u64 + 1;
        }
    }
    panic!("logical {logical} in no chunk");
}

/// A regular or prealloc file extent item, from btrfs-progs' dump.
#[derive(Clone, Copy, Debug)]
struct FileExtent {
    /// Key offset: where in the file the item's bytes start.
    file_offset: u64,
    /// Disk bytenr (logical) of the extent.
    bytenr: u64,
    /// Where in the extent the item's bytes start, and how many it maps.
    data_offset: u64,
    len: u64,
}

/// (disk bytenr, file offset of the extent) of the first regular or prealloc extent of the file named `name`.
fn file_extent(image: &Path, tree: &str, name: &str) -> (u64, u64) {
    let e = file_extents(image, tree, name)[0];
    (e.bytenr, e.file_offset)
}

/// Logical address of byte `off` of the file named `name` in the top-level
/// subvolume, whichever of its extents holds it (the kernel may split a write).
fn logical_at(image: &Path, name: &str, off: u64) -> u64 {
    file_extents(image, "5", name)
        .iter()
        .find(|e| off >= e.file_offset && off < e.file_offset + e.len)
        .map(|e| e.bytenr + e.data_offset + (off - e.file_offset))
        .unwrap_or_else(|| panic!("{name}: no extent maps file offset {off}"))
}

/// Every regular or prealloc extent item (holes and inline extents left out) of the file named `name`.
fn file_extents(image: &Path, tree: &str, name: &str) -> Vec<FileExtent> {
    let text = dump_tree(image, tree);
    let lines: Vec<&str> = text.lines().collect();
    let mut ino = None;
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == format!("name: {name}") && i >= 2 {
            if let Some(loc) = lines[i - 2].trim().strip_prefix("location key (") {
                ino = loc.split_whitespace().next().and_then(|s| s.parse::<u64>().ok());
                break;
            }
        }
    }
    let ino = ino.unwrap_or_else(|| panic!("no dir entry {name}"));
    let prefix = format!("key ({ino} EXTENT_DATA ");
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(p) = l.find(&prefix) {
            let off: u64 = l[p + prefix.len()..].split(')').next().and_then(|s| s.parse().ok()).expect("offset");
            // "extent data disk byte B nr N" then "extent data offset O nr N ram R"
            // ("prealloc data ..." for preallocated extents).
            let item: Vec<&str> = lines[i + 1..(i + 5).min(lines.len())].iter().map(|l| l.trim()).collect();
            for (j, l2) in item.iter().enumerate() {
                let Some(rest) = l2.strip_prefix("extent data disk byte ").or_else(|| l2.strip_prefix("prealloc data disk byte ")) else {
                    continue;
                };
                let bytenr: u64 = rest.split_whitespace().next().and_then(|s| s.parse().ok()).expect("bytenr");
                let w: Vec<&str> = item.get(j + 1).map(|n| n.split_whitespace().collect()).unwrap_or_default();
                // [extent|prealloc, data, offset, O, nr, N, ...]
                let (data_offset, len) = match (w.get(2), w.get(3), w.get(5)) {
                    (Some(&"offset"), Some(o), Some(n)) => (o.parse().expect("data offset"), n.parse().expect("nr")),
                    _ => panic!("{name}: no data offset line after {l2}"),
                };
                if bytenr != 0 {
                    out.push(FileExtent { file_offset: off, bytenr, data_offset, len });
                }
                break;
            }
        }
    }
    assert!(!out.is_empty(), "no regular extent for {name} (inode {ino})");
    out
}

fn flip(image: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(image).expect("open image");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).expect("write byte");
    f.sync_all().expect("sync");
}

/// `btrfs check --readonly` (with extra args) over the images; None when it cannot run here.
fn btrfs_check(images: &[PathBuf], check_args: &str) -> Option<bool> {
    let _k = kernel_lock();
    btrfs_check_locked(images, check_args)
}

/// [`btrfs_check`] for a caller that already holds the kernel lock.
fn btrfs_check_locked(images: &[PathBuf], check_args: &str) -> Option<bool> {
    if images.len() > 1 && !is_root() {
        eprintln!("skipping btrfs check of a multi-device filesystem: needs root");
        return None;
    }
    let tool = Path::new(CHECK_IMAGES);
    let status = if tool.exists() {
        Command::new(tool).args(images).env("CHECK_ARGS", check_args).output()
    } else if images.len() == 1 {
        Command::new("btrfs").args(["check", "--readonly"]).args(check_args.split_whitespace()).arg(&images[0]).output()
    } else {
        return None;
    }
    .expect("btrfs check");
    if !status.status.success() {
        eprintln!("btrfs check: {}\n{}", String::from_utf8_lossy(&status.stdout), String::from_utf8_lossy(&status.stderr));
    }
    Some(status.status.success())
}

#[test]
fn clean_fixtures_are_clean() {
    for name in foreign_names() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = unpack_foreign(&name, dir.path());
        let (code, r) = scrub(&imgs[0], &[]);
        assert_eq!(code, 0, "{name}: {r:#}");
        assert_clean(&r, &name);
        let nodesize = load_manifest(&name)["nodesize"].as_u64().unwrap();
        let devs = r["devices"].as_array().unwrap();
        assert_eq!(devs.len(), imgs.len(), "{name}");
        let mut data = 0;
        for d in devs {
            let trees = d["tree_extents_scrubbed"].as_u64().unwrap();
            assert!(trees > 0, "{name}: devid {} scrubbed no tree blocks", d["devid"]);
            assert_eq!(d["tree_bytes_scrubbed"].as_u64().unwrap(), trees * nodesize, "{name}");
            data += d["data_bytes_scrubbed"].as_u64().unwrap();
        }
        assert!(data > 0, "{name}: no data scrubbed");
        // Every profile with copies reads every copy: the totals are a multiple of the copies.
        let copies = match load_manifest(&name)["profiles"]["metadata"].as_str() {
            Some("raid1") | Some("dup") | Some("raid10") => 2,
            Some("raid1c3") => 3,
            _ => 1,
        };
        assert_eq!(r["totals"]["tree_extents_scrubbed"].as_u64().unwrap() % copies, 0, "{name}");
    }
}

/// The trap another offline checker fell into: reading stripe 0 from whichever
/// image it was given. Naming the devid-2 image must scrub just as clean.
#[test]
fn scrub_through_second_device_is_clean() {
    for name in ["raid1-xxhash-4k", "raid10-blake2", "raid1c3-sha256"] {
        let dir = tempfile::tempdir().unwrap();
        let imgs = unpack_foreign(name, dir.path());
        let (code, r) = scrub(&imgs[1], &[]);
        assert_eq!(code, 0, "{name} via devid 2: {r:#}");
        assert_clean(&r, name);
        let (code, r1) = scrub(&imgs[0], &[]);
        assert_eq!(code, 0);
        assert_eq!(r["totals"], r1["totals"], "{name}: same counters through either device");
    }
}

#[test]
fn data_csum_error_in_one_copy_is_found_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("raid1-xxhash-4k", dir.path());
    let (bytenr, file_off) = file_extent(&imgs[0], "5", "mib1");
    assert_eq!(file_off, 0);
    let phys = physical(&imgs[0], bytenr + 8192, 2, 0);
    flip(&imgs[1], phys + 5);

    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{r:#}");
    assert_eq!(f[0]["kind"], "csum");
    assert_eq!(f[0]["devid"], 2);
    assert_eq!(f[0]["physical"], phys);
    assert_eq!(f[0]["logical"], bytenr + 8192);
    // Copy numbers follow the chunk's stripe order, which need not follow devids.
    let mirror = mirror_of(&imgs[0], bytenr, 2);
    assert_eq!(f[0]["mirror"], mirror);
    assert_eq!(f[0]["good_mirror"], 3 - mirror);
    assert_eq!(f[0]["paths"], serde_json::json!(["data/mib1"]));
    assert_eq!(f[0]["file_offset"], 8192);
    assert_eq!(f[0]["repaired"], false);
    assert_eq!(r["devices"][1]["csum_errors"], 1);
    assert_eq!(r["devices"][0]["csum_errors"], 0);

    let (code, r) = scrub(&imgs[0], &["--repair"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(findings(&r)[0]["repaired"], true);
    assert_eq!(r["totals"]["corrected_errors"], 1);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_clean(&r, "after repair");
    if let Some(ok) = btrfs_check(&imgs, "--check-data-csum") {
        assert!(ok, "btrfs check after repair");
    }
}

#[test]
fn same_damage_in_every_copy_is_csum_all_copies() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("raid1-xxhash-4k", dir.path());
    let (bytenr, _) = file_extent(&imgs[0], "5", "mib1");
    for (i, img) in imgs.iter().enumerate() {
        flip(img, physical(&imgs[0], bytenr + 4096, i as u64 + 1, 0) + 100);
    }
    let (code, r) = scrub(&imgs[0], &["--repair"]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), 2, "{r:#}");
    for x in &f {
        assert_eq!(x["kind"], "csum_all_copies");
        assert_eq!(x["repaired"], false);
        assert_eq!(x["file_offset"], 4096);
        assert_eq!(x["paths"], serde_json::json!(["data/mib1"]));
    }
    assert_eq!(r["totals"]["uncorrectable_errors"], 2);
}

#[test]
fn tree_block_damage_is_repaired_from_the_other_copy() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("raid1-xxhash-4k", dir.path());
    // The fs tree's root node, from btrfs-progs' dump.
    let text = dump_tree(&imgs[0], "5");
    let bytenr: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("node ").or_else(|| l.strip_prefix("leaf ")))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("fs tree root");
    let phys = physical(&imgs[0], bytenr, 1, 0);
    let good = mirror_of(&imgs[0], bytenr, 2);
    flip(&imgs[0], phys + 200);
    let (code, r) = scrub(&imgs[1], &[]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{r:#}");
    assert_eq!(f[0]["kind"], "csum");
    assert_eq!(f[0]["metadata"], true);
    assert_eq!(f[0]["devid"], 1);
    assert_eq!(f[0]["physical"], phys);
    assert_eq!(f[0]["logical"], bytenr);
    assert_eq!(f[0]["good_mirror"], good);
    // Counted as the kernel does: a tree block checksum failure is a verify
    // error (one per sector of the node), csum_errors being for data.
    assert_eq!(r["devices"][0]["verify_errors"], 1, "4 KiB nodes: one sector: {r:#}");
    assert_eq!(r["devices"][0]["csum_errors"], 0, "{r:#}");
    assert_eq!(r["devices"][1]["verify_errors"], 0, "{r:#}");

    let (code, r) = scrub(&imgs[0], &["--repair"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["totals"]["corrected_errors"], 1);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 0);
    assert_clean(&r, "after tree repair");
    if let Some(ok) = btrfs_check(&imgs, "") {
        assert!(ok, "btrfs check after tree repair");
    }
}

#[test]
fn metadata_dup_copy_damage_single_device() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("single", dir.path());
    let text = dump_tree(&imgs[0], "5");
    let bytenr: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("node ").or_else(|| l.strip_prefix("leaf ")))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("fs tree root");
    // Second DUP copy: a byte past the header changed, checksum left stale.
    let phys = physical(&imgs[0], bytenr, 1, 1);
    flip(&imgs[0], phys + 0x70);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{r:#}");
    assert_eq!(f[0]["mirror"], 2);
    assert_eq!(f[0]["physical"], phys);
    assert_eq!(f[0]["kind"], "csum");
    // The kernel counts a bad tree block per sector, in verify_errors.
    let m = load_manifest("single");
    let sectors = m["nodesize"].as_u64().unwrap() / m["sectorsize"].as_u64().unwrap();
    assert!(sectors > 1, "a node of several sectors shows the per-sector count");
    assert_eq!(r["totals"]["verify_errors"], sectors, "{r:#}");
    assert_eq!(r["totals"]["csum_errors"], 0, "{r:#}");
    let (code, _) = scrub(&imgs[0], &["--repair"]);
    assert_eq!(code, 0);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 0);
    assert_clean(&r, "after dup repair");
    assert_eq!(btrfs_check(&imgs, ""), Some(true));
}

#[test]
fn damaged_superblock_mirror_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("raid1-xxhash-4k", dir.path());
    let mirror = 64 << 20;
    flip(&imgs[1], mirror + 0x300);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{r:#}");
    assert_eq!(f[0]["kind"], "super");
    assert_eq!(f[0]["devid"], 2);
    assert_eq!(f[0]["physical"], mirror);
    assert_eq!(r["devices"][1]["super_errors"], 1);
    let (code, r) = scrub(&imgs[0], &["--repair"]);
    assert_eq!(code, 0, "{r:#}");
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 0);
    assert_clean(&r, "after super repair");
    // btrfs-progs accepts the rewritten copy.
    let out = Command::new("btrfs").args(["inspect-internal", "dump-super", "-s", "1"]).arg(&imgs[1]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("csum\t\t\t0x") && text.contains("[match]"), "{text}");
    assert!(text.contains(&format!("bytenr\t\t\t{mirror}")), "{text}");
}

#[test]
fn raid1c3_bad_copy_repaired_by_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("raid1c3-sha256", dir.path());
    let (bytenr, _) = file_extent(&imgs[0], "5", "three-mib");
    let phys = physical(&imgs[0], bytenr + 65536, 3, 0);
    flip(&imgs[2], phys + 1);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{r:#}");
    assert_eq!(f[0]["kind"], "csum");
    assert_eq!(f[0]["devid"], 3);
    assert_eq!(f[0]["paths"], serde_json::json!(["data/three-mib"]));
    assert_eq!(f[0]["file_offset"], 65536);
    let (code, _) = scrub(&imgs[0], &["--repair"]);
    assert_eq!(code, 0);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 0);
    assert_clean(&r, "raid1c3 after repair");
}

#[test]
fn missing_device_with_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("raid1-xxhash-4k", dir.path());
    let (_, clean) = scrub(&imgs[0], &[]);
    let away = dir.path().join("away");
    std::fs::create_dir(&away).unwrap();
    std::fs::rename(&imgs[1], away.join("dev2.img")).unwrap();
    let img = imgs[0].to_str().unwrap();
    let (code, _, stderr) = btrs(&["scrub", "--no-progress", img]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("missing"), "{stderr}");
    let (code, r) = scrub(&imgs[0], &["--degraded"]);
    assert_eq!(code, 3, "{r:#}");
    let devs = r["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[1]["missing"], true);
    assert_eq!(devs[0]["data_bytes_scrubbed"], clean["devices"][0]["data_bytes_scrubbed"]);
    assert_eq!(devs[0]["tree_bytes_scrubbed"], clean["devices"][0]["tree_bytes_scrubbed"]);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{r:#}");
    assert_eq!(f[0]["kind"], "read");
    assert_eq!(f[0]["devid"], 2);
}

#[test]
fn repair_and_fix_csum_refuse_readonly() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("single", dir.path());
    let img = imgs[0].to_str().unwrap();
    let (code, _, _) = btrs(&["scrub", img, "--repair", "--readonly"]);
    assert_eq!(code, 2);
    let (code, _, _) = btrs(&["scrub", img, "--fix-csum", "--readonly"]);
    assert_eq!(code, 2);
    // Nothing stale on a clean image: nothing rewritten, the image unchanged.
    let before = std::fs::read(img).unwrap();
    let (code, _, stderr) = btrs(&["scrub", "--no-progress", img, "--fix-csum"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(std::fs::read(img).unwrap() == before, "--fix-csum changed a clean image");
    let (code, stdout, _) = btrs(&["scrub", "--no-progress", "-R", img]);
    assert_eq!(code, 0);
    assert!(stdout.contains("data_bytes_scrubbed:") && stdout.contains("no errors found"), "{stdout}");
}

/// Kernel mounts and loop devices one at a time (loop device allocation and
/// `btrfs device scan --forget` race with each other), in this process and
/// across test processes: the lock of tests/common/interop.rs. Not reentrant.
fn kernel_lock() -> KernelLock {
    common::interop::kernel_lock()
}

const KERNEL_MOUNT: &str = "/work/shared/tools/kernel-mount";
const KERNEL_UMOUNT: &str = "/work/shared/tools/kernel-umount";
const CHECK_IMAGES: &str = "/work/shared/tools/check-images";

/// A kernel mount of image files (through kernel-mount's loop devices) at
/// `dir/mnt`. Holds the kernel lock for its whole life and unmounts (detaching
/// the loop devices) on drop, so a failed assertion leaves nothing mounted.
struct KernelMount {
    mnt: PathBuf,
    mounted: bool,
    _lock: KernelLock,
}

impl KernelMount {
    /// Mount with `opts` (e.g. "ro"), only after `btrfs check --readonly` has
    /// passed on the images: never mount what the checker rejects.
    fn new(dir: &Path, images: &[PathBuf], opts: &str) -> KernelMount {
        let lock = kernel_lock();
        assert_eq!(btrfs_check_locked(images, ""), Some(true), "btrfs check --readonly must pass before mounting {images:?}");
        let mnt = dir.join("mnt");
        let out = Command::new(KERNEL_MOUNT).arg(&mnt).args(images).env("MOUNT_OPTS", opts).output().expect("running kernel-mount");
        assert!(out.status.success(), "kernel-mount {images:?}: {}", String::from_utf8_lossy(&out.stderr));
        KernelMount { mnt, mounted: true, _lock: lock }
    }

    fn umount_now(&mut self) -> bool {
        self.mounted = false;
        // A just-finished writer can keep the mount busy for a moment.
        (0..5).any(|i| {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Command::new(KERNEL_UMOUNT).arg(&self.mnt).status().map(|s| s.success()).unwrap_or(false)
        })
    }

    /// Unmount now and assert it worked (drop only tries).
    fn umount(mut self) {
        assert!(self.umount_now(), "kernel-umount {}", self.mnt.display());
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        if self.mounted && !self.umount_now() {
            eprintln!("kernel-umount {} failed: left mounted", self.mnt.display());
        }
    }
}

/// The error counters of the kernel's `btrfs scrub start -R` (raw `btrfs_scrub_progress`).
const KERNEL_ERROR_COUNTERS: [&str; 8] = [
    "read_errors",
    "csum_errors",
    "verify_errors",
    "super_errors",
    "malloc_errors",
    "uncorrectable_errors",
    "unverified_errors",
    "corrected_errors",
];

/// What the kernel's scrub counted, per devid, and its output for messages.
struct KernelScrub {
    devices: BTreeMap<u64, serde_json::Map<String, Value>>,
    text: String,
}

impl KernelScrub {
    fn get(&self, devid: u64, counter: &str) -> u64 {
        self.devices
            .get(&devid)
            .and_then(|c| c.get(counter))
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("kernel scrub: no {counter} for devid {devid}: {}", self.text))
    }

    fn assert_clean(&self, what: &str) {
        for devid in self.devices.keys() {
            for c in KERNEL_ERROR_COUNTERS {
                assert_eq!(self.get(*devid, c), 0, "{what}: kernel scrub devid {devid} {c}: {}", self.text);
            }
        }
    }

    /// The extent and byte counters agree with btrs's report, device by device.
    fn assert_counts_match(&self, report: &Value, what: &str) {
        for devid in self.devices.keys() {
            let ours = report["devices"].as_array().unwrap().iter().find(|d| d["devid"] == *devid).expect("device");
            for c in ["data_extents_scrubbed", "tree_extents_scrubbed", "data_bytes_scrubbed", "tree_bytes_scrubbed", "no_csum"] {
                assert_eq!(ours[c], self.get(*devid, c), "{what} devid {devid} {c}: kernel {}", self.text);
            }
        }
    }
}

/// Mount `images` read-only and run the kernel's scrub with `-r` (read-only:
/// it counts but repairs nothing, so the images are left as they were), unmount,
/// and return its per-device counters.
fn kernel_scrub(dir: &Path, images: &[PathBuf]) -> KernelScrub {
    let m = KernelMount::new(dir, images, "ro");
    let out = Command::new("btrfs").args(["scrub", "start", "-B", "-R", "-d", "-r"]).arg(&m.mnt).output().expect("btrfs scrub");
    m.umount();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // 0, or 3 when it found errors it did not fix: both come with the counters.
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "kernel scrub: {:?}: {text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // "Scrub device /dev/loopN (id K) done" then "\tcounter: value" lines.
    let mut devices = BTreeMap::new();
    let mut cur = None;
    for line in text.lines() {
        if let Some(p) = line.find("(id ") {
            let id: u64 = line[p + 4..].split(')').next().and_then(|s| s.parse().ok()).expect("devid");
            devices.insert(id, serde_json::Map::new());
            cur = Some(id);
        } else if let Some((k, v)) = line.trim().split_once(": ") {
            if let (Some(c), Ok(v)) = (cur.and_then(|id| devices.get_mut(&id)), v.trim().parse::<u64>()) {
                c.insert(k.to_string(), v.into());
            }
        }
    }
    assert_eq!(devices.len(), images.len(), "kernel scrub: one block per device: {text}");
    KernelScrub { devices, text }
}

/// BTRS_INTEROP gate (tests/common/interop.rs: root, loop devices, btrfs-progs),
/// plus the shared mount tools these tests go through. Under `require` a test
/// that cannot run panics; otherwise it says why and is skipped.
fn interop(what: &str) -> bool {
    if !common::interop::interop_enabled(what) {
        return false;
    }
    let tools = [KERNEL_MOUNT, KERNEL_UMOUNT, CHECK_IMAGES];
    if let Some(t) = tools.iter().find(|t| !Path::new(t).exists()) {
        assert_ne!(std::env::var("BTRS_INTEROP").as_deref(), Ok("require"), "{what}: BTRS_INTEROP=require but {t} is missing");
        eprintln!("skipped: {what}: {t} is missing");
        return false;
    }
    true
}

/// mkfs.btrfs (`mkfs_args`, e.g. profiles and `--csum`) on `n` images of
/// 128 MiB, then `write` fills it through a read-write kernel mount.
fn make_kernel_fs(dir: &Path, mkfs_args: &[&str], n: usize, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Vec<PathBuf> {
    let imgs: Vec<PathBuf> = (1..=n).map(|i| dir.join(format!("dev{i}.img"))).collect();
    for img in &imgs {
        std::fs::File::create(img).unwrap().set_len(128 << 20).unwrap();
    }
    let st = Command::new("mkfs.btrfs").args(["-q", "-f"]).args(mkfs_args).args(&imgs).output().unwrap();
    assert!(st.status.success(), "mkfs.btrfs: {}", String::from_utf8_lossy(&st.stderr));
    let m = KernelMount::new(dir, &imgs, "");
    write(&m.mnt).expect("writing through the kernel mount");
    m.umount();
    imgs
}

/// mkfs.btrfs with `profile` for data and metadata on `n` images, then a
/// kernel mount writes `vm/disk.raw` (256 KiB, `chattr +C`: no checksums) and
/// a preallocated `vm/fallocated`.
fn make_nodatasum_fs(dir: &Path, profile: &str, n: usize) -> Vec<PathBuf> {
    make_kernel_fs(dir, &["-d", profile, "-m", profile], n, |mnt| {
        std::fs::create_dir(mnt.join("vm"))?;
        let file = mnt.join("vm/disk.raw");
        std::fs::File::create(&file)?;
        let st = Command::new("chattr").arg("+C").arg(&file).status()?;
        assert!(st.success(), "chattr +C");
        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&file, &data)?;
        let st = Command::new("fallocate").args(["-l", "262144"]).arg(mnt.join("vm/fallocated")).status()?;
        assert!(st.success(), "fallocate");
        Ok(())
    })
}

/// Bytes that do not repeat from sector to sector (xorshift), so every sector
/// has its own checksum and no two sectors of a file are interchangeable.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Checksummed files `data/NAME` of the given sizes, written through the kernel;
/// file i holds `pattern(i + 1, size)`.
fn write_files(mnt: &Path, files: &[(&str, usize)]) -> std::io::Result<()> {
    std::fs::create_dir(mnt.join("data"))?;
    for (i, (name, size)) in files.iter().enumerate() {
        std::fs::write(mnt.join("data").join(name), pattern(i as u64 + 1, *size))?;
    }
    Ok(())
}

/// RAID1C3 nodatasum: two copies out-vote the changed third, which is
/// repaired without --prefer-mirror.
#[test]
fn raid1c3_nodatasum_majority_repair() {
    if !interop("raid1c3_nodatasum_majority_repair") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let imgs = make_nodatasum_fs(dir.path(), "raid1c3", 3);
    let (bytenr, _) = file_extent(&imgs[0], "5", "disk.raw");
    let phys = physical(&imgs[0], bytenr + 4096, 3, 0);
    flip(&imgs[2], phys + 17);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), 1, "only the outvoted copy: {r:#}");
    assert_eq!(f[0]["kind"], "mirror_mismatch");
    assert_eq!(f[0]["devid"], 3);
    assert_eq!(f[0]["physical"], phys);
    assert!(f[0]["good_mirror"].is_u64());
    assert_eq!(f[0]["paths"], serde_json::json!(["vm/disk.raw"]));
    assert_eq!(f[0]["file_offset"], 4096);
    let (code, r) = scrub(&imgs[0], &["--repair"]);
    assert_eq!(code, 0, "{r:#}");
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_clean(&r, "raid1c3 after majority repair");
}

/// A nodatasum (`chattr +C`) file on RAID1: no fixture has one, so make it
/// with mkfs.btrfs and the kernel. A changed byte in one copy can only be
/// found by comparing the copies: the kernel's scrub, which checks each copy
/// against its checksum and never compares copies, reports nothing.
#[test]
fn nodatasum_mirror_mismatch() {
    if !interop("nodatasum_mirror_mismatch") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let imgs = make_nodatasum_fs(dir.path(), "raid1", 2);

    let (code, r) = scrub(&imgs[0], &[]);

    assert_eq!(code, 0, "{r:#}");
    assert!(r["totals"]["no_csum"].as_u64().unwrap() >= 128, "{r:#}");

    // Preallocated bytes were never written through the mirrors: nothing
    // reads them, and differing copies there are not reported.
    let (pre, _) = file_extent(&imgs[0], "5", "fallocated");
    flip(&imgs[1], physical(&imgs[0], pre + 4096, 2, 0));
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 0, "prealloc mismatch must not be reported: {r:#}");

    let (bytenr, _) = file_extent(&imgs[0], "5", "disk.raw");
    let phys = physical(&imgs[0], bytenr + 12288, 2, 0);
    flip(&imgs[1], phys + 9);

    // Only data changed, so btrfs check (which reads no data) passes and the
    // kernel may mount it. Its scrub reads the nodatasum sectors (no_csum) and
    // has nothing to hold them against: this mismatch is what only btrs finds.
    let kernel = kernel_scrub(dir.path(), &imgs);
    kernel.assert_clean("kernel scrub of a nodatasum mirror mismatch");
    for devid in [1, 2] {
        assert!(kernel.get(devid, "no_csum") >= 64, "devid {devid}: the kernel read the nodatasum file: {}", kernel.text);
    }

    let (code, r) = scrub(&imgs[0], &["--repair"]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), 2, "both copies are suspect: {r:#}");
    for x in &f {
        assert_eq!(x["kind"], "mirror_mismatch");
        assert_eq!(x["repaired"], false);
        assert_eq!(x["good_mirror"], Value::Null);
        assert_eq!(x["logical"], bytenr + 12288);
        assert_eq!(x["paths"], serde_json::json!(["vm/disk.raw"]));
        assert_eq!(x["file_offset"], 12288);
    }
    let on2 = f.iter().find(|x| x["devid"] == 2).expect("finding on devid 2");
    assert_eq!(on2["physical"], phys);

    let good = mirror_of(&imgs[0], bytenr, 1).to_string();
    let (code, r) = scrub(&imgs[0], &["--repair", "--prefer-mirror", &good]);
    assert_eq!(code, 0, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{r:#}");
    assert_eq!(f[0]["devid"], 2);
    assert_eq!(f[0]["mirror"], mirror_of(&imgs[0], bytenr, 2));
    assert_eq!(f[0]["good_mirror"], mirror_of(&imgs[0], bytenr, 1));
    assert_eq!(f[0]["repaired"], true);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 0);
    assert_clean(&r, "after preferred repair");
    if let Some(ok) = btrfs_check(&imgs, "") {
        assert!(ok);
    }
}

/// Shared extents (snapshots) and nested subvolumes: every file that maps the
/// damaged bytes is named, with paths from the top-level subvolume.
#[test]
fn paths_resolve_through_snapshots_and_nested_subvolumes() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("subvol", dir.path());
    let (keep, _) = file_extent(&imgs[0], "256", "keep");
    let (inner, _) = file_extent(&imgs[0], "257", "inner");
    flip(&imgs[0], physical(&imgs[0], keep + 8192, 1, 0) + 3);
    flip(&imgs[0], physical(&imgs[0], inner + 4096, 1, 0) + 3);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), 2, "{r:#}");
    let by_logical = |l: u64| f.iter().find(|x| x["logical"] == l).unwrap_or_else(|| panic!("no finding at {l}: {r:#}"));
    let k = by_logical(keep + 8192);
    // A single copy cannot be compared with anything: a plain checksum error.
    assert_eq!(k["kind"], "csum");
    assert_eq!(k["good_mirror"], Value::Null);
    let mut paths: Vec<String> = k["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    paths.sort();
    assert_eq!(paths, ["snap-ro/keep", "snap/keep", "sub/keep"], "{k:#}");
    assert_eq!(k["file_offset"], 8192);
    let i = by_logical(inner + 4096);
    assert_eq!(i["paths"], serde_json::json!(["sub/nested/inner"]));
    assert_eq!(i["file_offset"], 4096);
    assert_eq!(r["totals"]["uncorrectable_errors"], 2);
}

/// A tree block copy whose checksum is right but whose header is not (here:
/// the owner zeroed, checksum resealed) is a `verify` error.
#[test]
fn tree_block_header_mismatch_is_verify() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("single", dir.path());
    let text = dump_tree(&imgs[0], "5");
    let bytenr: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("node ").or_else(|| l.strip_prefix("leaf ")))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("fs tree root");
    let phys = physical(&imgs[0], bytenr, 1, 0);
    let nodesize = load_manifest("single")["nodesize"].as_u64().unwrap() as usize;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&imgs[0]).unwrap();
    let mut block = vec![0u8; nodesize];
    f.read_exact_at(&mut block, phys).unwrap();
    block[0x58..0x60].fill(0); // owner
    let c = crc32c::crc32c(&block[32..]);
    block[..4].copy_from_slice(&c.to_le_bytes());
    f.write_all_at(&block, phys).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let (code, r) = scrub(&imgs[0], &["--repair"]);
    assert_eq!(code, 0, "{r:#}");
    let fs = findings(&r);
    assert_eq!(fs.len(), 1, "{r:#}");
    assert_eq!(fs[0]["kind"], "verify");
    assert_eq!(fs[0]["mirror"], 1);
    assert_eq!(fs[0]["repaired"], true);
    assert!(r["totals"]["verify_errors"].as_u64().unwrap() > 0);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 0);
    assert_clean(&r, "after verify repair");
    assert_eq!(btrfs_check(&imgs, ""), Some(true));
}

/// A truncated image: the copies past its end are read errors with a good
/// copy named; --repair does not grow the image to rewrite them.
#[test]
fn truncated_image_read_errors_name_the_good_copy() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("raid1-xxhash-4k", dir.path());
    let (bytenr, _) = file_extent(&imgs[0], "5", "mib1");
    let phys = physical(&imgs[0], bytenr, 2, 0);
    let f = std::fs::OpenOptions::new().write(true).open(&imgs[1]).unwrap();
    f.set_len(phys + 4096).unwrap();
    drop(f);
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 3, "{r:#}");
    let reads: Vec<Value> = findings(&r).into_iter().filter(|x| x["kind"] == "read").collect();
    assert!(!reads.is_empty(), "{r:#}");
    assert!(reads.iter().all(|x| x["devid"] == 2 && x["good_mirror"].is_u64()), "{r:#}");
    assert!(r["devices"][1]["read_errors"].as_u64().unwrap() >= 256 - 1, "{r:#}");
    let len = std::fs::metadata(&imgs[1]).unwrap().len();
    let (code, r) = scrub(&imgs[0], &["--repair"]);
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(r["totals"]["corrected_errors"], 0);
    assert_eq!(std::fs::metadata(&imgs[1]).unwrap().len(), len, "image not grown");
}

/// --repair refuses an image the kernel has attached to a loop device.
#[test]
fn repair_refuses_loop_attached_image() {
    if !common::interop::interop_enabled("repair_refuses_loop_attached_image") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("single", dir.path());
    let _k = kernel_lock();
    // Detached on drop, also when an assertion below fails.
    let loops = common::interop::Loops::attach(&imgs[..1], true).expect("losetup");
    let (code, _, stderr) = btrs(&["scrub", "--no-progress", "--repair", imgs[0].to_str().unwrap()]);
    let (ro_code, _, _) = btrs(&["scrub", "--no-progress", imgs[0].to_str().unwrap()]);
    drop(loops);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("attached"), "{stderr}");
    assert_eq!(ro_code, 0, "a read-only scrub may run");
}

/// The kernel's own scrub (`btrfs scrub start -B -R -r` on a read-only mount
/// of a clean copy) counts the same extents and bytes per device as btrs.
#[test]
fn byte_counters_match_the_kernel_scrub() {
    if !interop("byte_counters_match_the_kernel_scrub") {
        return;
    }
    for name in ["single", "raid10-blake2", "raid1c3-sha256", "mixed-noholes", "raid0"] {
        let dir = tempfile::tempdir().unwrap();
        let imgs = unpack_foreign(name, dir.path());
        let kernel = kernel_scrub(dir.path(), &imgs);
        kernel.assert_clean(name);
        let (code, r) = scrub(&imgs[0], &[]);
        assert_eq!(code, 0, "{name}");
        kernel.assert_counts_match(&r, name);
    }
}

/// Block group items in the block group tree (compat_ro BLOCK_GROUP_TREE).
/// btrfs-progs 6.2 cannot make one, so btrs mkfs does; btrfs check judges it.
#[test]
fn block_group_tree_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("d")).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(root.join("d/file"), &data).unwrap();
    let img = dir.path().join("a.img");
    let (code, _, stderr) =
        btrs(&["mkfs", "-f", "-b", "256M", "-O", "block-group-tree", "-r", root.to_str().unwrap(), img.to_str().unwrap()]);
    if code != 0 {
        eprintln!("skipping block_group_tree_filesystem: btrs mkfs failed: {stderr}");
        return;
    }
    let (code, r) = scrub(&img, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_clean(&r, "block group tree");
    assert_eq!(r["totals"]["data_bytes_scrubbed"], 3002368, "{r:#}");
    let (bytenr, _) = file_extent(&img, "5", "file");
    let phys = physical(&img, bytenr + 4096, 1, 0);
    flip(&img, phys);
    let (code, r) = scrub(&img, &[]);
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(findings(&r)[0]["paths"], serde_json::json!(["d/file"]));
}

/// An extent tree leaf bad in every copy: the scrub cannot list the extents
/// it held, says so (per block group), scrubs the rest, and exits 3.
#[test]
fn extent_tree_damaged_in_every_copy() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("single", dir.path());
    let leaf: u64 = dump_tree(&imgs[0], "2")
        .lines()
        .find_map(|l| l.strip_prefix("leaf "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("extent tree leaf");
    for nth in 0..2 {
        flip(&imgs[0], physical(&imgs[0], leaf, 1, nth) + 3000);
    }
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert!(!f.is_empty());
    assert!(f.iter().all(|x| x["kind"] == "verify" && x["repaired"] == false), "{r:#}");
    assert!(f.iter().any(|x| x["detail"].as_str().unwrap_or("").contains(&leaf.to_string())), "{r:#}");
}

/// Files written by the kernel for the agreement tests: a few MiB each.
const AGREEMENT_FILES: [(&str, usize); 3] = [("a", 3 << 20), ("b", 2 << 20), ("c", 4 << 20)];
/// mkfs.btrfs's default sector size on this (4 KiB page) machine.
const SECTOR: u64 = 4096;

/// The kernel and btrs on the same damage: a RAID1 pair made by mkfs.btrfs with
/// checksum `csum` and written by the kernel; one byte changed in one copy of
/// several data sectors, in different files, on both devices, at physical
/// offsets from the chunk tree. Then btrs --repair, after which the kernel
/// finds nothing left.
fn kernel_agrees_on_damaged_data(csum: &str) {
    let dir = tempfile::tempdir().unwrap();
    let imgs = make_kernel_fs(dir.path(), &["--csum", csum, "-d", "raid1", "-m", "raid1"], 2, |mnt| write_files(mnt, &AGREEMENT_FILES));
    // (file, sector of the file, devid whose copy is changed)
    let damage = [("a", 1, 1), ("a", 700, 2), ("b", 3, 2), ("b", 400, 1), ("c", 7, 1), ("c", 1000, 2)];
    let mut damaged = Vec::new();
    for (i, &(name, sector, devid)) in damage.iter().enumerate() {
        let logical = logical_at(&imgs[0], name, sector * SECTOR);
        let phys = physical(&imgs[0], logical, devid, 0);
        flip(&imgs[devid as usize - 1], phys + 100 + i as u64);
        damaged.push((name, sector, devid, logical, phys));
    }
    // btrfs check reads no data: the images pass, and only then may the kernel mount them.
    assert_eq!(btrfs_check(&imgs, ""), Some(true), "btrfs check --readonly ignores data damage");

    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), damaged.len(), "one finding per damaged sector: {r:#}");
    for &(name, sector, devid, logical, phys) in &damaged {
        let x = f
            .iter()
            .find(|x| x["devid"] == devid && x["physical"] == phys)
            .unwrap_or_else(|| panic!("no finding for {name} sector {sector} on devid {devid}: {r:#}"));
        assert_eq!(x["kind"], "csum", "{x:#}");
        assert_eq!(x["metadata"], false);
        assert_eq!(x["logical"], logical);
        assert_eq!(x["len"], SECTOR);
        assert_eq!(x["paths"], serde_json::json!([format!("data/{name}")]));
        assert_eq!(x["file_offset"], sector * SECTOR);
        assert_eq!(x["good_mirror"], mirror_of(&imgs[0], logical, 3 - devid));
        assert_eq!(x["repaired"], false);
    }

    let kernel = kernel_scrub(dir.path(), &imgs);
    kernel.assert_counts_match(&r, csum);
    let mut kernel_total = 0;
    for devid in [1u64, 2] {
        let ours = f.iter().filter(|x| x["devid"] == devid && x["kind"] == "csum").count() as u64;
        let theirs = kernel.get(devid, "csum_errors");
        assert!(ours >= theirs, "devid {devid}: btrs {ours} csum findings, kernel {theirs} csum_errors: {}", kernel.text);
        assert_eq!(r["devices"][devid as usize - 1]["csum_errors"], ours, "{r:#}");
        assert_eq!(kernel.get(devid, "verify_errors"), 0, "data damage only: {}", kernel.text);
        kernel_total += theirs;
    }
    // Both find every damaged sector: equal totals, and btrs at least the kernel on each device.
    assert_eq!(kernel_total, damaged.len() as u64, "the kernel found every damaged sector: {}", kernel.text);

    let (code, r) = scrub(&imgs[0], &["--repair"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["totals"]["corrected_errors"], damaged.len() as u64, "{r:#}");
    assert!(findings(&r).iter().all(|x| x["repaired"] == true), "{r:#}");
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_clean(&r, "after btrs --repair");
    assert_eq!(btrfs_check(&imgs, "--check-data-csum"), Some(true), "btrfs check --check-data-csum after btrs --repair");
    let kernel = kernel_scrub(dir.path(), &imgs);
    kernel.assert_clean("kernel scrub after btrs --repair");
    kernel.assert_counts_match(&r, csum);
}

#[test]
fn kernel_agrees_on_damaged_data_crc32c() {
    if !interop("kernel_agrees_on_damaged_data_crc32c") {
        return;
    }
    kernel_agrees_on_damaged_data("crc32c");
}

#[test]
fn kernel_agrees_on_damaged_data_sha256() {
    if !interop("kernel_agrees_on_damaged_data_sha256") {
        return;
    }
    kernel_agrees_on_damaged_data("sha256");
}

/// The other face of the direct-IO race, on a kernel-made image: every copy of
/// a data sector holds the same bytes and none matches the checksum.
/// `--fix-csum` rewrites the checksum; then btrfs check, the kernel's scrub and
/// the kernel's reads all accept the bytes that are on disk.
#[test]
fn fix_csum_on_a_kernel_made_image() {
    if !interop("fix_csum_on_a_kernel_made_image") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let imgs =
        make_kernel_fs(dir.path(), &["--csum", "blake2", "-d", "raid1", "-m", "raid1"], 2, |mnt| write_files(mnt, &AGREEMENT_FILES[..1]));
    let (off, byte) = (5 * SECTOR, 77);
    let logical = logical_at(&imgs[0], "a", off);
    for devid in [1u64, 2] {
        flip(&imgs[devid as usize - 1], physical(&imgs[0], logical, devid, 0) + byte);
    }
    assert_eq!(btrfs_check(&imgs, ""), Some(true), "btrfs check --readonly ignores data");

    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 3, "{r:#}");
    let f = findings(&r);
    assert_eq!(f.len(), 2, "one finding per copy: {r:#}");
    for x in &f {
        assert_eq!(x["kind"], "csum_all_copies", "{x:#}");
        assert_eq!(x["logical"], logical);
        assert_eq!(x["paths"], serde_json::json!(["data/a"]));
        assert_eq!(x["file_offset"], off);
        assert_eq!(x["good_mirror"], Value::Null);
        assert_eq!(x["repaired"], false);
    }

    let (code, r) = scrub(&imgs[0], &["--fix-csum"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["totals"]["corrected_errors"], 2, "{r:#}");
    assert!(findings(&r).iter().all(|x| x["repaired"] == true), "{r:#}");
    let (code, r) = scrub(&imgs[0], &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_clean(&r, "after --fix-csum");
    assert_eq!(btrfs_check(&imgs, "--check-data-csum"), Some(true), "btrfs check --check-data-csum after --fix-csum");

    let kernel = kernel_scrub(dir.path(), &imgs);
    kernel.assert_clean("kernel scrub after --fix-csum");
    kernel.assert_counts_match(&r, "after --fix-csum");
    // The kernel reads the file: what is on disk, the changed byte included.
    let mut want = pattern(1, AGREEMENT_FILES[0].1);
    want[(off + byte) as usize] ^= 0x5a;
    let m = KernelMount::new(dir.path(), &imgs, "ro");
    let got = std::fs::read(m.mnt.join("data/a"));
    m.umount();
    let got = got.expect("the kernel reads data/a after --fix-csum");
    assert!(got == want, "the kernel's read of data/a differs from the bytes on disk");
}

/// The text report counts findings by the kinds its lines name and by what
/// would fix them, names the option in a hint, takes the set's images as
/// positionals, prints every counter only with -R, and reads a missing
/// device as one line; `--prefer-mirror` past the copies there are is a
/// usage error.
#[test]
fn text_report_says_what_would_fix_each_finding() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs = [d.join("a.img"), d.join("b.img")];
    let (c, _, err) = btrs(&["mkfs", "-b", "300M", "-d", "raid1", "-m", "raid1", imgs[0].to_str().unwrap(), imgs[1].to_str().unwrap()]);
    assert_eq!(c, 0, "{err}");
    let src = d.join("src");
    std::fs::write(&src, pattern(7, 64 << 10)).unwrap();
    for (name, extra) in [("/sum", None), ("/raw", Some("--nodatasum"))] {
        let mut args = vec!["write", imgs[0].to_str().unwrap(), name, "--from", src.to_str().unwrap()];
        args.extend(extra);
        let (c, _, err) = btrs(&args);
        assert_eq!(c, 0, "{err}");
    }
    let (sum, _) = file_extent(&imgs[0], "5", "sum");
    let (raw, _) = file_extent(&imgs[0], "5", "raw");
    flip(&imgs[1], physical(&imgs[0], sum, 2, 0) + 10);
    for devid in [1, 2] {
        flip(&imgs[devid as usize - 1], physical(&imgs[0], sum + 4096, devid, 0) + 10);
    }
    flip(&imgs[1], physical(&imgs[0], raw, 2, 0) + 10);
    // Elsewhere than b.img's directory: found only because it is named.
    let apart = d.join("apart");
    std::fs::create_dir(&apart).unwrap();
    let b = apart.join("b.img");
    std::fs::rename(&imgs[1], &b).unwrap();
    let (a, b) = (imgs[0].to_str().unwrap(), b.to_str().unwrap());

    let (code, out, err) = btrs(&["scrub", "--no-progress", a, b]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("Error summary:    csum=1 csum_all_copies=2 mirror_mismatch=2\n"), "{out}");
    assert!(out.contains("  Corrected:      0\n"), "{out}");
    assert!(out.contains("  Repairable:     5 (1 by --repair, 2 by --prefer-mirror, 2 by --fix-csum)\n"), "{out}");
    assert!(out.contains("  Uncorrectable:  0\n"), "{out}");
    assert!(out.contains("hint: `btrs scrub --repair` rewrites 1 of these from good copies\n"), "{out}");
    assert!(out.contains("`btrs scrub --repair --prefer-mirror N` keeps copy N"), "{out}");
    assert!(out.contains("`btrs scrub --fix-csum` rewrites the checksums"), "{out}");
    assert!(!out.contains("\tcsum_errors: "), "counters only with -R: {out}");
    let (_, raw_out, _) = btrs(&["scrub", "--no-progress", "-R", a, b]);
    assert_eq!(raw_out.matches("\tcsum_errors: ").count(), 2, "{raw_out}");
    assert!(raw_out.contains("Total scrubbed:   "), "{raw_out}");
    let (_, json, _) = btrs(&["scrub", "--no-progress", "--json", a, b]);
    let r: Value = serde_json::from_str(&json).unwrap();
    let remedies: Vec<String> = findings(&r).iter().map(|f| f["remedy"].as_str().unwrap().to_string()).collect();
    for want in ["repair", "prefer_mirror", "fix_csum"] {
        assert!(remedies.iter().any(|r| r == want), "{remedies:?}");
    }

    // Told which copy to prefer, a read-only scrub names the repair that needs the same preference.
    let (code, out, err) = btrs(&["scrub", "--no-progress", "--prefer-mirror", "1", a, b]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("  Repairable:     4 (1 by --repair, 1 by --prefer-mirror, 2 by --fix-csum)\n"), "{out}");
    let (code, _, err) = btrs(&["scrub", "--no-progress", "--prefer-mirror", "3", a, b]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--prefer-mirror 3: this filesystem keeps at most 2 copies"), "{err}");

    // Each fix in turn: after the three, nothing is left.
    for args in [&["--repair"][..], &["--repair", "--prefer-mirror", "1"], &["--fix-csum"]] {
        let mut all = vec!["scrub", "--no-progress"];
        all.extend_from_slice(args);
        all.extend([a, b]);
        let (code, out, err) = btrs(&all);
        assert!(code == 0 || code == 3, "{args:?}: {out}{err}");
    }
    let (code, out, err) = btrs(&["scrub", "--no-progress", a, b]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Error summary:    no errors found"), "{out}");

    // A missing device: one line for it, one finding, a hint to replace it.
    let (code, out, err) = btrs(&["scrub", "--no-progress", "--degraded", a]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("devid 2 missing (degraded): not scrubbed\n"), "{out}");
    assert!(out.contains("read: devid 2: missing (degraded): its copies were not scrubbed [not repaired]\n"), "{out}");
    assert!(out.contains("hint: devid 2 is missing: `btrs replace` rebuilds it onto a new image\n"), "{out}");
    assert!(!out.contains(" - "), "{out}");
}
