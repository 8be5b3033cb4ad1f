//! The content-addressed code store: deployment packages (zip archives) as uploaded, and
//! the trees they unpack to, named by the SHA-256 of the zip.
//!
//! # On-disk layout
//!
//! ```text
//! ROOT/
//!   blobs/<sha256hex>.zip      the zip exactly as uploaded; GetFunction serves it
//!   extracted/<sha256hex>/     the unpacked tree, bind-mounted as /var/task
//!   opt/<key>/                 the layers of a function merged in order, bind-mounted as /opt
//!   tmp/                       scratch: half-written blobs and trees, trash being deleted
//! ```
//!
//! An `opt/` tree is named by [`CodeStore::opt_key`], the SHA-256 of the ordered list of
//! layer digests it merges. It is built from the layers' extracted trees, in order, later
//! layers replacing what earlier ones put at the same path (as `/opt` on AWS), and like
//! an extracted tree it is a cache: discarded after an unclean stop, rebuilt on demand.
//!
//! `<sha256hex>` is 64 lower-case hex digits, the SHA-256 of the zip bytes (AWS's
//! `CodeSha256` is the base64 of the same digest). The same zip is stored once however
//! many functions, versions or layers use it; [`CodeStore::retain_only`] collects what
//! nothing references any more.
//!
//! # Durability protocol
//!
//! The server may be killed (`kill -9`) or lose power at any moment, and a restart must
//! find only whole blobs and whole trees under `blobs/` and `extracted/`. So nothing is
//! ever written in place:
//!
//! The zip is the source of truth; an extracted tree is a cache of it. So only the zip is
//! made durable on the upload path, and trees are trusted after a clean shutdown only:
//!
//! 1. The tree is extracted into `tmp/tree-*` and renamed to `extracted/<hex>`, without
//!    flushing: `syncfs(2)` flushes every dirty page of the whole filesystem (tens of
//!    milliseconds, more while anything else writes), and an `fsync` per file costs
//!    milliseconds each and would
//!    make a 20 000-file `node_modules` take a minute.
//! 2. The zip is written to `tmp/blob-*`, fsynced, renamed to `blobs/<hex>.zip`, and
//!    `blobs/` is fsynced.
//! 3. [`CodeStore::mark_clean_shutdown`] flushes the filesystem once and writes a
//!    `clean-shutdown` marker; [`CodeStore::open`] removes it. An open that finds no
//!    marker (a crash, `kill -9`, a power loss) discards every extracted tree, since one
//!    may be torn; [`CodeStore::extracted_dir`] unpacks it again from its zip when an
//!    environment next needs it.
//!
//! [`CodeStore::put_zip`] returns only after the zip is durable, so an acknowledged upload
//! survives a crash. A crash in between leaves at most an unreferenced tree, which
//! [`CodeStore::retain_only`] removes. Deletion goes the same way backwards: a tree is
//! first renamed into `tmp/` and only then removed. [`CodeStore::open`] empties `tmp/`,
//! which is where every interrupted write or delete leaves its remains.
//!
//! # Threat model
//!
//! Zip archives come from users and are hostile until proven otherwise. What is defended:
//!
//! - **Size.** The zipped size is checked before anything else. The sum of the sizes the
//!   archive *declares* is checked before anything is extracted, and the bytes actually
//!   produced are counted while streaming (entries are never read whole into memory), so
//!   a zip bomb or a header that lies about sizes cannot fill the disk or memory. The
//!   number of entries is limited too, to protect inodes.
//! - **Escaping the tree.** An entry whose name is absolute (`/x`, `\x`, `C:x`), contains a
//!   `..` component or a NUL byte, or that `zip`'s `enclosed_name()` does not accept, makes
//!   the whole archive fail with [`CodeError::UnsafeEntry`]. We reject rather than silently
//!   skip or rewrite such entries: no legitimate packaging tool produces them, and a
//!   package that unpacks differently from what its author sees is worse than a clear
//!   error.
//! - **Writing through symlinks.** Lambda preserves symlinks, and layers rely on absolute
//!   ones (`lib/libfoo.so -> /opt/lib/libfoo.so.1`); targets are stored verbatim, because
//!   they are resolved inside the sandbox, never on the host. The danger is an entry
//!   written *through* a symlink on the host (`link -> /etc`, then `link/passwd`). So:
//!   an archive in which any entry's path passes through a symlink or a regular-file entry,
//!   or in which two entries resolve to the same path (other than directories), is refused
//!   before extraction; directories and regular files are created before any symlink;
//!   files are opened with `O_CREAT|O_EXCL` (which never follows a symlink) and every
//!   parent directory is checked with `lstat` to be a real directory we created. The
//!   filesystem checks would stop an escape even if the up-front check had a gap.
//!   Exact duplicate names are collapsed by the `zip` crate (the later central-directory
//!   record wins) and go through the same checks.
//! - **Permissions.** Files with any executable bit become 0755, other files 0644, and
//!   directories 0755, set explicitly (independent of the umask). Setuid, setgid and
//!   sticky bits and owners are never applied. Device, FIFO and socket entries are
//!   refused.
//!
//! Not defended here: what the function does with its own tree inside the sandbox. Host
//! code must never follow symlinks inside an extracted tree (to copy it, serve it or
//! `chown` it): their targets are meant for the sandbox's filesystem view.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Cursor, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use zip::ZipArchive;
use zip::read::ZipFileEntry;

const BLOBS_DIR: &str = "blobs";
const EXTRACTED_DIR: &str = "extracted";
const OPT_DIR: &str = "opt";
const SCRATCH_DIR: &str = "tmp";
const CLEAN_MARKER: &str = "clean-shutdown";

/// The longest symlink target accepted: `PATH_MAX` less the terminating NUL.
const MAX_SYMLINK_TARGET: u64 = 4095;
/// The longest single path component Linux file systems accept (`NAME_MAX`).
const MAX_NAME_COMPONENT: usize = 255;
/// The longest entry path accepted, leaving room under `PATH_MAX` for the store's root.
const MAX_ENTRY_PATH: usize = 3072;
/// Buffer between the decompressor and the file being written.
const WRITE_BUFFER: usize = 256 * 1024;

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

const DIR_MODE: u32 = 0o755;
const EXECUTABLE_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

/// Limits a deployment package must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLimits {
    /// Largest zip accepted, in bytes.
    pub max_zipped_bytes: u64,
    /// Largest total of the unpacked entries, declared and actual, in bytes.
    pub max_unzipped_bytes: u64,
    /// Most entries (files, directories, symlinks) an archive may hold.
    pub max_entries: u64,
}

impl CodeLimits {
    /// AWS Lambda's quotas for a zip uploaded directly: 50 MB zipped, 250 MB unzipped.
    /// Lambda documents no entry limit; 100 000 is far above real packages (a large
    /// `node_modules` has some 20 000 files) and keeps a package from exhausting inodes.
    pub const LAMBDA: CodeLimits = CodeLimits {
        max_zipped_bytes: 52_428_800,
        max_unzipped_bytes: 262_144_000,
        max_entries: 100_000,
    };
}

impl Default for CodeLimits {
    fn default() -> Self {
        Self::LAMBDA
    }
}

/// What [`CodeStore::put_zip`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredCode {
    /// SHA-256 of the zip bytes; AWS's `CodeSha256` is its base64.
    pub sha256: [u8; 32],
    /// Size of the zip in bytes (AWS's `CodeSize`).
    pub code_size: u64,
    /// Bytes the archive unpacked to: regular file contents plus symlink targets.
    pub unzipped_size: u64,
}

impl StoredCode {
    /// The digest as 64 lower-case hex digits, the name under which the code is stored.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Why the code store refused a package or failed.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The zip is larger than [`CodeLimits::max_zipped_bytes`].
    #[error("zipped size {size} bytes exceeds the limit of {limit} bytes")]
    ZippedTooLarge { size: u64, limit: u64 },
    /// The entries declare, or actually unpack to, more than
    /// [`CodeLimits::max_unzipped_bytes`].
    #[error("unzipped size exceeds the limit of {limit} bytes")]
    UnzippedTooLarge { limit: u64 },
    /// The archive has more entries than [`CodeLimits::max_entries`].
    #[error("the archive has {count} entries, more than the limit of {limit}")]
    TooManyEntries { count: u64, limit: u64 },
    /// The bytes are not a readable zip archive (or use encryption or an unsupported
    /// compression method).
    #[error("could not unzip the archive: {detail}")]
    CorruptArchive { detail: String },
    /// An entry would escape the extraction directory, write through a symlink, collide
    /// with another entry, or is of a kind a package cannot hold.
    #[error("archive entry {name:?} is unsafe: {why}")]
    UnsafeEntry { name: String, why: &'static str },
    /// No blob is stored under this digest (or it is not a digest at all).
    #[error("no stored code has sha256 {sha256_hex:?}")]
    MissingBlob { sha256_hex: String },
    /// The file system failed.
    #[error("i/o error on {path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CodeError + '_ {
    move |source| CodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(error: impl std::fmt::Display) -> CodeError {
    CodeError::CorruptArchive {
        detail: error.to_string(),
    }
}

/// The content-addressed store of deployment packages under one root directory.
///
/// One `CodeStore` per root: [`CodeStore::open`] empties the scratch directory, so a
/// second store opened on a root in use would delete the first one's writes in progress.
/// Its methods may be called from several threads at once, the same zip included.
#[derive(Debug)]
pub struct CodeStore {
    blobs: PathBuf,
    extracted: PathBuf,
    opt: PathBuf,
    scratch: PathBuf,
    /// Present only between a clean shutdown and the next open.
    clean_marker: PathBuf,
}

/// Makes scratch names unique within this process; [`CodeStore::open`] empties the
/// scratch directory, so names from an earlier run never collide.
static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

impl CodeStore {
    /// Opens (creating if needed) the store under `root`, and removes whatever interrupted
    /// writes and deletions left in its scratch directory. After an unclean stop it also
    /// discards the extracted trees, which were not flushed (they are unpacked again on
    /// demand).
    pub fn open(root: &Path) -> Result<CodeStore, CodeError> {
        let store = CodeStore {
            blobs: root.join(BLOBS_DIR),
            extracted: root.join(EXTRACTED_DIR),
            opt: root.join(OPT_DIR),
            scratch: root.join(SCRATCH_DIR),
            clean_marker: root.join(CLEAN_MARKER),
        };
        for dir in [&store.blobs, &store.extracted, &store.opt, &store.scratch] {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        let was_clean = store.clean_marker.exists();
        if was_clean {
            // From here on a crash must be detectable: the marker goes before any write.
            fs::remove_file(&store.clean_marker).map_err(io_error(&store.clean_marker))?;
            fsync_dir(root)?;
        } else {
            let mut discarded = 0usize;
            for trees in [&store.extracted, &store.opt] {
                for entry in fs::read_dir(trees).map_err(io_error(trees))? {
                    let entry = entry.map_err(io_error(trees))?;
                    let trash = store.scratch_path("trash");
                    fs::rename(entry.path(), &trash).map_err(io_error(&entry.path()))?;
                    discarded += 1;
                }
            }
            if discarded > 0 {
                tracing::info!(
                    discarded,
                    "the last stop was not clean: extracted code trees will be unpacked again from their zips"
                );
            }
        }
        let mut removed = 0usize;
        for entry in fs::read_dir(&store.scratch).map_err(io_error(&store.scratch))? {
            let entry = entry.map_err(io_error(&store.scratch))?;
            let path = entry.path();
            // `file_type` does not follow symlinks, and `remove_dir_all` never follows them.
            let is_dir = entry.file_type().map_err(io_error(&path))?.is_dir();
            let result = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result.map_err(io_error(&path))?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(
                scratch = %store.scratch.display(),
                removed,
                "removed leftovers of interrupted code store writes"
            );
        }
        Ok(store)
    }

    /// Flushes the extracted trees and records a clean stop, so that the next
    /// [`CodeStore::open`] keeps them. Call once nothing writes to the store any more.
    pub fn mark_clean_shutdown(&self) -> Result<(), CodeError> {
        sync_tree(&self.extracted)?;
        sync_tree(&self.opt)?;
        let marker = File::create(&self.clean_marker).map_err(io_error(&self.clean_marker))?;
        marker.sync_all().map_err(io_error(&self.clean_marker))?;
        match self.clean_marker.parent() {
            Some(root) => fsync_dir(root),
            None => Ok(()),
        }
    }

    /// Validates, unpacks and stores a deployment package; see the module documentation
    /// for what is refused. Returns once the zip is durable and its tree unpacked. Storing a
    /// zip already present validates it against `limits` again but writes nothing new.
    pub fn put_zip(&self, zip: &[u8], limits: &CodeLimits) -> Result<StoredCode, CodeError> {
        let code_size = zip.len() as u64;
        if code_size > limits.max_zipped_bytes {
            return Err(CodeError::ZippedTooLarge {
                size: code_size,
                limit: limits.max_zipped_bytes,
            });
        }
        if zip.is_empty() {
            return Err(CodeError::CorruptArchive {
                detail: "the archive is empty (0 bytes)".to_owned(),
            });
        }
        let sha256: [u8; 32] = Sha256::digest(zip).into();
        let sha256_hex = hex::encode(sha256);
        let unzipped_size = self.materialize_tree(&sha256_hex, zip, limits)?;
        self.write_blob(&sha256_hex, zip)?;
        tracing::debug!(sha256 = %sha256_hex, code_size, unzipped_size, "stored code");
        Ok(StoredCode {
            sha256,
            code_size,
            unzipped_size,
        })
    }

    /// Where the zip with this digest is (or would be) stored. A string that is not a
    /// lower-case hex SHA-256 maps to a name in `blobs/` that is never written, so no
    /// argument can name a file outside the store.
    pub fn zip_path(&self, sha256_hex: &str) -> PathBuf {
        if is_digest(sha256_hex) {
            self.blobs.join(format!("{sha256_hex}.zip"))
        } else {
            self.blobs.join("not-a-sha256-digest")
        }
    }

    /// The stored zip with this digest.
    pub fn read_zip(&self, sha256_hex: &str) -> Result<Vec<u8>, CodeError> {
        let missing = || CodeError::MissingBlob {
            sha256_hex: sha256_hex.to_owned(),
        };
        if !is_digest(sha256_hex) {
            return Err(missing());
        }
        let path = self.zip_path(sha256_hex);
        match fs::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Err(missing()),
            Err(error) => Err(io_error(&path)(error)),
        }
    }

    /// The unpacked tree of the zip with this digest, unpacked again from the stored zip
    /// (under [`CodeLimits::LAMBDA`]) if the tree is missing, e.g. removed by an operator.
    pub fn extracted_dir(&self, sha256_hex: &str) -> Result<PathBuf, CodeError> {
        if !is_digest(sha256_hex) {
            return Err(CodeError::MissingBlob {
                sha256_hex: sha256_hex.to_owned(),
            });
        }
        let dir = self.extracted.join(sha256_hex);
        if is_real_dir(&dir) {
            return Ok(dir);
        }
        let zip = self.read_zip(sha256_hex)?;
        let actual = hex::encode(Sha256::digest(&zip));
        if actual != sha256_hex {
            return Err(CodeError::CorruptArchive {
                detail: format!(
                    "the stored blob {sha256_hex}.zip has sha256 {actual}; the blob store is damaged"
                ),
            });
        }
        tracing::info!(sha256 = %sha256_hex, "re-extracting missing code tree");
        self.materialize_tree(sha256_hex, &zip, &CodeLimits::LAMBDA)?;
        Ok(dir)
    }

    /// The name of the merged `/opt` tree of these layers, in this order.
    pub fn opt_key(layer_sha256_hex: &[String]) -> String {
        hex::encode(Sha256::digest(layer_sha256_hex.join("\n")))
    }

    /// The merged tree of these layers (digests of stored zips, in the function's order):
    /// each layer's extracted tree copied over the previous ones, a later layer replacing
    /// whatever an earlier one put at the same path. Built once per list and kept; files
    /// are hard links into the layers' own trees where the file system allows.
    pub fn opt_dir(&self, layer_sha256_hex: &[String]) -> Result<PathBuf, CodeError> {
        let target = self.opt.join(Self::opt_key(layer_sha256_hex));
        if is_real_dir(&target) {
            return Ok(target);
        }
        let scratch = ScratchGuard::new(self.scratch_path("opt"));
        fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(scratch.path())
            .map_err(io_error(scratch.path()))?;
        set_mode(scratch.path(), DIR_MODE)?;
        for sha256_hex in layer_sha256_hex {
            let layer = self.extracted_dir(sha256_hex)?;
            merge_tree(&layer, scratch.path())?;
        }
        // Not flushed: like an extracted tree, a cache discarded after an unclean stop.
        match fs::rename(scratch.path(), &target) {
            Ok(()) => scratch.disarm(),
            // A concurrent start built the same tree first; ours goes with the guard.
            Err(_) if is_real_dir(&target) => {}
            Err(error) => return Err(io_error(&target)(error)),
        }
        tracing::debug!(layers = layer_sha256_hex.len(), path = %target.display(), "merged layers");
        Ok(target)
    }

    /// Removes every blob and tree whose digest (lower-case hex) is not in `referenced`,
    /// and returns how many digests lost their blob or tree. Merged `/opt` trees are kept
    /// when their [`CodeStore::opt_key`] is in `referenced`.
    ///
    /// The caller must make sure no upload runs between computing `referenced` and this
    /// call returning: a zip stored but not yet recorded in the metadata looks unreferenced.
    pub fn retain_only(&self, referenced: &HashSet<String>) -> Result<usize, CodeError> {
        let mut removed: HashSet<String> = HashSet::new();
        for entry in fs::read_dir(&self.blobs).map_err(io_error(&self.blobs))? {
            let entry = entry.map_err(io_error(&self.blobs))?;
            let file_name = entry.file_name();
            let Some(digest) = file_name
                .to_str()
                .and_then(|name| name.strip_suffix(".zip"))
                .filter(|digest| is_digest(digest))
            else {
                continue;
            };
            if referenced.contains(digest) {
                continue;
            }
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error(&path)(error)),
            }
            removed.insert(digest.to_owned());
        }
        let trees = fs::read_dir(&self.extracted)
            .map_err(io_error(&self.extracted))?
            .chain(fs::read_dir(&self.opt).map_err(io_error(&self.opt))?);
        for entry in trees {
            let entry = entry.map_err(io_error(&self.extracted))?;
            let file_name = entry.file_name();
            let Some(digest) = file_name.to_str().filter(|digest| is_digest(digest)) else {
                continue;
            };
            if referenced.contains(digest) {
                continue;
            }
            // Renamed away first, so a crash mid-deletion leaves no partial tree behind.
            let trash = self.scratch_path("trash");
            match fs::rename(entry.path(), &trash) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(io_error(&entry.path())(error)),
            }
            if let Err(error) = fs::remove_dir_all(&trash) {
                // Harmless: `open` empties the scratch directory.
                tracing::warn!(path = %trash.display(), %error, "could not remove a collected code tree");
            }
            removed.insert(digest.to_owned());
        }
        if !removed.is_empty() {
            tracing::info!(removed = removed.len(), "collected unreferenced code");
        }
        Ok(removed.len())
    }

    /// Makes sure `extracted/<sha256_hex>` holds the tree of `zip`, validating the archive
    /// against `limits` either way. Returns the unzipped size.
    fn materialize_tree(
        &self,
        sha256_hex: &str,
        zip: &[u8],
        limits: &CodeLimits,
    ) -> Result<u64, CodeError> {
        let mut archive = ZipArchive::new(Cursor::new(zip)).map_err(corrupt)?;
        let plan = plan_extraction(&archive, limits)?;
        let target = self.extracted.join(sha256_hex);
        if is_real_dir(&target) {
            // Same bytes, already unpacked: only check them against these limits. The
            // directory sync covers a concurrent put that renamed it but has not synced.
            let unzipped_size = unpack(&mut archive, &plan, limits, None)?;
            return Ok(unzipped_size);
        }
        let scratch = ScratchGuard::new(self.scratch_path("tree"));
        fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(scratch.path())
            .map_err(io_error(scratch.path()))?;
        set_mode(scratch.path(), DIR_MODE)?;
        let unzipped_size = unpack(&mut archive, &plan, limits, Some(scratch.path()))?;
        // Not flushed: a tree is a cache of its zip, discarded after an unclean stop.
        match fs::rename(scratch.path(), &target) {
            Ok(()) => scratch.disarm(),
            // A concurrent put of the same zip won the race; ours is dropped with the guard.
            Err(_) if is_real_dir(&target) => {}
            Err(error) => return Err(io_error(&target)(error)),
        }
        Ok(unzipped_size)
    }

    fn write_blob(&self, sha256_hex: &str, zip: &[u8]) -> Result<(), CodeError> {
        let path = self.zip_path(sha256_hex);
        // Blobs only ever appear by rename of a synced file, so one that exists is whole.
        let present = fs::symlink_metadata(&path)
            .is_ok_and(|meta| meta.is_file() && meta.len() == zip.len() as u64);
        if !present {
            let scratch = ScratchGuard::new(self.scratch_path("blob"));
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(scratch.path())
                .map_err(io_error(scratch.path()))?;
            file.write_all(zip).map_err(io_error(scratch.path()))?;
            file.sync_all().map_err(io_error(scratch.path()))?;
            drop(file);
            fs::rename(scratch.path(), &path).map_err(io_error(&path))?;
            scratch.disarm();
        }
        fsync_dir(&self.blobs)
    }

    fn scratch_path(&self, kind: &str) -> PathBuf {
        let serial = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.scratch
            .join(format!("{kind}-{}-{serial}", std::process::id()))
    }
}

/// Copies the tree `from` (an extracted layer) over `into`, never following a symlink on
/// either side: a directory merges into a directory; anything else replaces what is at its
/// path (a directory included). Every directory on the way is one this merge created or
/// checked to be real, so a symlink an earlier layer left cannot redirect a later write.
fn merge_tree(from: &Path, into: &Path) -> Result<(), CodeError> {
    for entry in fs::read_dir(from).map_err(io_error(from))? {
        let entry = entry.map_err(io_error(from))?;
        let source = entry.path();
        let target = into.join(entry.file_name());
        let kind = entry.file_type().map_err(io_error(&source))?;
        let existing = fs::symlink_metadata(&target).ok();
        if kind.is_dir() {
            match existing {
                Some(meta) if meta.is_dir() => {}
                Some(_) => {
                    fs::remove_file(&target).map_err(io_error(&target))?;
                    make_dir(&target)?;
                }
                None => make_dir(&target)?,
            }
            merge_tree(&source, &target)?;
            continue;
        }
        match existing {
            Some(meta) if meta.is_dir() => {
                fs::remove_dir_all(&target).map_err(io_error(&target))?
            }
            Some(_) => fs::remove_file(&target).map_err(io_error(&target))?,
            None => {}
        }
        if kind.is_symlink() {
            let link = fs::read_link(&source).map_err(io_error(&source))?;
            std::os::unix::fs::symlink(&link, &target).map_err(io_error(&target))?;
        } else if kind.is_file() {
            // A hard link shares the (read-only, never rewritten) file with the layer's own
            // tree; across file systems it is a copy.
            if fs::hard_link(&source, &target).is_err() {
                fs::copy(&source, &target).map_err(io_error(&target))?;
            }
        }
        // Nothing else can be in an extracted tree: extraction refuses other kinds.
    }
    Ok(())
}

fn make_dir(path: &Path) -> Result<(), CodeError> {
    fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(path)
        .map_err(io_error(path))?;
    set_mode(path, DIR_MODE)
}

fn is_digest(candidate: &str) -> bool {
    candidate.len() == 64
        && candidate
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// A directory, and not a symlink to one.
fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CodeError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error(path))
}

fn fsync_dir(dir: &Path) -> Result<(), CodeError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(dir))
}

/// Makes everything written under `dir` durable.
#[cfg(target_os = "linux")]
fn sync_tree(dir: &Path) -> Result<(), CodeError> {
    use std::os::fd::AsRawFd;

    let handle = File::open(dir).map_err(io_error(dir))?;
    if syncfs::syncfs(handle.as_raw_fd()) != 0 {
        return Err(io_error(dir)(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
mod syncfs {
    // SAFETY: declares `int syncfs(int fd)` from the C library std already links (glibc
    // 2.14+, musl), with its exact C signature. It takes no pointers and touches no memory
    // of ours, so any argument is sound (a bad descriptor is just EBADF): that is why it is
    // declared `safe`. std offers no syncfs, and an fsync per file is far too slow.
    unsafe extern "C" {
        pub(super) safe fn syncfs(fd: std::ffi::c_int) -> std::ffi::c_int;
    }
}

/// Makes everything written under `dir` durable, one fsync per file and directory.
#[cfg(not(target_os = "linux"))]
fn sync_tree(dir: &Path) -> Result<(), CodeError> {
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_error(&path))?;
        if file_type.is_dir() {
            sync_tree(&path)?;
        } else if file_type.is_file() {
            File::open(&path)
                .and_then(|file| file.sync_all())
                .map_err(io_error(&path))?;
        }
    }
    fsync_dir(dir)
}

/// Removes a scratch file or directory when dropped, unless it was renamed into place.
struct ScratchGuard {
    path: PathBuf,
    armed: bool,
}

impl ScratchGuard {
    fn new(path: PathBuf) -> Self {
        ScratchGuard { path, armed: true }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let result = match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&self.path),
            Ok(_) => fs::remove_file(&self.path),
            Err(_) => return,
        };
        if let Err(error) = result {
            // `open` removes it on the next start.
            tracing::warn!(path = %self.path.display(), %error, "could not remove scratch");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Dir,
    File { executable: bool },
    Symlink,
}

impl EntryKind {
    /// Extraction order: every directory and file exists before the first symlink does.
    fn rank(self) -> u8 {
        match self {
            EntryKind::Dir => 0,
            EntryKind::File { .. } => 1,
            EntryKind::Symlink => 2,
        }
    }
}

#[derive(Debug)]
struct PlannedEntry {
    index: usize,
    name: String,
    path: PathBuf,
    kind: EntryKind,
}

/// What [`plan_extraction`] found the archive to hold, in extraction order.
#[derive(Debug)]
struct Plan {
    entries: Vec<PlannedEntry>,
}

/// Checks everything that can be checked from the central directory alone: entry count,
/// declared sizes, names, kinds, and that no entry's path collides with or runs through
/// another entry that is not a directory.
fn plan_extraction(
    archive: &ZipArchive<Cursor<&[u8]>>,
    limits: &CodeLimits,
) -> Result<Plan, CodeError> {
    let count = archive.len() as u64;
    if count > limits.max_entries {
        return Err(CodeError::TooManyEntries {
            count,
            limit: limits.max_entries,
        });
    }
    let mut declared_size = 0u64;
    for index in 0..archive.len() {
        let entry = archive.by_index_data(index).map_err(corrupt)?;
        declared_size = declared_size.saturating_add(entry.size());
    }
    if declared_size > limits.max_unzipped_bytes {
        return Err(CodeError::UnzippedTooLarge {
            limit: limits.max_unzipped_bytes,
        });
    }

    let mut entries = Vec::with_capacity(archive.len());
    let mut kinds: HashMap<PathBuf, EntryKind> = HashMap::with_capacity(archive.len());
    for index in 0..archive.len() {
        let entry = archive.by_index_data(index).map_err(corrupt)?;
        let name = display_name(&entry);
        if entry.encrypted() {
            return Err(CodeError::CorruptArchive {
                detail: format!("entry {name:?} is encrypted"),
            });
        }
        let path = enclosed_path(&entry, &name)?;
        let kind = entry_kind(&entry, &name)?;
        if path.as_os_str().is_empty() {
            if kind == EntryKind::Dir {
                continue; // `./`: the extraction directory itself.
            }
            return Err(unsafe_entry(
                name,
                "it names the extraction directory itself",
            ));
        }
        for ancestor in path.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            match kinds.get(ancestor) {
                None => {
                    kinds.insert(ancestor.to_path_buf(), EntryKind::Dir);
                }
                Some(EntryKind::Dir) => {}
                Some(_) => {
                    return Err(unsafe_entry(
                        name,
                        "its path runs through another entry that is a file or symlink",
                    ));
                }
            }
        }
        match kinds.get(&path) {
            None => {
                kinds.insert(path.clone(), kind);
            }
            Some(EntryKind::Dir) if kind == EntryKind::Dir => {}
            Some(_) => {
                return Err(unsafe_entry(
                    name,
                    "another entry has the same path and is not a directory",
                ));
            }
        }
        entries.push(PlannedEntry {
            index,
            name,
            path,
            kind,
        });
    }
    entries.sort_by_key(|entry| entry.kind.rank());
    Ok(Plan { entries })
}

fn unsafe_entry(name: String, why: &'static str) -> CodeError {
    CodeError::UnsafeEntry { name, why }
}

fn display_name(entry: &ZipFileEntry<'_>) -> String {
    match entry.name() {
        Ok(name) => name.into_owned(),
        Err(_) => String::from_utf8_lossy(entry.name_raw()).into_owned(),
    }
}

/// The entry's path relative to the extraction directory, made only of normal
/// components; anything absolute, with `..`, or otherwise odd is refused.
fn enclosed_path(entry: &ZipFileEntry<'_>, name: &str) -> Result<PathBuf, CodeError> {
    if entry.name_raw().contains(&0) {
        return Err(unsafe_entry(
            name.to_owned(),
            "its name contains a NUL byte",
        ));
    }
    let decoded = entry.name().map_err(corrupt)?;
    let bytes = decoded.as_bytes();
    let has_drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if decoded.starts_with(['/', '\\']) || has_drive {
        return Err(unsafe_entry(name.to_owned(), "its path is absolute"));
    }
    if decoded
        .split(['/', '\\'])
        .any(|component| component == "..")
    {
        return Err(unsafe_entry(name.to_owned(), "its path contains `..`"));
    }
    let Some(enclosed) = entry.enclosed_name() else {
        return Err(unsafe_entry(
            name.to_owned(),
            "its path escapes the extraction directory",
        ));
    };
    for component in enclosed.components() {
        match component {
            Component::Normal(part) if part.len() <= MAX_NAME_COMPONENT => {}
            Component::Normal(_) => {
                return Err(unsafe_entry(
                    name.to_owned(),
                    "a component of its path is longer than 255 bytes",
                ));
            }
            _ => {
                return Err(unsafe_entry(
                    name.to_owned(),
                    "its path escapes the extraction directory",
                ));
            }
        }
    }
    if enclosed.as_os_str().len() > MAX_ENTRY_PATH {
        return Err(unsafe_entry(
            name.to_owned(),
            "its path is longer than 3072 bytes",
        ));
    }
    Ok(enclosed)
}

fn entry_kind(entry: &ZipFileEntry<'_>, name: &str) -> Result<EntryKind, CodeError> {
    let mode = entry.unix_mode().unwrap_or(0);
    let file_type = mode & S_IFMT;
    if entry.is_dir() || file_type == S_IFDIR {
        return Ok(EntryKind::Dir);
    }
    match file_type {
        S_IFLNK => Ok(EntryKind::Symlink),
        0 | S_IFREG => Ok(EntryKind::File {
            executable: mode & 0o111 != 0,
        }),
        _ => Err(unsafe_entry(
            name.to_owned(),
            "it is a device, FIFO or socket, which a package cannot contain",
        )),
    }
}

/// Streams the planned entries into `into` (a fresh directory), or only decompresses and
/// counts them when `into` is `None`. Returns the bytes produced.
fn unpack(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    plan: &Plan,
    limits: &CodeLimits,
    into: Option<&Path>,
) -> Result<u64, CodeError> {
    let mut budget = UnzippedBudget {
        used: 0,
        limit: limits.max_unzipped_bytes,
    };
    for entry in &plan.entries {
        let destination = into.map(|root| root.join(&entry.path));
        match entry.kind {
            EntryKind::Dir => {
                if let Some(root) = into {
                    ensure_dir(root, &entry.path, &entry.name)?;
                }
            }
            EntryKind::File { executable } => {
                let mut reader = archive.by_index(entry.index).map_err(corrupt)?;
                let (Some(root), Some(path)) = (into, destination) else {
                    copy_counted(
                        &mut reader,
                        io::sink(),
                        &mut budget,
                        &entry.name,
                        Path::new(""),
                    )?;
                    continue;
                };
                if let Some(parent) = entry.path.parent() {
                    ensure_dir(root, parent, &entry.name)?;
                }
                let mode = if executable {
                    EXECUTABLE_MODE
                } else {
                    FILE_MODE
                };
                // `create_new` is O_CREAT|O_EXCL: it fails on any existing name, symlinks
                // included, and never follows one.
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(|error| collision_or_io(error, &entry.name, &path))?;
                let writer = BufWriter::with_capacity(WRITE_BUFFER, file);
                let writer = copy_counted(&mut reader, writer, &mut budget, &entry.name, &path)?;
                let file = writer
                    .into_inner()
                    .map_err(|error| io_error(&path)(error.into_error()))?;
                // Explicit, so the umask cannot take bits away.
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_error(&path))?;
            }
            EntryKind::Symlink => {
                let reader = archive.by_index(entry.index).map_err(corrupt)?;
                let mut limited = reader.take(MAX_SYMLINK_TARGET + 1);
                let target = copy_counted(
                    &mut limited,
                    Vec::new(),
                    &mut budget,
                    &entry.name,
                    Path::new(""),
                )?;
                if target.len() as u64 > MAX_SYMLINK_TARGET {
                    return Err(unsafe_entry(
                        entry.name.clone(),
                        "its symlink target is longer than 4095 bytes",
                    ));
                }
                if target.is_empty() || target.contains(&0) {
                    return Err(unsafe_entry(
                        entry.name.clone(),
                        "its symlink target is empty or contains a NUL byte",
                    ));
                }
                let (Some(root), Some(path)) = (into, destination) else {
                    continue;
                };
                if let Some(parent) = entry.path.parent() {
                    ensure_dir(root, parent, &entry.name)?;
                }
                // symlink(2) fails on any existing name and does not follow it.
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|error| collision_or_io(error, &entry.name, &path))?;
            }
        }
    }
    Ok(budget.used)
}

fn collision_or_io(error: io::Error, name: &str, path: &Path) -> CodeError {
    if error.kind() == io::ErrorKind::AlreadyExists {
        unsafe_entry(name.to_owned(), "another entry already has its path")
    } else {
        io_error(path)(error)
    }
}

/// Creates `root/relative` and its missing parents as real directories, refusing to
/// pass through anything that is not one (a symlink above all). Nothing but this
/// extraction writes into `root`, so what `lstat` sees cannot change under us.
fn ensure_dir(root: &Path, relative: &Path, name: &str) -> Result<(), CodeError> {
    let mut current = root.to_path_buf();
    for component in relative.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(unsafe_entry(
                    name.to_owned(),
                    "its path runs through a file or symlink",
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(DIR_MODE)
                    .create(&current)
                    .map_err(io_error(&current))?;
                set_mode(&current, DIR_MODE)?;
            }
            Err(error) => return Err(io_error(&current)(error)),
        }
    }
    Ok(())
}

/// The unzipped bytes produced so far, across all entries, and how many are allowed.
#[derive(Debug)]
struct UnzippedBudget {
    used: u64,
    limit: u64,
}

/// A writer that counts every byte against the budget and refuses the write that would
/// overrun it, remembering why it failed so that [`copy_counted`] can tell a full budget
/// and a failing disk from a broken archive.
struct BudgetWriter<'b, W> {
    inner: W,
    budget: &'b mut UnzippedBudget,
    exceeded: bool,
    write_error: Option<io::Error>,
}

impl<W: Write> Write for BudgetWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget.used.saturating_add(buf.len() as u64) > self.budget.limit {
            self.exceeded = true;
            return Err(io::Error::other("unzipped size limit exceeded"));
        }
        match self.inner.write(buf) {
            Ok(written) => {
                self.budget.used += written as u64;
                Ok(written)
            }
            Err(error) => Err(self.remember(error)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|error| self.remember(error))
    }
}

impl<W> BudgetWriter<'_, W> {
    fn remember(&mut self, error: io::Error) -> io::Error {
        let kind = error.kind();
        if kind != io::ErrorKind::Interrupted {
            self.write_error = Some(error);
        }
        io::Error::new(kind, "write failed")
    }
}

/// Streams `reader` into `writer` through a [`BudgetWriter`]; returns the writer.
/// Errors reading are the archive's fault, errors writing the file system's.
fn copy_counted<R: Read, W: Write>(
    reader: &mut R,
    writer: W,
    budget: &mut UnzippedBudget,
    name: &str,
    path: &Path,
) -> Result<W, CodeError> {
    let limit = budget.limit;
    let mut counted = BudgetWriter {
        inner: writer,
        budget,
        exceeded: false,
        write_error: None,
    };
    match io::copy(reader, &mut counted) {
        Ok(_) => Ok(counted.inner),
        Err(_) if counted.exceeded => Err(CodeError::UnzippedTooLarge { limit }),
        Err(error) => match counted.write_error.take() {
            Some(write_error) => Err(io_error(path)(write_error)),
            None => Err(CodeError::CorruptArchive {
                detail: format!("entry {name:?}: {error}"),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn zip_with(names: &[&str]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for name in names {
            writer
                .start_file(*name, SimpleFileOptions::default())
                .unwrap();
            writer.write_all(b"x").unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    fn plan_of(zip: &[u8]) -> Result<Plan, CodeError> {
        let archive = ZipArchive::new(Cursor::new(zip)).unwrap();
        plan_extraction(&archive, &CodeLimits::LAMBDA)
    }

    #[test]
    fn odd_but_safe_names_are_normalized() {
        let plan = plan_of(&zip_with(&["./a/b", "c//d", "e\\f"])).unwrap();
        let paths: Vec<_> = plan.entries.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("a/b"),
                PathBuf::from("c/d"),
                PathBuf::from("e/f")
            ]
        );
    }

    #[test]
    fn escaping_names_are_refused() {
        for name in [
            "../evil",
            "/abs/evil",
            "a/../../evil",
            "a/../b",
            "..\\evil",
            "\\abs\\evil",
            "C:/evil",
            "c:evil",
            "a/./../../evil",
        ] {
            let error = plan_of(&zip_with(&[name])).unwrap_err();
            assert!(
                matches!(&error, CodeError::UnsafeEntry { name: n, .. } if n == name),
                "{name}: {error}"
            );
        }
    }

    #[test]
    fn normalized_duplicates_are_refused() {
        let error = plan_of(&zip_with(&["a/b", "a//b"])).unwrap_err();
        assert!(matches!(error, CodeError::UnsafeEntry { .. }), "{error}");
    }

    #[test]
    fn a_file_cannot_also_be_a_parent_directory() {
        for names in [["a", "a/b"], ["a/b", "a"]] {
            let error = plan_of(&zip_with(&names)).unwrap_err();
            assert!(matches!(error, CodeError::UnsafeEntry { .. }), "{error}");
        }
    }

    #[test]
    fn the_budget_stops_a_stream_longer_than_declared() {
        // The zip crate already refuses entries longer than their declared size; this is
        // the second line of defence, counting across entries.
        let mut budget = UnzippedBudget {
            used: 0,
            limit: 10_000,
        };
        let mut endless = io::repeat(0).take(1 << 30);
        let error = copy_counted(
            &mut endless,
            Vec::new(),
            &mut budget,
            "bomb",
            Path::new("x"),
        )
        .unwrap_err();
        assert!(matches!(
            error,
            CodeError::UnzippedTooLarge { limit: 10_000 }
        ));
        assert!(budget.used <= 10_000);
    }

    #[test]
    fn the_budget_is_shared_across_entries() {
        let mut budget = UnzippedBudget { used: 0, limit: 10 };
        let first = copy_counted(
            &mut &b"123456"[..],
            Vec::new(),
            &mut budget,
            "a",
            Path::new(""),
        );
        assert_eq!(first.unwrap(), b"123456");
        let second = copy_counted(
            &mut &b"123456"[..],
            Vec::new(),
            &mut budget,
            "b",
            Path::new(""),
        );
        assert!(matches!(
            second,
            Err(CodeError::UnzippedTooLarge { limit: 10 })
        ));
    }

    #[test]
    fn write_errors_are_io_errors_and_read_errors_corruption() {
        struct FailingWriter;
        impl Write for FailingWriter {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        struct FailingReader;
        impl Read for FailingReader {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::InvalidData, "bad deflate"))
            }
        }
        let mut budget = UnzippedBudget {
            used: 0,
            limit: 100,
        };
        let write = copy_counted(
            &mut &b"abc"[..],
            FailingWriter,
            &mut budget,
            "a",
            Path::new("p"),
        );
        assert!(matches!(write, Err(CodeError::Io { .. })));
        let read = copy_counted(
            &mut FailingReader,
            Vec::new(),
            &mut budget,
            "a",
            Path::new("p"),
        );
        assert!(matches!(read, Err(CodeError::CorruptArchive { .. })));
    }

    #[test]
    fn open_removes_leftovers_of_interrupted_writes() {
        let root = tempfile::tempdir().unwrap();
        let store = CodeStore::open(root.path()).unwrap();
        let zip = zip_with(&["handler.py"]);
        let stored = store.put_zip(&zip, &CodeLimits::LAMBDA).unwrap();
        drop(store);

        // What a kill -9 in the middle of `put_zip` or `retain_only` leaves behind.
        let scratch = root.path().join(SCRATCH_DIR);
        fs::write(scratch.join("blob-1-0"), b"half a zip").unwrap();
        fs::create_dir_all(scratch.join("tree-1-1/lib/deep")).unwrap();
        fs::write(scratch.join("tree-1-1/lib/deep/x"), b"partial").unwrap();
        std::os::unix::fs::symlink("/etc", scratch.join("tree-1-1/link")).unwrap();
        fs::create_dir_all(scratch.join("trash-1-2/a")).unwrap();

        let store = CodeStore::open(root.path()).unwrap();
        assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
        assert!(
            Path::new("/etc").is_dir(),
            "cleanup must not follow symlinks"
        );
        assert_eq!(store.read_zip(&stored.sha256_hex()).unwrap(), zip);
        let tree = store.extracted_dir(&stored.sha256_hex()).unwrap();
        assert_eq!(fs::read(tree.join("handler.py")).unwrap(), b"x");
    }

    #[test]
    fn trees_survive_a_clean_stop_and_are_unpacked_again_after_a_crash() {
        let root = tempfile::tempdir().unwrap();
        let store = CodeStore::open(root.path()).unwrap();
        let stored = store
            .put_zip(&zip_with(&["handler.py"]), &CodeLimits::LAMBDA)
            .unwrap();
        let tree = root.path().join(EXTRACTED_DIR).join(stored.sha256_hex());
        store.mark_clean_shutdown().unwrap();
        drop(store);

        // Clean: the tree is kept, and the marker is gone while the store is open.
        let store = CodeStore::open(root.path()).unwrap();
        assert!(tree.is_dir());
        assert!(!root.path().join(CLEAN_MARKER).exists());
        drop(store); // no mark: as after kill -9

        // Unclean: the unflushed tree is discarded, and unpacked again when needed.
        let store = CodeStore::open(root.path()).unwrap();
        assert!(!tree.exists());
        let again = store.extracted_dir(&stored.sha256_hex()).unwrap();
        assert_eq!(fs::read(again.join("handler.py")).unwrap(), b"x");
    }
}
