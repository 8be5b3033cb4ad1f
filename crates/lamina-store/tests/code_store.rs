//! The code store against hostile and ordinary deployment packages, built here with the
//! `zip` crate's writer (and patched by hand where a writer refuses to lie).

use std::collections::HashSet;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lamina_store::code::{CodeError, CodeLimits, CodeStore, StoredCode};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// One entry of a test archive.
enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

fn build_zip(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for entry in entries {
        match entry {
            Entry::File(name, data, mode) => {
                let options = SimpleFileOptions::default()
                    .compression_method(CompressionMethod::Deflated)
                    .unix_permissions(*mode);
                writer.start_file(*name, options).unwrap();
                writer.write_all(data).unwrap();
            }
            Entry::Dir(name) => {
                writer
                    .add_directory(*name, SimpleFileOptions::default())
                    .unwrap();
            }
            Entry::Symlink(name, target) => {
                writer
                    .add_symlink(*name, *target, SimpleFileOptions::default())
                    .unwrap();
            }
        }
    }
    writer.finish().unwrap().into_inner()
}

/// A store at `<tempdir>/store`, so tests can look at what lands beside it.
struct Fixture {
    outer: tempfile::TempDir,
    store: CodeStore,
}

impl Fixture {
    fn new() -> Fixture {
        let outer = tempfile::tempdir().unwrap();
        let store = CodeStore::open(&outer.path().join("store")).unwrap();
        Fixture { outer, store }
    }

    fn root(&self) -> PathBuf {
        self.outer.path().join("store")
    }

    /// Every path under the temp dir, relative to it.
    fn all_paths(&self) -> Vec<PathBuf> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                out.push(path.strip_prefix(base).unwrap().to_path_buf());
                if entry.file_type().unwrap().is_dir() {
                    walk(base, &path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.outer.path(), self.outer.path(), &mut out);
        out.sort();
        out
    }

    /// After a refused upload: the store holds nothing, scratch included, and nothing was
    /// written beside it.
    fn assert_pristine(&self) {
        let expected: Vec<PathBuf> = [
            "store",
            "store/blobs",
            "store/extracted",
            "store/opt",
            "store/tmp",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(self.all_paths(), expected);
    }
}

fn small_limits() -> CodeLimits {
    CodeLimits {
        max_zipped_bytes: 100_000,
        max_unzipped_bytes: 1_000_000,
        max_entries: 100,
    }
}

#[test]
fn round_trip_keeps_content_modes_and_digest() {
    let fixture = Fixture::new();
    let entries = [
        Entry::File("bootstrap", b"#!/bin/sh\necho hi\n", 0o755),
        Entry::File("handler.py", b"def handler(e, c): return 1\n", 0o600),
        Entry::File("setuid-tool", b"binary", 0o4755),
        Entry::Dir("lib/"),
        Entry::File("lib/data/readme.txt", b"nested", 0o644),
        Entry::Symlink("lib/libfoo.so", "/opt/lib/libfoo.so.1"),
        Entry::Symlink("current", "lib/data/readme.txt"),
    ];
    let zip = build_zip(&entries);
    let stored = fixture.store.put_zip(&zip, &CodeLimits::LAMBDA).unwrap();

    let digest: [u8; 32] = Sha256::digest(&zip).into();
    // File contents plus symlink targets.
    let unzipped_size: usize = entries
        .iter()
        .map(|entry| match entry {
            Entry::File(_, data, _) => data.len(),
            Entry::Dir(_) => 0,
            Entry::Symlink(_, target) => target.len(),
        })
        .sum();
    assert_eq!(unzipped_size, 18 + 28 + 6 + 6 + 20 + 19);
    assert_eq!(
        stored,
        StoredCode {
            sha256: digest,
            code_size: zip.len() as u64,
            unzipped_size: unzipped_size as u64,
        }
    );
    let hex = stored.sha256_hex();
    assert_eq!(hex, hex::encode(digest));
    assert_eq!(fixture.store.read_zip(&hex).unwrap(), zip);
    assert_eq!(fs::read(fixture.store.zip_path(&hex)).unwrap(), zip);

    let tree = fixture.store.extracted_dir(&hex).unwrap();
    assert_eq!(tree, fixture.root().join("extracted").join(&hex));
    let mode = |path: &str| {
        fs::symlink_metadata(tree.join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(
        fs::read(tree.join("bootstrap")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(mode("bootstrap"), 0o755);
    assert_eq!(mode("handler.py"), 0o644);
    assert_eq!(mode("setuid-tool"), 0o755, "setuid is never applied");
    assert_eq!(mode("lib"), 0o755);
    assert_eq!(mode("lib/data"), 0o755);
    assert_eq!(
        fs::read(tree.join("lib/data/readme.txt")).unwrap(),
        b"nested"
    );
    // Symlinks stay symlinks with their targets verbatim, absolute ones included.
    assert_eq!(
        fs::read_link(tree.join("lib/libfoo.so")).unwrap(),
        Path::new("/opt/lib/libfoo.so.1")
    );
    assert_eq!(
        fs::read_link(tree.join("current")).unwrap(),
        Path::new("lib/data/readme.txt")
    );
    assert_eq!(fs::read_dir(fixture.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn the_same_zip_is_stored_once() {
    let fixture = Fixture::new();
    let zip = build_zip(&[Entry::File("index.js", b"exports.handler = 1", 0o644)]);
    let first = fixture.store.put_zip(&zip, &CodeLimits::LAMBDA).unwrap();
    let second = fixture.store.put_zip(&zip, &CodeLimits::LAMBDA).unwrap();
    assert_eq!(first, second);
    assert_eq!(
        fs::read_dir(fixture.root().join("blobs")).unwrap().count(),
        1
    );
    assert_eq!(
        fs::read_dir(fixture.root().join("extracted"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(fs::read_dir(fixture.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn a_stored_zip_is_checked_again_against_stricter_limits() {
    let fixture = Fixture::new();
    let zip = build_zip(&[Entry::File("big", &[7u8; 5000], 0o644)]);
    fixture.store.put_zip(&zip, &CodeLimits::LAMBDA).unwrap();
    let strict = CodeLimits {
        max_unzipped_bytes: 4000,
        ..CodeLimits::LAMBDA
    };
    let error = fixture.store.put_zip(&zip, &strict).unwrap_err();
    assert!(
        matches!(error, CodeError::UnzippedTooLarge { limit: 4000 }),
        "{error}"
    );
}

#[test]
fn concurrent_puts_of_one_zip_all_succeed_and_store_it_once() {
    let fixture = Fixture::new();
    let files: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("dir{}/file{i}", i % 7), vec![i as u8; 1000]))
        .collect();
    let entries: Vec<Entry<'_>> = files
        .iter()
        .map(|(name, data)| Entry::File(name, data, 0o644))
        .collect();
    let zip = build_zip(&entries);
    let results: Vec<StoredCode> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| fixture.store.put_zip(&zip, &CodeLimits::LAMBDA).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|pair| pair[0] == pair[1]));
    assert_eq!(
        fs::read_dir(fixture.root().join("blobs")).unwrap().count(),
        1
    );
    assert_eq!(
        fs::read_dir(fixture.root().join("extracted"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(fs::read_dir(fixture.root().join("tmp")).unwrap().count(), 0);
    let tree = fixture
        .store
        .extracted_dir(&results[0].sha256_hex())
        .unwrap();
    assert_eq!(
        fs::read(tree.join("dir3/file10")).unwrap(),
        vec![10u8; 1000]
    );
}

#[test]
fn corrupt_archives_are_refused_and_leave_nothing() {
    let fixture = Fixture::new();
    let good = build_zip(&[
        Entry::File("a.txt", &[b'a'; 3000], 0o644),
        Entry::File("b.txt", &[b'b'; 3000], 0o644),
    ]);
    let mut flipped = good.clone();
    // Inside the compressed data of the first entry: a bad deflate stream or a bad CRC.
    flipped[40] ^= 0xff;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not a zip", b"this is not a zip archive at all".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("damaged data", flipped),
        ("eocd only", {
            let mut eocd = vec![0x50, 0x4b, 0x05, 0x06];
            eocd.extend_from_slice(&[0xff; 18]);
            eocd
        }),
    ];
    for (case, bytes) in cases {
        let error = fixture
            .store
            .put_zip(&bytes, &CodeLimits::LAMBDA)
            .unwrap_err();
        assert!(
            matches!(error, CodeError::CorruptArchive { .. }),
            "{case}: {error}"
        );
        fixture.assert_pristine();
    }
}

#[test]
fn an_empty_body_is_a_corrupt_archive() {
    let fixture = Fixture::new();
    let error = fixture.store.put_zip(&[], &CodeLimits::LAMBDA).unwrap_err();
    assert!(matches!(error, CodeError::CorruptArchive { .. }), "{error}");
    fixture.assert_pristine();
}

#[test]
fn zipped_size_over_the_limit_is_refused_first() {
    let fixture = Fixture::new();
    // Not even a zip: the size check comes before parsing.
    let body = vec![0u8; 100_001];
    let error = fixture.store.put_zip(&body, &small_limits()).unwrap_err();
    assert!(
        matches!(
            error,
            CodeError::ZippedTooLarge {
                size: 100_001,
                limit: 100_000
            }
        ),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "zipped size 100001 bytes exceeds the limit of 100000 bytes"
    );
    fixture.assert_pristine();
}

#[test]
fn a_zip_bomb_is_refused_on_its_declared_size_before_extraction() {
    let fixture = Fixture::new();
    let zeros = vec![0u8; 20_000_000];
    let bomb = build_zip(&[
        Entry::File("small", b"fine", 0o644),
        Entry::File("bomb", &zeros, 0o644),
    ]);
    assert!(
        bomb.len() < 100_000,
        "the bomb compresses to {} bytes",
        bomb.len()
    );
    let error = fixture.store.put_zip(&bomb, &small_limits()).unwrap_err();
    assert!(
        matches!(error, CodeError::UnzippedTooLarge { limit: 1_000_000 }),
        "{error}"
    );
    fixture.assert_pristine();
}

/// Overwrites the declared uncompressed size of every entry, in the local headers and in
/// the central directory, as a lying archive would.
fn patch_declared_sizes(zip: &mut [u8], size: u32) {
    let mut patched = 0;
    let mut at = 0;
    while at + 4 <= zip.len() {
        let offset = match &zip[at..at + 4] {
            [0x50, 0x4b, 0x03, 0x04] => Some(22), // local file header
            [0x50, 0x4b, 0x01, 0x02] => Some(24), // central directory header
            _ => None,
        };
        if let Some(offset) = offset {
            zip[at + offset..at + offset + 4].copy_from_slice(&size.to_le_bytes());
            patched += 1;
        }
        at += 1;
    }
    assert!(patched >= 2, "found {patched} headers to patch");
}

#[test]
fn a_lying_header_cannot_unpack_more_than_the_limit() {
    let fixture = Fixture::new();
    let zeros = vec![0u8; 5_000_000];
    let mut liar = build_zip(&[Entry::File("bomb", &zeros, 0o644)]);
    patch_declared_sizes(&mut liar, 100);
    let error = fixture.store.put_zip(&liar, &small_limits()).unwrap_err();
    // The zip crate stops an entry at its declared size (a corrupt archive); our own
    // byte count across entries would stop it at the limit otherwise. Either way it fails
    // before writing more than the limit, and leaves nothing.
    assert!(
        matches!(
            error,
            CodeError::CorruptArchive { .. } | CodeError::UnzippedTooLarge { .. }
        ),
        "{error}"
    );
    fixture.assert_pristine();
}

#[test]
fn too_many_entries_are_refused() {
    let fixture = Fixture::new();
    let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry<'_>> = names.iter().map(|n| Entry::File(n, b"x", 0o644)).collect();
    let limits = CodeLimits {
        max_entries: 10,
        ..small_limits()
    };
    let error = fixture
        .store
        .put_zip(&build_zip(&entries), &limits)
        .unwrap_err();
    assert!(
        matches!(
            error,
            CodeError::TooManyEntries {
                count: 11,
                limit: 10
            }
        ),
        "{error}"
    );
    fixture.assert_pristine();
    // Exactly at the limit is fine.
    fixture
        .store
        .put_zip(&build_zip(&entries[..10]), &limits)
        .unwrap();
}

#[test]
fn escaping_paths_never_land_outside() {
    let fixture = Fixture::new();
    for name in [
        "../evil",
        "../../evil",
        "/abs/evil",
        "a/../../evil",
        "extracted/../../evil",
        "..\\evil",
    ] {
        let zip = build_zip(&[
            Entry::File("ok.txt", b"fine", 0o644),
            Entry::File(name, b"owned", 0o755),
        ]);
        let error = fixture
            .store
            .put_zip(&zip, &CodeLimits::LAMBDA)
            .unwrap_err();
        assert!(
            matches!(&error, CodeError::UnsafeEntry { name: n, .. } if n == name),
            "{name}: {error}"
        );
        fixture.assert_pristine();
    }
    assert!(!Path::new("/abs/evil").exists());
}

#[test]
fn a_nul_byte_in_a_name_is_refused() {
    let fixture = Fixture::new();
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    writer
        .start_file_with_options(SimpleFileOptions::default().name(b"ok\0../../evil"))
        .unwrap();
    writer.write_all(b"x").unwrap();
    let zip = writer.finish().unwrap().into_inner();
    let error = fixture
        .store
        .put_zip(&zip, &CodeLimits::LAMBDA)
        .unwrap_err();
    assert!(matches!(error, CodeError::UnsafeEntry { .. }), "{error}");
    fixture.assert_pristine();
}

#[test]
fn nothing_is_written_through_a_symlink() {
    let fixture = Fixture::new();
    let victim = fixture.outer.path().join("victim");
    fs::create_dir(&victim).unwrap();
    let victim_str = victim.to_str().unwrap();
    let canary = "lamina-code-store-test-canary";
    let link_file = format!("link/{canary}");
    let cases: Vec<Vec<Entry<'_>>> = vec![
        // The classic: a symlink out, then a file through it.
        vec![
            Entry::Symlink("link", victim_str),
            Entry::File(&link_file, b"owned", 0o644),
        ],
        // The same, pointing at /etc.
        vec![
            Entry::Symlink("link", "/etc"),
            Entry::File(&link_file, b"owned", 0o644),
        ],
        // The file first: order in the archive must not matter.
        vec![
            Entry::File(&link_file, b"owned", 0o644),
            Entry::Symlink("link", victim_str),
        ],
        // A directory entry through the symlink.
        vec![Entry::Symlink("link", victim_str), Entry::Dir("link/sub/")],
        // A symlink through a symlink.
        vec![
            Entry::Symlink("link", victim_str),
            Entry::Symlink(&link_file, "/etc/passwd"),
        ],
        // A duplicate: the same path as a symlink, then as a file.
        vec![
            Entry::Symlink("link", victim_str),
            Entry::File("./link", b"owned", 0o644),
        ],
        vec![Entry::Symlink("link", victim_str), Entry::Dir("link/")],
        // A symlink whose own path escapes.
        vec![Entry::Symlink("../link", "/etc")],
        vec![Entry::Symlink("/tmp/lamina-code-store-test-link", "/etc")],
    ];
    for (number, entries) in cases.iter().enumerate() {
        let error = fixture
            .store
            .put_zip(&build_zip(entries), &CodeLimits::LAMBDA)
            .unwrap_err();
        assert!(
            matches!(error, CodeError::UnsafeEntry { .. }),
            "case {number}: {error}"
        );
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0, "case {number}");
        assert!(!Path::new("/etc").join(canary).exists(), "case {number}");
        assert!(!fixture.outer.path().join("link").exists(), "case {number}");
        assert!(
            fs::symlink_metadata("/tmp/lamina-code-store-test-link").is_err(),
            "case {number}"
        );
    }
    // Nothing but the victim directory beside the (empty) store.
    fs::remove_dir(&victim).unwrap();
    fixture.assert_pristine();
}

#[test]
fn exact_duplicate_names_cannot_write_through_a_symlink() {
    let fixture = Fixture::new();
    let victim = fixture.outer.path().join("victim");
    fs::create_dir(&victim).unwrap();
    // Writers refuse duplicate names, so write `linq` and rename it to `link` in place.
    let mut zip = build_zip(&[
        Entry::Symlink("link", victim.to_str().unwrap()),
        Entry::File("linq", b"owned", 0o644),
    ]);
    let mut renamed = 0;
    for at in 0..zip.len() - 4 {
        if &zip[at..at + 4] == b"linq" {
            zip[at + 3] = b'k';
            renamed += 1;
        }
    }
    assert_eq!(renamed, 2, "local and central header");
    match fixture.store.put_zip(&zip, &CodeLimits::LAMBDA) {
        // The zip crate keeps one record per name: whichever it is, it is written as
        // itself, never through the other.
        Ok(stored) => {
            let tree = fixture.store.extracted_dir(&stored.sha256_hex()).unwrap();
            let kind = fs::symlink_metadata(tree.join("link")).unwrap().file_type();
            assert!(kind.is_file() || kind.is_symlink());
        }
        Err(error) => assert!(
            matches!(
                error,
                CodeError::UnsafeEntry { .. } | CodeError::CorruptArchive { .. }
            ),
            "{error}"
        ),
    }
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
}

#[test]
fn a_symlink_to_a_directory_inside_the_package_is_kept() {
    let fixture = Fixture::new();
    let zip = build_zip(&[
        Entry::File("real/handler.py", b"code", 0o644),
        Entry::Symlink("alias", "real"),
        Entry::Symlink("abs", "/etc"),
    ]);
    let stored = fixture.store.put_zip(&zip, &CodeLimits::LAMBDA).unwrap();
    let tree = fixture.store.extracted_dir(&stored.sha256_hex()).unwrap();
    assert_eq!(
        fs::read_link(tree.join("alias")).unwrap(),
        Path::new("real")
    );
    assert_eq!(fs::read_link(tree.join("abs")).unwrap(), Path::new("/etc"));
    assert_eq!(fs::read(tree.join("alias/handler.py")).unwrap(), b"code");
}

#[test]
fn extracted_dir_unpacks_again_after_deletion() {
    let fixture = Fixture::new();
    let zip = build_zip(&[
        Entry::File("bootstrap", b"#!/bin/sh\n", 0o755),
        Entry::Symlink("lib/link", "/opt/lib/x.so"),
    ]);
    let stored = fixture.store.put_zip(&zip, &CodeLimits::LAMBDA).unwrap();
    let hex = stored.sha256_hex();
    let tree = fixture.store.extracted_dir(&hex).unwrap();
    fs::remove_dir_all(&tree).unwrap();

    assert_eq!(fixture.store.extracted_dir(&hex).unwrap(), tree);
    assert_eq!(fs::read(tree.join("bootstrap")).unwrap(), b"#!/bin/sh\n");
    let mode = fs::metadata(tree.join("bootstrap"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        fs::read_link(tree.join("lib/link")).unwrap(),
        Path::new("/opt/lib/x.so")
    );
    assert_eq!(fs::read_dir(fixture.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn unknown_or_malformed_digests_are_missing_blobs() {
    let fixture = Fixture::new();
    let absent = "0".repeat(64);
    for digest in [absent.as_str(), "../../etc", "", &"A".repeat(64)] {
        let read = fixture.store.read_zip(digest).unwrap_err();
        assert!(
            matches!(read, CodeError::MissingBlob { .. }),
            "{digest}: {read}"
        );
        let dir = fixture.store.extracted_dir(digest).unwrap_err();
        assert!(
            matches!(dir, CodeError::MissingBlob { .. }),
            "{digest}: {dir}"
        );
        assert!(
            fixture
                .store
                .zip_path(digest)
                .starts_with(fixture.root().join("blobs"))
        );
    }
}

#[test]
fn a_damaged_blob_is_not_unpacked() {
    let fixture = Fixture::new();
    let zip = build_zip(&[Entry::File("a", b"a", 0o644)]);
    let hex = fixture
        .store
        .put_zip(&zip, &CodeLimits::LAMBDA)
        .unwrap()
        .sha256_hex();
    fs::remove_dir_all(fixture.root().join("extracted").join(&hex)).unwrap();
    let other = build_zip(&[Entry::File("b", b"b", 0o644)]);
    fs::write(fixture.store.zip_path(&hex), &other).unwrap();
    let error = fixture.store.extracted_dir(&hex).unwrap_err();
    assert!(matches!(error, CodeError::CorruptArchive { .. }), "{error}");
}

#[test]
fn retain_only_removes_what_is_not_referenced() {
    let fixture = Fixture::new();
    let keep = fixture
        .store
        .put_zip(
            &build_zip(&[Entry::File("keep", b"1", 0o644)]),
            &CodeLimits::LAMBDA,
        )
        .unwrap()
        .sha256_hex();
    let drop_both = fixture
        .store
        .put_zip(
            &build_zip(&[Entry::File("drop", b"2", 0o644)]),
            &CodeLimits::LAMBDA,
        )
        .unwrap()
        .sha256_hex();
    let drop_tree_only = fixture
        .store
        .put_zip(
            &build_zip(&[Entry::File("tree", b"3", 0o644)]),
            &CodeLimits::LAMBDA,
        )
        .unwrap()
        .sha256_hex();
    fs::remove_file(fixture.store.zip_path(&drop_tree_only)).unwrap();
    // Something an operator left there is not ours to delete.
    fs::write(fixture.root().join("blobs").join("README"), b"hands off").unwrap();

    let referenced: HashSet<String> = [keep.clone()].into_iter().collect();
    assert_eq!(fixture.store.retain_only(&referenced).unwrap(), 2);

    assert!(fixture.store.read_zip(&keep).is_ok());
    assert!(fixture.root().join("extracted").join(&keep).is_dir());
    for gone in [&drop_both, &drop_tree_only] {
        assert!(matches!(
            fixture.store.read_zip(gone),
            Err(CodeError::MissingBlob { .. })
        ));
        assert!(!fixture.root().join("extracted").join(gone).exists());
    }
    assert!(fixture.root().join("blobs/README").exists());
    assert_eq!(fs::read_dir(fixture.root().join("tmp")).unwrap().count(), 0);
    assert_eq!(fixture.store.retain_only(&referenced).unwrap(), 0);
}

#[test]
fn special_files_and_encrypted_entries_are_refused() {
    let fixture = Fixture::new();
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    // A FIFO: file type 0o010000 in the upper half of the external attributes.
    let fifo = SimpleFileOptions::default().external_attributes((0o010_644) << 16);
    writer.start_file("pipe", fifo).unwrap();
    let zip = writer.finish().unwrap().into_inner();
    let error = fixture
        .store
        .put_zip(&zip, &CodeLimits::LAMBDA)
        .unwrap_err();
    assert!(matches!(error, CodeError::UnsafeEntry { .. }), "{error}");
    fixture.assert_pristine();
}

#[test]
fn layers_merge_in_order_and_never_through_an_earlier_symlink() {
    let fixture = Fixture::new();
    let outside = fixture.outer.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let first = fixture
        .store
        .put_zip(
            &build_zip(&[
                Entry::File("bootstrap", b"#!/bin/sh\n", 0o755),
                Entry::File("lib/a.txt", b"A", 0o644),
                Entry::File("lib/shared.txt", b"from A", 0o644),
                Entry::Symlink("escape", outside.to_str().unwrap()),
                Entry::File("conflict/inner.txt", b"dir in A", 0o644),
                Entry::Symlink("lib/current", "a.txt"),
            ]),
            &CodeLimits::LAMBDA,
        )
        .unwrap();
    let second = fixture
        .store
        .put_zip(
            &build_zip(&[
                Entry::File("lib/shared.txt", b"from B", 0o644),
                // A directory where the first layer has a symlink: written as a real
                // directory, never through the link.
                Entry::File("escape/planted.txt", b"x", 0o644),
                Entry::File("conflict", b"file in B", 0o644),
            ]),
            &CodeLimits::LAMBDA,
        )
        .unwrap();
    let layers = vec![first.sha256_hex(), second.sha256_hex()];
    let opt = fixture.store.opt_dir(&layers).unwrap();
    assert_eq!(
        opt,
        fixture.root().join("opt").join(CodeStore::opt_key(&layers))
    );
    assert_eq!(fs::read(opt.join("lib/shared.txt")).unwrap(), b"from B");
    assert_eq!(fs::read(opt.join("lib/a.txt")).unwrap(), b"A");
    assert_eq!(
        fs::metadata(opt.join("bootstrap"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(opt.join("lib/current")).unwrap(),
        PathBuf::from("a.txt")
    );
    assert!(
        fs::symlink_metadata(opt.join("escape")).unwrap().is_dir(),
        "the later directory replaced the symlink"
    );
    assert_eq!(fs::read(opt.join("escape/planted.txt")).unwrap(), b"x");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing escaped"
    );
    assert_eq!(fs::read(opt.join("conflict")).unwrap(), b"file in B");

    // The other order is another tree; the same order is the same tree.
    let reversed = vec![second.sha256_hex(), first.sha256_hex()];
    let other = fixture.store.opt_dir(&reversed).unwrap();
    assert_ne!(other, opt);
    assert_eq!(fs::read(other.join("lib/shared.txt")).unwrap(), b"from A");
    assert_eq!(fixture.store.opt_dir(&layers).unwrap(), opt);

    // Collection keeps a merged tree only while its key is referenced.
    let mut referenced: HashSet<String> = layers.iter().cloned().collect();
    referenced.insert(CodeStore::opt_key(&layers));
    fixture.store.retain_only(&referenced).unwrap();
    assert!(opt.is_dir());
    assert!(!other.exists());
    // A missing merged tree (or a missing layer tree) is built again from the zips.
    fs::remove_dir_all(fixture.root().join("extracted").join(first.sha256_hex())).unwrap();
    fs::remove_dir_all(&opt).unwrap();
    let rebuilt = fixture.store.opt_dir(&layers).unwrap();
    assert_eq!(fs::read(rebuilt.join("lib/a.txt")).unwrap(), b"A");
    assert_eq!(fs::read_dir(fixture.root().join("tmp")).unwrap().count(), 0);
}
