//! Hostile metadata: seeded mutations of real tree blocks, resealed with a valid checksum and
//! written to every copy, so the structure checks (not the checksum, not the fallback to a
//! good mirror) must catch them.  Every read-side command of the real binary then runs on the
//! damaged image under a time bound and an address-space limit, and must end with a clean
//! exit status: never a signal, a panic, a hang or an allocation failure.
//!
//! One unpacked copy of each fixture per worker; each variant saves the original block bytes,
//! writes the mutation, runs the commands and restores the block (copying ~120 MiB images a
//! thousand times would dominate the run time).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use btrs::format::{CsumType, Key, CHUNK_TREE_OBJECTID, ROOT_ITEM_KEY, ROOT_TREE_OBJECTID};
use btrs::tree::RootPtr;
use btrs::volumes::OpenOptions;
use common::fixtures::{load_manifest, unpack_foreign};

/// Fixtures covering: DUP metadata with every kind of entry (single), mixed block groups
/// without holes, RAID1 with xxhash and 4 KiB nodes, compressed extents, subvolumes.
const FIXTURES: &[&str] = &["single", "mixed-noholes", "raid1-xxhash-4k", "compress", "subvol"];
const VARIANTS: usize = 1200;
const WORKERS: usize = 2;
/// A command taking longer than this on a ~120 MiB image is hung.
const TIME_LIMIT: Duration = Duration::from_secs(20);
/// Address-space limit in KiB: a size taken from the image and allocated unchecked fails here.
const ULIMIT_KB: u64 = 2_000_000;

const HEADER_SIZE: usize = 101;
const ITEM_SIZE: usize = 25;
const KEY_PTR_SIZE: usize = 33;

/// splitmix64: deterministic, good enough to spread mutations, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    /// A value a parser is likely to trip over: 0, small, boundaries, huge, or random.
    fn nasty(&mut self) -> u64 {
        const V: &[u64] = &[0, 1, 2, 7, 255, 256, 4095, 4096, 65535, 65536, 1 << 31, u32::MAX as u64, 1 << 40, u64::MAX - 1, u64::MAX];
        if self.next() % 3 == 0 {
            self.next()
        } else {
            V[self.below(V.len())]
        }
    }
}

/// One metadata block of an unpacked fixture.
#[derive(Clone)]
struct Block {
    logical: u64,
    owner: u64,
    /// (device index in the fixture's image list, physical offset) of every copy.
    copies: Vec<(usize, u64)>,
}

struct FixtureInfo {
    name: &'static str,
    csum: CsumType,
    nodesize: usize,
    blocks: Vec<Block>,
    /// A few regular files to `cat`.
    files: Vec<String>,
}

/// Every block of the root, chunk and all trees named by root items, with the physical
/// address of each copy.
fn collect_blocks(img: &Path) -> (CsumType, usize, Vec<Block>) {
    let fs = btrs::Filesystem::open(&OpenOptions { image: img.to_path_buf(), ..Default::default() }).unwrap();
    let mut roots = vec![fs.tree_root(ROOT_TREE_OBJECTID).unwrap(), fs.tree_root(CHUNK_TREE_OBJECTID).unwrap()];
    let items = fs.reader.range(&roots[0], Key::MIN, Key::MAX).unwrap();
    for (k, data) in items {
        if k.item_type == ROOT_ITEM_KEY {
            let ri = btrs::format::items::parse_root_item(&data).unwrap();
            roots.push(RootPtr { bytenr: ri.bytenr.get(), level: ri.level, generation: ri.generation.get(), owner: k.objectid });
        }
    }
    let mut seen = BTreeSet::new();
    let mut blocks = Vec::new();
    for root in roots {
        let mut stack = vec![fs.reader.root_block(&root).unwrap()];
        while let Some(b) = stack.pop() {
            if !seen.insert(b.logical) {
                continue;
            }
            let n = fs.volume().num_copies(b.logical).unwrap();
            let copies = (0..n)
                .map(|m| {
                    let p = fs.volume().locate(b.logical, m).unwrap();
                    // unpack_foreign returns devN.img in devid order.
                    (p.devid as usize - 1, p.physical)
                })
                .collect();
            blocks.push(Block { logical: b.logical, owner: root.owner, copies });
            if !b.is_leaf() {
                for i in 0..b.nritems() {
                    stack.push(fs.reader.child(&b, i, root.owner).unwrap());
                }
            }
        }
    }
    (fs.csum, fs.sb.nodesize.get() as usize, blocks)
}

fn fixture_info(name: &'static str, imgs: &[PathBuf]) -> FixtureInfo {
    let (csum, nodesize, blocks) = collect_blocks(&imgs[0]);
    let m = load_manifest(name);
    let files: Vec<String> = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "file")
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .take(3)
        .collect();
    assert!(!files.is_empty(), "{name} has regular files");
    FixtureInfo { name, csum, nodesize, blocks, files }
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    if at + 2 <= b.len() {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    if at + 4 <= b.len() {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    if at + 8 <= b.len() {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Item types worth turning one item into: each sends the body to another decoder.
const TYPES: &[u8] = &[1, 12, 13, 24, 84, 96, 108, 128, 132, 144, 156, 168, 169, 176, 178, 182, 184, 192, 204, 216, 228];

/// Apply one seeded mutation to block bytes `b` (not resealed yet) and describe it.
/// `others` are logical addresses of other blocks in the same image, for pointer swaps.
fn mutate(b: &mut [u8], rng: &mut Rng, logical: u64, others: &[u64]) -> String {
    let nr = get_u32(b, 96) as usize;
    let level = b[100];
    let leaf = level == 0;
    let cap = if leaf { (b.len() - HEADER_SIZE) / ITEM_SIZE } else { (b.len() - HEADER_SIZE) / KEY_PTR_SIZE };
    let nr_valid = nr.min(cap);
    let slot = rng.below(nr_valid.max(1));
    let item = HEADER_SIZE + slot * if leaf { ITEM_SIZE } else { KEY_PTR_SIZE };
    // Item body of `slot` (leaf only), clamped to the block.
    let body = |b: &[u8]| -> (usize, usize) {
        let off = HEADER_SIZE + get_u32(b, item + 17) as usize;
        let size = get_u32(b, item + 21) as usize;
        let start = off.min(b.len());
        (start, (start + size).min(b.len()))
    };
    let kind = rng.below(20);
    match kind {
        0 => {
            let v = rng.below(nr * 2 + 5) as u32;
            put_u32(b, 96, v);
            format!("nritems {nr} -> {v}")
        }
        1 => {
            let v = rng.nasty() as u32;
            put_u32(b, 96, v);
            format!("nritems {nr} -> {v}")
        }
        2 => {
            let v = if rng.below(2) == 0 { level ^ 1 } else { rng.next() as u8 };
            b[100] = v;
            format!("level {level} -> {v}")
        }
        3 => {
            let v = rng.nasty();
            put_u64(b, 80, v);
            format!("generation -> {v}")
        }
        4 => {
            let v = rng.nasty();
            put_u64(b, 88, v);
            format!("owner -> {v}")
        }
        5 => {
            let n = 1 + rng.below(8);
            let mut at = Vec::new();
            for _ in 0..n {
                let p = 32 + rng.below(b.len() - 32);
                b[p] ^= 1 << rng.below(8);
                at.push(p);
            }
            format!("bit flips at {at:?}")
        }
        6 => {
            // Anywhere in the header or the item/pointer array.
            let end = (HEADER_SIZE + nr_valid * if leaf { ITEM_SIZE } else { KEY_PTR_SIZE }).min(b.len());
            let p = 32 + rng.below(end - 32);
            let v = rng.next() as u8;
            b[p] = v;
            format!("byte {p} -> {v:#x}")
        }
        7 if leaf => {
            let old = get_u32(b, item + 17);
            let v = match rng.below(3) {
                0 => old.wrapping_add(rng.below(64) as u32).wrapping_sub(32),
                1 => rng.nasty() as u32,
                _ => rng.below(b.len()) as u32,
            };
            put_u32(b, item + 17, v);
            format!("item {slot} offset {old} -> {v}")
        }
        8 if leaf => {
            let old = get_u32(b, item + 21);
            let v = match rng.below(3) {
                0 => old.wrapping_add(rng.below(64) as u32).wrapping_sub(32),
                1 => rng.nasty() as u32,
                _ => 0,
            };
            put_u32(b, item + 21, v);
            format!("item {slot} size {old} -> {v}")
        }
        9 if leaf => {
            let t = TYPES[rng.below(TYPES.len())];
            b[item + 8] = t;
            format!("item {slot} key type -> {t}")
        }
        10 => {
            let f = rng.below(3);
            let v = rng.nasty();
            match f {
                0 => put_u64(b, item, v),
                1 => b[item + 8] = v as u8,
                _ => put_u64(b, item + 9, v),
            }
            format!("slot {slot} key field {f} -> {v}")
        }
        11 if leaf && nr_valid >= 2 => {
            // Swap the (offset, size) of two items: keys stay sorted, bodies go to the wrong decoder.
            let other = HEADER_SIZE + rng.below(nr_valid) * ITEM_SIZE;
            let a: [u8; 8] = b[item + 17..item + 25].try_into().unwrap();
            let c: [u8; 8] = b[other + 17..other + 25].try_into().unwrap();
            b[item + 17..item + 25].copy_from_slice(&c);
            b[other + 17..other + 25].copy_from_slice(&a);
            format!("swap bodies of items at {item} and {other}")
        }
        12 if nr_valid >= 2 => {
            let sz = if leaf { ITEM_SIZE } else { KEY_PTR_SIZE };
            let other = HEADER_SIZE + rng.below(nr_valid) * sz;
            let a = b[item..item + sz].to_vec();
            let c = b[other..other + sz].to_vec();
            b[item..item + sz].copy_from_slice(&c);
            b[other..other + sz].copy_from_slice(&a);
            format!("swap entries at {item} and {other}")
        }
        13 | 14 if leaf => {
            let (s, e) = body(b);
            if e <= s {
                b[96] ^= 1;
                return "no body: nritems bit 0 flipped".into();
            }
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let p = s + rng.below(e - s);
                b[p] = rng.next() as u8;
            }
            format!("item {slot} body: {n} random bytes in {s}..{e}")
        }
        15 if leaf => {
            // A huge or boundary length anywhere in the body (u16 name lengths, u64 sizes).
            let (s, e) = body(b);
            if e <= s {
                b[100] = 1;
                return "no body: level -> 1".into();
            }
            let p = s + rng.below(e - s);
            let v = rng.nasty();
            if rng.below(2) == 0 {
                put_u16(b, p, v as u16);
                format!("item {slot} body u16 at {p} -> {}", v as u16)
            } else {
                put_u64(b, p, v);
                format!("item {slot} body u64 at {p} -> {v}")
            }
        }
        16 if leaf => {
            // Truncate the item (names cut short, structs too small).
            let old = get_u32(b, item + 21);
            let v = old.saturating_sub(1 + rng.below(old as usize + 1) as u32);
            put_u32(b, item + 21, v);
            format!("item {slot} truncated {old} -> {v}")
        }
        17 if leaf => {
            // Directory loops: point a dir entry's location at the root dir or its own dir.
            let (s, _) = body(b);
            let dir = u64::from_le_bytes(b[item..item + 8].try_into().unwrap());
            let v = if rng.below(2) == 0 { 256 } else { dir };
            put_u64(b, s, v);
            format!("item {slot} body location objectid -> {v}")
        }
        7..=17 => {
            // Node: child pointer to itself, to another block, or to garbage.
            let v = match rng.below(3) {
                0 => logical,
                1 => others[rng.below(others.len())],
                _ => rng.nasty(),
            };
            put_u64(b, item + 17, v);
            format!("ptr {slot} blockptr -> {v}")
        }
        18 if !leaf => {
            let v = rng.nasty();
            put_u64(b, item + 25, v);
            format!("ptr {slot} generation -> {v}")
        }
        _ => {
            let v = rng.nasty();
            put_u64(b, 48, v);
            format!("bytenr -> {v}")
        }
    }
}

fn reseal(b: &mut [u8], csum: CsumType) {
    let c = csum.compute(&b[32..]);
    b[..32].copy_from_slice(&c);
}

#[derive(Default)]
struct Tally {
    runs: usize,
    ok: usize,
    clean_error: usize,
    scrub_findings: usize,
    failures: Vec<String>,
}

/// Run `btrs ARGS` under the address-space limit and the time bound; classify the outcome.
fn run_btrs(args: &[&str], scrub: bool, scratch: &Path, what: &str, tally: &Mutex<Tally>) {
    let out_path = scratch.join("stdout");
    let err_path = scratch.join("stderr");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ULIMIT_KB}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_btrs"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let mut t = tally.lock().unwrap();
    t.runs += 1;
    let tail: String = err.chars().rev().take(600).collect::<Vec<_>>().into_iter().rev().collect();
    let fail = match status {
        None => Some(format!("hung (> {TIME_LIMIT:?})")),
        Some(s) if s.signal().is_some() => Some(format!("killed by signal {:?}", s.signal())),
        Some(_) if err.contains("panicked") => Some("panicked".into()),
        Some(_) if err.contains("memory allocation") => Some("allocation failure".into()),
        Some(s) => match (s.code(), scrub) {
            (Some(0), _) => {
                t.ok += 1;
                None
            }
            (Some(1), _) => {
                t.clean_error += 1;
                None
            }
            (Some(3), true) => {
                t.scrub_findings += 1;
                None
            }
            (c, _) => Some(format!("exit status {c:?}")),
        },
    };
    if let Some(f) = fail {
        t.failures.push(format!("{what}: btrs {args:?}: {f}\n{tail}"));
    }
}

/// Everything of `dir` except `keep`: extract must never write outside its destination.
fn stray_entries(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn mutated_metadata_never_crashes() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    // Per worker: its own copy of every fixture, and a scratch dir.
    let mut workers: Vec<(PathBuf, HashMap<&str, Vec<PathBuf>>)> = Vec::new();
    for w in 0..WORKERS {
        let wdir = tmp.path().join(format!("w{w}"));
        let mut imgs = HashMap::new();
        for &name in FIXTURES {
            imgs.insert(name, unpack_foreign(name, &wdir.join("img").join(name)));
        }
        std::fs::create_dir_all(wdir.join("scratch")).unwrap();
        workers.push((wdir, imgs));
    }
    let infos: Vec<FixtureInfo> = FIXTURES.iter().map(|&n| fixture_info(n, &workers[0].1[n])).collect();
    let setup = started.elapsed();

    let next = AtomicUsize::new(0);
    let tally = Mutex::new(Tally::default());
    let variants_done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for (wdir, imgs) in &workers {
            let (next, tally, infos, variants_done) = (&next, &tally, &infos, &variants_done);
            s.spawn(move || loop {
                let v = next.fetch_add(1, Ordering::SeqCst);
                if v >= VARIANTS {
                    break;
                }
                let info = &infos[v % infos.len()];
                let images = &imgs[info.name];
                let mut rng = Rng(0x5eed_0000 + v as u64);
                // Half the variants hit the subvolume trees (owner 5 or >= 256), where the
                // directory, inode and extent decoders live; the rest any tree.
                let fs_blocks: Vec<&Block> =
                    info.blocks.iter().filter(|b| b.owner == 5 || (256..u64::MAX - 255).contains(&b.owner)).collect();
                let block = if rng.below(2) == 0 && !fs_blocks.is_empty() {
                    fs_blocks[rng.below(fs_blocks.len())].clone()
                } else {
                    info.blocks[rng.below(info.blocks.len())].clone()
                };
                let others: Vec<u64> = info.blocks.iter().map(|b| b.logical).collect();
                let files: Vec<std::fs::File> =
                    images.iter().map(|p| std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap()).collect();
                let mut orig = vec![0u8; info.nodesize];
                files[block.copies[0].0].read_exact_at(&mut orig, block.copies[0].1).unwrap();
                let mut b = orig.clone();
                let desc = mutate(&mut b, &mut rng, block.logical, &others);
                reseal(&mut b, info.csum);
                let saved: Vec<Vec<u8>> = block
                    .copies
                    .iter()
                    .map(|&(d, p)| {
                        let mut o = vec![0u8; info.nodesize];
                        files[d].read_exact_at(&mut o, p).unwrap();
                        files[d].write_all_at(&b, p).unwrap();
                        o
                    })
                    .collect();
                let what = format!("variant {v} ({} block {} owner {}: {desc})", info.name, block.logical, block.owner);
                let img = images[0].to_str().unwrap();
                let scratch = wdir.join("scratch");
                run_btrs(&["ls", img, "/", "-R", "-l"], false, &scratch, &what, tally);
                run_btrs(&["dump-tree", img], false, &scratch, &what, tally);
                run_btrs(&["filesystem", "usage", img], false, &scratch, &what, tally);
                run_btrs(&["scrub", img, "--readonly", "--json", "--no-progress", "--threads", "2"], true, &scratch, &what, tally);
                // The expensive commands (every file, every byte written out) on 1 in 5 variants,
                // to keep the whole test within ~3 minutes on 2 cores.
                if v % 5 == 0 {
                    for f in &info.files {
                        run_btrs(&["cat", img, f], false, &scratch, &what, tally);
                    }
                    let dest = wdir.join("out");
                    run_btrs(&["extract", img, "/", dest.to_str().unwrap()], false, &scratch, &what, tally);
                    let stray = stray_entries(wdir, &["img", "scratch", "out"]);
                    if !stray.is_empty() {
                        tally.lock().unwrap().failures.push(format!("{what}: extract wrote outside its destination: {stray:?}"));
                    }
                    let _ = std::fs::remove_dir_all(&dest);
                }
                for (&(d, p), o) in block.copies.iter().zip(&saved) {
                    files[d].write_all_at(o, p).unwrap();
                }
                variants_done.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let t = tally.into_inner().unwrap();
    let total = started.elapsed();
    let blocks: Vec<String> = infos.iter().map(|i| format!("{} {}", i.name, i.blocks.len())).collect();
    println!(
        "hostile: {} variants over blocks [{}], {} command runs: {} ok, {} clean errors, {} scrub findings, {} failures; setup {:.1?}, total {:.1?}",
        variants_done.load(Ordering::SeqCst),
        blocks.join(", "),
        t.runs,
        t.ok,
        t.clean_error,
        t.scrub_findings,
        t.failures.len(),
        setup,
        total
    );
    assert_eq!(variants_done.load(Ordering::SeqCst), VARIANTS);
    // Mutations must actually bite: a run where every command succeeded would mean the
    // mutated blocks were never read.
    assert!(t.clean_error + t.scrub_findings > VARIANTS / 2, "too few mutations detected: {} errors", t.clean_error + t.scrub_findings);
    assert!(
        t.failures.is_empty(),
        "{} failures; first ones:\n{}",
        t.failures.len(),
        t.failures.iter().take(15).cloned().collect::<Vec<_>>().join("\n---\n")
    );
}

/// Regression (found by `mutated_metadata_never_crashes`, variant 552): a directory entry
/// pointing back at the root directory made `extract` recurse to the depth limit, re-extracting
/// the whole tree at every level (it ran for minutes), and `ls -R` do the same listing.  Both
/// now stop at the second visit of a directory with a clean error.
#[test]
fn directory_loop_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("single", &tmp.path().join("img"));
    let (csum, nodesize, blocks) = collect_blocks(&imgs[0]);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&imgs[0]).unwrap();
    // A DIR_INDEX item of a subdirectory whose entry is itself a directory (type 2).
    let mut done = false;
    'blocks: for blk in blocks.iter().filter(|b| b.owner == 5) {
        let mut b = vec![0u8; nodesize];
        f.read_exact_at(&mut b, blk.copies[0].1).unwrap();
        if b[100] != 0 {
            continue;
        }
        for i in 0..get_u32(&b, 96) as usize {
            let item = HEADER_SIZE + i * ITEM_SIZE;
            let dir = u64::from_le_bytes(b[item..item + 8].try_into().unwrap());
            let body = HEADER_SIZE + get_u32(&b, item + 17) as usize;
            if b[item + 8] == btrs::format::DIR_INDEX_KEY && dir != 256 && b[body + 29] == 2 {
                put_u64(&mut b, body, 256);
                reseal(&mut b, csum);
                for &(d, p) in &blk.copies {
                    std::fs::OpenOptions::new().write(true).open(&imgs[d]).unwrap().write_all_at(&b, p).unwrap();
                }
                done = true;
                break 'blocks;
            }
        }
    }
    assert!(done, "single has a subdirectory inside a subdirectory");
    let img = imgs[0].to_str().unwrap();
    let dest = tmp.path().join("out");
    for args in [vec!["ls", img, "/", "-R"], vec!["extract", img, "/", dest.to_str().unwrap()]] {
        let start = Instant::now();
        let out = common::btrs_cmd().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("reached twice"), "{args:?}: {err}");
        assert!(start.elapsed() < Duration::from_secs(10), "{args:?} took {:?}", start.elapsed());
    }
}

/// Regression (found on btrfs-progs' fuzz image bko-199839, whose chunk claims 1.7 PiB): scrub
/// cut every block group into 64 MiB work slices by the length the image gave, and reported each
/// failing slice; a huge length meant millions of slices and findings (minutes, gigabytes).
/// Now a block group makes at most 1024 slices and one "not fully scrubbed" finding.
#[test]
fn huge_block_group_length_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = unpack_foreign("single", &tmp.path().join("img"));
    let (csum, nodesize, blocks) = collect_blocks(&imgs[0]);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&imgs[0]).unwrap();
    let mut done = false;
    'blocks: for blk in blocks.iter().filter(|b| b.owner == btrs::format::EXTENT_TREE_OBJECTID) {
        let mut b = vec![0u8; nodesize];
        f.read_exact_at(&mut b, blk.copies[0].1).unwrap();
        if b[100] != 0 {
            continue;
        }
        for i in 0..get_u32(&b, 96) as usize {
            let item = HEADER_SIZE + i * ITEM_SIZE;
            if b[item + 8] == btrs::format::BLOCK_GROUP_ITEM_KEY {
                // key.offset is the block group's length.
                put_u64(&mut b, item + 9, 1 << 50);
                reseal(&mut b, csum);
                for &(d, p) in &blk.copies {
                    f.write_all_at(&b, p).unwrap();
                    assert_eq!(d, 0);
                }
                done = true;
                break 'blocks;
            }
        }
    }
    assert!(done, "the extent tree of single holds block group items");
    let start = Instant::now();
    let out = common::btrs_cmd().args(["scrub", imgs[0].to_str().unwrap(), "--readonly", "--json", "--no-progress"]).output().unwrap();
    let elapsed = start.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(report.matches("not fully scrubbed").count(), 1, "{}", &report[..report.len().min(3000)]);
    assert!(elapsed < Duration::from_secs(20), "scrub took {elapsed:?}");
}

/// Superblock fields (sizes, levels, roots, feature bits, checksum type, the
/// sys_chunk_array that bootstraps the chunk map) set to hostile values in
/// the primary copy of devid 1, resealed so the checksum passes: every
/// read-side command answers or fails cleanly, in bounded time and memory.
#[test]
fn mutated_superblocks_never_crash() {
    const SB_VARIANTS: usize = 480;
    // (offset, width) of the fields a parser takes sizes and addresses from.
    const FIELDS: &[(usize, usize)] = &[
        (48, 8),
        (56, 8),
        (72, 8),
        (80, 8),
        (88, 8),
        (96, 8),
        (104, 8),
        (112, 8),
        (120, 8),
        (128, 8),
        (136, 8),
        (144, 4),
        (148, 4),
        (152, 4),
        (156, 4),
        (160, 4),
        (164, 8),
        (172, 8),
        (180, 8),
        (188, 8),
        (196, 2),
        (198, 1),
        (199, 1),
        (200, 1),
        (201, 8),
        (209, 8),
        (217, 8),
        (555, 8),
        (563, 8),
        (587, 8),
    ];
    const SYS_ARRAY: usize = 811;
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let names = ["single", "raid1-xxhash-4k"];
    let workers: Vec<(PathBuf, Vec<Vec<PathBuf>>)> = (0..WORKERS)
        .map(|w| {
            let wdir = tmp.path().join(format!("w{w}"));
            let imgs = names.iter().map(|n| unpack_foreign(n, &wdir.join("img").join(n))).collect();
            std::fs::create_dir_all(wdir.join("scratch")).unwrap();
            (wdir, imgs)
        })
        .collect();
    let next = AtomicUsize::new(0);
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for (wdir, imgs) in &workers {
            let (next, tally) = (&next, &tally);
            s.spawn(move || loop {
                let v = next.fetch_add(1, Ordering::SeqCst);
                if v >= SB_VARIANTS {
                    break;
                }
                let images = &imgs[v % imgs.len()];
                let f = std::fs::OpenOptions::new().read(true).write(true).open(&images[0]).unwrap();
                let mut orig = vec![0u8; 4096];
                f.read_exact_at(&mut orig, 65536).unwrap();
                let mut b = orig.clone();
                let mut rng = Rng(0x5b00_0000 + v as u64);
                let mut desc = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    let sys_len = u32::from_le_bytes(orig[160..164].try_into().unwrap()) as usize;
                    let (at, width) = if rng.below(3) == 0 && sys_len > 8 {
                        (SYS_ARRAY + rng.below(sys_len - 8), [1, 2, 4, 8][rng.below(4)])
                    } else {
                        FIELDS[rng.below(FIELDS.len())]
                    };
                    let val = rng.nasty();
                    b[at..at + width].copy_from_slice(&val.to_le_bytes()[..width]);
                    desc.push(format!("{width} bytes at {at} = {val:#x}"));
                }
                // Reseal with the checksum type the superblock now names, so
                // the checksum is not what stops the damage.
                let kind = CsumType::from_raw(u16::from_le_bytes([b[196], b[197]])).unwrap_or(CsumType::Crc32c);
                reseal(&mut b, kind);
                f.write_all_at(&b, 65536).unwrap();
                let what = format!("superblock variant {v} of {}: {}", images[0].display(), desc.join(", "));
                let img = images[0].to_str().unwrap();
                let scratch = wdir.join("scratch");
                run_btrs(&["dump-super", img, "--all"], false, &scratch, &what, tally);
                run_btrs(&["ls", img, "/", "-R", "-l"], false, &scratch, &what, tally);
                run_btrs(&["scrub", img, "--readonly", "--json", "--no-progress", "--threads", "1"], true, &scratch, &what, tally);
                f.write_all_at(&orig, 65536).unwrap();
            });
        }
    });
    let t = tally.into_inner().unwrap();
    println!(
        "hostile superblocks: {SB_VARIANTS} variants, {} command runs: {} ok, {} clean errors, {} scrub findings, {} failures; {:.1?}",
        t.runs,
        t.ok,
        t.clean_error,
        t.scrub_findings,
        t.failures.len(),
        started.elapsed()
    );
    assert_eq!(t.runs, SB_VARIANTS * 3);
    assert!(t.clean_error + t.scrub_findings > SB_VARIANTS / 3, "too few mutations detected");
    assert!(
        t.failures.is_empty(),
        "{} failures; first ones:\n{}",
        t.failures.len(),
        t.failures.iter().take(15).cloned().collect::<Vec<_>>().join("\n---\n")
    );
}

/// Copy `src` to `dst` keeping holes (only the data regions SEEK_DATA finds are copied).
fn sparse_copy(src: &Path, dst: &Path) {
    use rustix::fs::SeekFrom as S;
    let from = std::fs::File::open(src).unwrap();
    let to = std::fs::File::create(dst).unwrap();
    let len = from.metadata().unwrap().len();
    to.set_len(len).unwrap();
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while pos < len {
        let Ok(data) = rustix::fs::seek(&from, S::Data(pos as i64)) else { break };
        let hole = rustix::fs::seek(&from, S::Hole(data as i64)).unwrap_or(len).min(len);
        let mut at = data;
        while at < hole {
            let n = ((hole - at) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], at).unwrap();
            to.write_all_at(&buf[..n], at).unwrap();
            at += n as u64;
        }
        pos = hole;
    }
}

/// An item to mutate: its leaf's logical address, its slot, and every copy of the leaf.
type Target = (u64, usize, Vec<(usize, u64)>);

/// Chunk items, device items and dev extents with hostile fields (resealed), sometimes with
/// the second device swapped for an older copy of itself: reading, scrubbing, repairing and
/// writing commands answer or fail cleanly, in bounded time and memory, and a repair that
/// runs never leaves an image that `btrs` itself then crashes on.
#[test]
fn mutated_chunk_and_device_items_and_stale_devices_never_crash() {
    const CD_VARIANTS: usize = 160;
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    let bin = env!("CARGO_BIN_EXE_btrs");
    let imgs: Vec<PathBuf> = (1..=2).map(|i| base.join(format!("dev{i}.img"))).collect();
    let run = |args: &[&str]| {
        let o = Command::new(bin).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    run(&["mkfs", "-f", "-b", "160M", "-d", "raid1", "-m", "raid1", imgs[0].to_str().unwrap(), imgs[1].to_str().unwrap()]);
    let src = tmp.path().join("data.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    run(&["write", imgs[0].to_str().unwrap(), "/a", "--from", src.to_str().unwrap(), "--nodatasum"]);
    run(&["write", imgs[0].to_str().unwrap(), "/b", "--from", src.to_str().unwrap()]);
    // The older copy of devid 2, then more writes.
    let old2 = tmp.path().join("dev2.old");
    sparse_copy(&imgs[1], &old2);
    run(&["write", imgs[0].to_str().unwrap(), "/a", "--from", src.to_str().unwrap(), "--offset", "100000"]);
    run(&["mkdir", imgs[0].to_str().unwrap(), "/d"]);
    // Chunk tree and dev tree items, with the place of each copy of their leaf.
    let fs = btrs::Filesystem::open(&OpenOptions { image: imgs[0].clone(), devices: imgs.clone(), ..Default::default() }).unwrap();
    let mut targets: Vec<Target> = Vec::new();
    for tree in [CHUNK_TREE_OBJECTID, btrs::format::DEV_TREE_OBJECTID] {
        let root = fs.tree_root(tree).unwrap();
        let mut c = fs.reader.seek(&root, Key::MIN).unwrap();
        while let Some(it) = c.next_item().unwrap() {
            let t = it.key.item_type;
            if [btrs::format::CHUNK_ITEM_KEY, btrs::format::DEV_ITEM_KEY, btrs::format::DEV_EXTENT_KEY].contains(&t) {
                let l = it.leaf.logical;
                let copies = (0..fs.volume().num_copies(l).unwrap())
                    .map(|m| {
                        let p = fs.volume().locate(l, m).unwrap();
                        (p.devid as usize - 1, p.physical)
                    })
                    .collect();
                targets.push((l, it.slot, copies));
            }
        }
    }
    let (csum, nodesize) = (fs.csum, fs.sb.nodesize.get() as usize);
    drop(fs);
    assert!(targets.len() >= 6, "chunk and dev items: {}", targets.len());
    let next = AtomicUsize::new(0);
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (next, tally, targets, imgs, old2, src) = (&next, &tally, &targets, &imgs, &old2, &src);
            let wdir = tmp.path().join(format!("w{w}"));
            std::fs::create_dir_all(wdir.join("scratch")).unwrap();
            s.spawn(move || loop {
                let v = next.fetch_add(1, Ordering::SeqCst);
                if v >= CD_VARIANTS {
                    break;
                }
                let mut rng = Rng(0xc4d0_0000 + v as u64);
                let mine: Vec<PathBuf> = (1..=2).map(|i| wdir.join(format!("dev{i}.img"))).collect();
                let stale = rng.below(2) == 0;
                sparse_copy(&imgs[0], &mine[0]);
                sparse_copy(if stale { old2 } else { &imgs[1] }, &mine[1]);
                let (leaf, slot, copies) = &targets[rng.below(targets.len())];
                let files: Vec<std::fs::File> =
                    mine.iter().map(|p| std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap()).collect();
                let mut b = vec![0u8; nodesize];
                files[copies[0].0].read_exact_at(&mut b, copies[0].1).unwrap();
                let item = HEADER_SIZE + slot * ITEM_SIZE;
                let off = HEADER_SIZE + get_u32(&b, item + 17) as usize;
                let size = get_u32(&b, item + 21) as usize;
                let mut desc = Vec::new();
                for _ in 0..1 + rng.below(2) {
                    // A field of the body: u64s at 8-byte steps (lengths, offsets, devids,
                    // stripe offsets), or the u16s of a chunk (num_stripes, sub_stripes).
                    let (at, width) = if rng.below(4) == 0 && size >= 48 {
                        (off + 44 + 2 * rng.below(2), 2)
                    } else {
                        (off + 8 * rng.below((size / 8).max(1)), 8)
                    };
                    let val = if rng.below(3) == 0 {
                        // Another chunk's or device's value: overlaps rather than nonsense.
                        u64::from_le_bytes(b[off..off + 8].try_into().unwrap()).wrapping_add(rng.below(3) as u64 * 1048576)
                    } else {
                        rng.nasty()
                    };
                    if at + width <= b.len() {
                        b[at..at + width].copy_from_slice(&val.to_le_bytes()[..width]);
                    }
                    desc.push(format!("{width} bytes at {} = {val:#x}", at - off));
                }
                reseal(&mut b, csum);
                for &(d, p) in copies {
                    files[d].write_all_at(&b, p).unwrap();
                }
                let what =
                    format!("variant {v} (leaf {leaf} slot {slot}{}: {})", if stale { ", devid 2 stale" } else { "" }, desc.join(", "));
                let img = mine[0].to_str().unwrap();
                let scratch = wdir.join("scratch");
                run_btrs(&["ls", img, "/", "-R", "-l"], false, &scratch, &what, tally);
                run_btrs(&["cat", img, "/a"], false, &scratch, &what, tally);
                run_btrs(&["dump-tree", img, "--tree", "chunk"], false, &scratch, &what, tally);
                // Sums of sizes from dev items and dev extents must not overflow into a panic.
                run_btrs(&["filesystem", "usage", img], false, &scratch, &what, tally);
                run_btrs(&["filesystem", "show", img], false, &scratch, &what, tally);
                run_btrs(&["scrub", img, "--json", "--no-progress", "--threads", "2"], true, &scratch, &what, tally);
                run_btrs(&["scrub", img, "--repair", "--json", "--no-progress", "--threads", "2"], true, &scratch, &what, tally);
                run_btrs(&["write", img, "/c", "--from", src.to_str().unwrap()], false, &scratch, &what, tally);
                run_btrs(&["scrub", img, "--json", "--no-progress", "--threads", "1"], true, &scratch, &what, tally);
            });
        }
    });
    let t = tally.into_inner().unwrap();
    println!(
        "hostile chunk/device items: {CD_VARIANTS} variants, {} command runs: {} ok, {} clean errors, {} scrub findings, {} failures; {:.1?}",
        t.runs,
        t.ok,
        t.clean_error,
        t.scrub_findings,
        t.failures.len(),
        started.elapsed()
    );
    assert_eq!(t.runs, CD_VARIANTS * 9);
    assert!(t.clean_error + t.scrub_findings > CD_VARIANTS, "too few mutations detected");
    assert!(
        t.failures.is_empty(),
        "{} failures; first ones:\n{}",
        t.failures.len(),
        t.failures.iter().take(15).cloned().collect::<Vec<_>>().join("\n---\n")
    );
}
