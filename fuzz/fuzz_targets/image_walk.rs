//! Whole-image open and walk: the `single` fixture (unpacked once into a temp file), with
//! fuzzer-chosen byte writes applied to its metadata blocks, checksums recomputed and the
//! block written to every copy; then open, `ls -R`, read every file, dump every tree and scrub.
//! The original blocks are restored after each input (run with -jobs=1: one process per image).
#![no_main]

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use btrs::format::{CsumType, Key, CHUNK_TREE_OBJECTID, ROOT_ITEM_KEY, ROOT_TREE_OBJECTID};
use btrs::fs::Filesystem;
use btrs::tree::RootPtr;
use btrs::volumes::OpenOptions;
use libfuzzer_sys::fuzz_target;

struct Image {
    _dir: PathBuf,
    path: PathBuf,
    csum: CsumType,
    nodesize: usize,
    /// Physical offsets of the copies of each metadata block.
    blocks: Vec<Vec<u64>>,
}

fn image() -> &'static Image {
    static IMG: OnceLock<Image> = OnceLock::new();
    IMG.get_or_init(|| {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/foreign/single/dev1.img.zst");
        let dir = std::env::temp_dir().join(format!("btrs-fuzz-image-walk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dev1.img");
        let mut dec = zstd::stream::read::Decoder::new(std::fs::File::open(src).unwrap()).unwrap();
        let mut out = std::fs::File::create(&path).unwrap();
        std::io::copy(&mut dec, &mut out).unwrap();
        drop(out);
        let fs = Filesystem::open(&OpenOptions { image: path.clone(), ..Default::default() }).unwrap();
        let mut roots = vec![fs.tree_root(ROOT_TREE_OBJECTID).unwrap(), fs.tree_root(CHUNK_TREE_OBJECTID).unwrap()];
        for (k, d) in fs.reader.range(&roots[0], Key::MIN, Key::MAX).unwrap() {
            if k.item_type == ROOT_ITEM_KEY {
                let ri = btrs::format::items::parse_root_item(&d).unwrap();
                roots.push(RootPtr { bytenr: ri.bytenr.get(), level: ri.level, generation: ri.generation.get(), owner: k.objectid });
            }
        }
        let mut blocks = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for r in roots {
            let mut stack = vec![fs.reader.root_block(&r).unwrap()];
            while let Some(b) = stack.pop() {
                if !seen.insert(b.logical) {
                    continue;
                }
                let n = fs.volume().num_copies(b.logical).unwrap();
                blocks.push((0..n).map(|m| fs.volume().locate(b.logical, m).unwrap().physical).collect());
                if !b.is_leaf() {
                    for i in 0..b.nritems() {
                        stack.push(fs.reader.child(&b, i, r.owner).unwrap());
                    }
                }
            }
        }
        Image { _dir: dir, path, csum: fs.csum, nodesize: fs.sb.nodesize.get() as usize, blocks }
    })
}

#[derive(Arbitrary, Debug)]
struct Edit {
    block: u8,
    offset: u16,
    bytes: Vec<u8>,
}

fuzz_target!(|edits: Vec<Edit>| {
    let img = image();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&img.path).unwrap();
    let mut saved: Vec<(u64, Vec<u8>)> = Vec::new();
    for e in edits.iter().take(4) {
        let copies = &img.blocks[e.block as usize % img.blocks.len()];
        let mut b = vec![0u8; img.nodesize];
        f.read_exact_at(&mut b, copies[0]).unwrap();
        // The checksum field is rewritten below: edits land after it.
        let at = 32 + e.offset as usize % (img.nodesize - 32);
        let n = e.bytes.len().min(img.nodesize - at).min(64);
        b[at..at + n].copy_from_slice(&e.bytes[..n]);
        let c = img.csum.compute(&b[32..]);
        b[..32].copy_from_slice(&c);
        for &p in copies {
            let mut o = vec![0u8; img.nodesize];
            f.read_exact_at(&mut o, p).unwrap();
            saved.push((p, o));
            f.write_all_at(&b, p).unwrap();
        }
    }
    walk(&img.path);
    // Restore in reverse so a block edited twice gets its original bytes back.
    for (p, o) in saved.iter().rev() {
        f.write_all_at(o, *p).unwrap();
    }
});

fn walk(path: &std::path::Path) {
    let opts = OpenOptions { image: path.to_path_buf(), ..Default::default() };
    let Ok(fs) = Filesystem::open(&opts) else { return };
    let mut sink = Vec::new();
    let ls_opts = btrs::ops::listing::LsOptions {
        long: true,
        recursive: true,
        human: true,
        unsorted: false,
        quoting: btrs::ops::quoting::Quoting::ShellEscape,
    };
    let _ = btrs::ops::listing::ls(&fs, "/", &ls_opts, &mut sink);
    let _ = btrs::ops::dump::dump_tree(&mut sink, &fs, None);
    let dump_opts = btrs::ops::dump::DumpTreeOptions {
        order: btrs::ops::dump::Traversal::DepthFirst,
        extents_only: true,
        csum_items: true,
        ..Default::default()
    };
    let _ = btrs::ops::dump::dump_tree_with(&mut sink, &fs, &dump_opts);
    read_all(&fs, fs.root_dir(), 0);
    drop(fs);
    let _ = btrs::ops::scrub::scrub(&opts, &btrs::ops::scrub::ScrubOptions { threads: 1, ..Default::default() });
}

/// Read every file's bytes, as `extract` does (without writing them anywhere).
fn read_all(fs: &Filesystem, dir: btrs::fs::InodeId, depth: usize) {
    if depth > 64 {
        return;
    }
    let Ok(ents) = fs.read_dir(dir) else { return };
    for e in ents {
        match e.file_type {
            btrs::format::FileType::Directory => read_all(fs, e.id, depth + 1),
            btrs::format::FileType::Regular => {
                if let Ok(ino) = fs.inode(e.id) {
                    let _ = fs.read_file(&ino, &mut |_| Ok(()));
                }
            }
            btrs::format::FileType::Symlink => {
                let _ = fs.read_link(e.id);
            }
            _ => {}
        }
        let _ = fs.xattrs(e.id);
    }
}
