//! Test helpers for the reference ("foreign") images in `fixtures/foreign/`, made by
//! mkfs.btrfs and the Linux kernel with `fixtures/make-foreign.sh` (see `fixtures/README.md`).
//!
//! Each fixture is a directory `fixtures/foreign/NAME/` holding `devN.img.zst` (one per device,
//! N = devid, 1-based) and `manifest.json`: the kernel's view of every file as written by
//! `fixtures/manifest.py`, plus facts about the image.  [`walk_manifest`] produces the
//! `{"entries": [...]}` part in exactly the same format from any directory, so a test can
//! extract an image with btrs and compare:
//!
//! ```ignore
//! let dir = tempfile::tempdir().unwrap();
//! let imgs = unpack_foreign("single", dir.path());
//! // ... btrs extract imgs into dir/out ...
//! assert_manifest_eq(&expected_entries("single"), &walk_manifest(&dir.path().join("out")));
//! ```
//!
//! Compare manifests as parsed JSON values (as here), not as text: Python escapes non-ASCII
//! characters in its output, serde_json does not.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// `CARGO_MANIFEST_DIR/fixtures/foreign`.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("foreign")
}

/// Names of the fixtures present (subdirectories of [`fixtures_dir`] with a `manifest.json`),
/// sorted.  Hidden directories (the script's staging dirs) are skipped.
pub fn foreign_names() -> Vec<String> {
    let mut names = Vec::new();
    let Ok(rd) = fs::read_dir(fixtures_dir()) else {
        return names;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.path().join("manifest.json").is_file() {
            continue;
        }
        names.push(name);
    }
    names.sort();
    names
}

/// The whole `manifest.json` of fixture `name` (entries plus facts such as "devices",
/// "mkfs", "csum", "profiles", "fs_tree_level", "compressed_extents", ...).
pub fn load_manifest(name: &str) -> Value {
    let p = fixtures_dir().join(name).join("manifest.json");
    let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", p.display()))
}

/// Just `{"entries": [...]}` of fixture `name`: what [`walk_manifest`] should give for a faithful
/// extraction of the image's top-level subvolume.
pub fn expected_entries(name: &str) -> Value {
    let m = load_manifest(name);
    json!({ "entries": m["entries"].clone() })
}

/// Paths (relative, as in the manifest) whose mtime the kernel makes up at lookup time: the empty
/// placeholder directories (inode 2) standing where a snapshot met a nested subvolume.
pub fn volatile_mtime_paths(name: &str) -> Vec<String> {
    load_manifest(name)["empty_subvol_placeholders"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Remove "mtime" from the entries of `manifest` whose path is in `paths`.
pub fn strip_mtime(manifest: &mut Value, paths: &[String]) {
    if let Some(entries) = manifest["entries"].as_array_mut() {
        for e in entries {
            let hit = e["path"].as_str().is_some_and(|p| paths.iter().any(|x| x == p));
            if hit {
                if let Some(o) = e.as_object_mut() {
                    o.remove("mtime");
                }
            }
        }
    }
}

/// Paths of the compressed images of fixture `name`, in devid order.
pub fn foreign_device_files(name: &str) -> Vec<PathBuf> {
    let dir = fixtures_dir().join(name);
    let m = load_manifest(name);
    m["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: manifest has no \"devices\""))
        .iter()
        .map(|v| dir.join(v.as_str().expect("device name")))
        .collect()
}

/// Decompress every `devN.img.zst` of fixture `name` into `dest/devN.img`, as sparse files
/// (all-zero 4 KiB blocks are skipped, not written).  Returns the image paths in devid order.
pub fn unpack_foreign(name: &str, dest: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(dest).unwrap_or_else(|e| panic!("creating {}: {e}", dest.display()));
    foreign_device_files(name)
        .into_iter()
        .map(|src| {
            let file = src.file_name().unwrap().to_string_lossy();
            let out = dest.join(file.strip_suffix(".zst").unwrap_or(&file));
            unpack_sparse(&src, &out).unwrap_or_else(|e| panic!("unpacking {} to {}: {e}", src.display(), out.display()));
            out
        })
        .collect()
}

const BLOCK: usize = 4096;
static ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

/// Decompress the zstd file `src` into `dst` (created or truncated), seeking over all-zero
/// 4 KiB blocks.  Returns the decompressed length.
pub fn unpack_sparse(src: &Path, dst: &Path) -> io::Result<u64> {
    let mut dec = zstd::stream::read::Decoder::new(File::open(src)?)?;
    dec.window_log_max(31)?;
    let mut out = File::create(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: u64 = 0; // decompressed bytes so far
    let mut cursor: u64 = 0; // where `out`'s file offset is
    loop {
        let n = read_full(&mut dec, &mut buf)?;
        if n == 0 {
            break;
        }
        for chunk in buf[..n].chunks(BLOCK) {
            if chunk != &ZERO_BLOCK[..chunk.len()] {
                if cursor != pos {
                    out.seek(SeekFrom::Start(pos))?;
                }
                out.write_all(chunk)?;
                cursor = pos + chunk.len() as u64;
            }
            pos += chunk.len() as u64;
        }
    }
    out.set_len(pos)?;
    Ok(pos)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Bytes as text the way manifest.py writes paths and symlink targets: UTF-8 as is,
/// anything else as "hex:" + lowercase hex.
pub fn manifest_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("hex:{}", hex(b)),
    }
}

pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Linux `major()` / `minor()` of a dev_t (glibc's encoding).
pub fn dev_major(rdev: u64) -> u64 {
    ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)
}
pub fn dev_minor(rdev: u64) -> u64 {
    (rdev & 0xff) | ((rdev >> 12) & !0xff)
}

fn sha256_file(p: &Path) -> io::Result<String> {
    let mut f = File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn user_xattrs(p: &Path) -> Map<String, Value> {
    let mut out = Map::new();
    // xattr::list / get do not follow symlinks.
    let Ok(names) = xattr::list(p) else {
        return out;
    };
    for name in names {
        if !name.as_bytes().starts_with(b"user.") {
            continue;
        }
        if let Ok(Some(v)) = xattr::get(p, &name) {
            out.insert(name.to_string_lossy().into_owned(), Value::String(hex(&v)));
        }
    }
    out
}

/// The manifest of the tree at `root`, `{"entries": [...]}`, in exactly the format of
/// `fixtures/manifest.py` (see there and fixtures/README.md).
pub fn walk_manifest(root: &Path) -> Value {
    // Collect relative paths as bytes, then sort bytewise.
    let mut rels: Vec<Vec<u8>> = vec![Vec::new()];
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let dir = join(root, &rel);
        let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading dir {}: {e}", dir.display()));
        for ent in rd {
            let ent = ent.unwrap_or_else(|e| panic!("reading dir {}: {e}", dir.display()));
            let mut child = rel.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(ent.file_name().as_bytes());
            let md = fs::symlink_metadata(join(root, &child)).unwrap_or_else(|e| panic!("lstat {}: {e}", join(root, &child).display()));
            if md.is_dir() {
                stack.push(child.clone());
            }
            rels.push(child);
        }
    }
    rels.sort();

    let mut seen: HashMap<(u64, u64), String> = HashMap::new();
    let mut entries = Vec::with_capacity(rels.len());
    for rel in &rels {
        let full = join(root, rel);
        let md = fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
        let ft = md.file_type();
        let t = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chr"
        } else if ft.is_block_device() {
            "blk"
        } else if ft.is_socket() {
            "sock"
        } else {
            panic!("{}: unknown file type", full.display())
        };
        let path = manifest_text(rel);
        let mut e = Map::new();
        e.insert("path".into(), json!(path));
        e.insert("type".into(), json!(t));
        e.insert("mode".into(), json!(md.mode() & 0o7777));
        e.insert("uid".into(), json!(md.uid()));
        e.insert("gid".into(), json!(md.gid()));
        e.insert("mtime".into(), json!([md.mtime(), md.mtime_nsec()]));
        if t == "file" || t == "symlink" {
            e.insert("size".into(), json!(md.size()));
        }
        if t == "file" {
            let h = sha256_file(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()));
            e.insert("sha256".into(), json!(h));
        }
        if t == "symlink" {
            let target = fs::read_link(&full).unwrap_or_else(|e| panic!("readlink {}: {e}", full.display()));
            e.insert("target".into(), json!(manifest_text(target.as_os_str().as_bytes())));
        }
        if t == "chr" || t == "blk" {
            e.insert("rdev".into(), json!([dev_major(md.rdev()), dev_minor(md.rdev())]));
        }
        if t != "symlink" {
            let x = user_xattrs(&full);
            if !x.is_empty() {
                e.insert("xattrs".into(), Value::Object(x));
            }
        }
        if t != "dir" {
            let key = (md.dev(), md.ino());
            match seen.get(&key) {
                Some(first) => {
                    e.insert("link".into(), json!(first));
                }
                None => {
                    seen.insert(key, path.clone());
                }
            }
        }
        entries.push(Value::Object(e));
    }
    json!({ "entries": entries })
}

fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(rel))
    }
}

/// Differences between two manifests' entries, one readable line each (empty when equal).
pub fn diff_manifests(expected: &Value, actual: &Value) -> Vec<String> {
    fn by_path(v: &Value) -> Vec<(String, &Map<String, Value>)> {
        v["entries"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| Some((e["path"].as_str()?.to_owned(), e.as_object()?))).collect())
            .unwrap_or_default()
    }
    let exp = by_path(expected);
    let act = by_path(actual);
    let act_map: HashMap<&str, &Map<String, Value>> = act.iter().map(|(p, e)| (p.as_str(), *e)).collect();
    let exp_map: HashMap<&str, &Map<String, Value>> = exp.iter().map(|(p, e)| (p.as_str(), *e)).collect();
    let mut out = Vec::new();
    for (p, e) in &exp {
        match act_map.get(p.as_str()) {
            None => out.push(format!("missing: {p:?}")),
            Some(a) => {
                let mut keys: Vec<&String> = e.keys().chain(a.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    if e.get(k) != a.get(k) {
                        out.push(format!(
                            "{p:?}: {k}: expected {}, got {}",
                            e.get(k).map_or("(none)".into(), |v| v.to_string()),
                            a.get(k).map_or("(none)".into(), |v| v.to_string())
                        ));
                    }
                }
            }
        }
    }
    for (p, _) in &act {
        if !exp_map.contains_key(p.as_str()) {
            out.push(format!("unexpected: {p:?}"));
        }
    }
    let exp_order: Vec<&String> = exp.iter().map(|(p, _)| p).collect();
    let act_order: Vec<&String> = act.iter().map(|(p, _)| p).collect();
    if out.is_empty() && exp_order != act_order {
        out.push("entries are in a different order".into());
    }
    if out.is_empty() && expected != actual {
        out.push("manifests differ outside \"entries\"".into());
    }
    out
}

/// Panic with a readable list of differences (first 50) unless the manifests are equal.
pub fn assert_manifest_eq(expected: &Value, actual: &Value) {
    let d = diff_manifests(expected, actual);
    if !d.is_empty() {
        let shown: Vec<&str> = d.iter().take(50).map(String::as_str).collect();
        panic!("manifests differ ({} differences):\n  {}{}", d.len(), shown.join("\n  "), if d.len() > 50 { "\n  ..." } else { "" });
    }
}
