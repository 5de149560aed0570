//! The node's model cache: one directory (a hostPath or a PVC) shared by every pod on the node.
//!
//! Layout: each model file lives at `<root>/<key>/<file>`, where the key names its source and revision
//! (`hf/<org>/<repo>/<commit>/…`, `url/<host>/<hash of the URL>/…`). Beside it, hidden:
//! - `.<file>.lock`: the advisory lock (`flock`) that orders everyone touching this file. A fetcher holds it
//!   exclusively while downloading; a process using the file (`kiln-agent serve`) holds it shared for as
//!   long as it runs, so eviction (which needs it exclusively) never removes a file in use. Lock files are
//!   never deleted: deleting one while another process has it open would let two processes "hold" locks on
//!   different inodes.
//! - `.<file>.partial`: the download in progress (resumed after a drop or a restart).
//! - `.<file>.sha256`: the checksum verified when the file was completed.
//!
//! A file appears under its real name only by an atomic rename of a complete, verified download, so a
//! partial or wrong file is never visible as complete.

use fs4::FileExt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often a fetcher waiting on another one looks again.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// One file's place in the cache.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Where the complete file lives.
    pub path: PathBuf,
    pub partial: PathBuf,
    lock: PathBuf,
    sha256: PathBuf,
}

fn hidden_sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{suffix}"))
}

impl Entry {
    /// The entry for `rel` (a key directory and file name, already checked relative) under `root`.
    pub fn new(root: &Path, rel: &Path) -> Self {
        let path = root.join(rel);
        Entry {
            partial: hidden_sibling(&path, "partial"),
            lock: hidden_sibling(&path, "lock"),
            sha256: hidden_sibling(&path, "sha256"),
            path,
        }
    }

    fn open_lock(&self) -> io::Result<File> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
    }

    /// Waits until this process may use or download the file. A complete file is shared at once (even
    /// while servers hold it); a missing one is downloaded by whoever first gets the lock exclusively,
    /// and everyone else waits and then shares the result. `waiting(partial_bytes)` is called on every
    /// poll while another process downloads.
    pub async fn claim(&self, mut waiting: impl FnMut(u64)) -> io::Result<Claim> {
        loop {
            let shared = self.open_lock()?;
            if try_lock(&shared, false)? && self.path.is_file() {
                return Ok(Claim::Ready(LockGuard(shared)));
            }
            drop(shared);
            let exclusive = self.open_lock()?;
            if try_lock(&exclusive, true)? {
                // Someone may have completed it between our two looks.
                if self.path.is_file() {
                    return Ok(Claim::Ready(LockGuard(exclusive)));
                }
                return Ok(Claim::Download(LockGuard(exclusive)));
            }
            waiting(fs::metadata(&self.partial).map_or(0, |m| m.len()));
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    pub fn partial_len(&self) -> u64 {
        fs::metadata(&self.partial).map_or(0, |m| m.len())
    }

    /// The checksum recorded when the file was completed (lower-case hex).
    pub fn recorded_sha256(&self) -> Option<String> {
        let s = fs::read_to_string(&self.sha256).ok()?;
        let s = s.trim().to_ascii_lowercase();
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
    }

    /// Makes the verified partial file the complete one: checksum record first, then the atomic rename,
    /// then the directory is synced so the rename survives a crash. Needs the exclusive claim.
    pub fn commit(&self, _claim: &LockGuard, sha256: &str) -> io::Result<()> {
        File::open(&self.partial)?.sync_all()?;
        fs::write(&self.sha256, format!("{sha256}\n"))?;
        fs::rename(&self.partial, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Removes a partial download that must not be resumed (wrong checksum, failed checks, disk full).
    pub fn discard_partial(&self, _claim: &LockGuard) {
        let _ = fs::remove_file(&self.partial);
    }

    /// Marks the file used now: eviction removes the least recently used first.
    pub fn touch(&self) {
        let now = SystemTime::now();
        if let Err(e) = File::options()
            .write(true)
            .open(&self.path)
            .and_then(|f| f.set_modified(now))
        {
            tracing::debug!("cannot mark {} used: {e}", self.path.display());
        }
    }
}

/// The lock on one entry; released when dropped (closing the descriptor releases an `flock`).
#[derive(Debug)]
pub struct LockGuard(#[allow(dead_code)] File);

pub enum Claim {
    /// The complete file exists; this process holds it shared.
    Ready(LockGuard),
    /// The file is missing; this process holds it exclusively and must download it.
    Download(LockGuard),
}

/// `Ok(true)` when the lock was taken, `Ok(false)` when someone else holds a conflicting one.
fn try_lock(f: &File, exclusive: bool) -> io::Result<bool> {
    let r = if exclusive {
        FileExt::try_lock(f)
    } else {
        FileExt::try_lock_shared(f)
    };
    match r {
        Ok(()) => Ok(true),
        Err(fs4::TryLockError::WouldBlock) => Ok(false),
        Err(fs4::TryLockError::Error(e)) => Err(e),
    }
}

/// Marks `model` in use for as long as the guard lives, when it is a file of a Kiln cache (it has a lock
/// file beside it); files elsewhere need no protection and get `None`. Blocks while the file is being
/// evicted or completed (moments). `model` may be a link into the cache (`kiln-agent fetch --link`); the
/// lock is opened read-only, as a server mounts the cache read-only (a shared flock needs no write access).
pub fn hold_in_use(model: &Path) -> io::Result<Option<LockGuard>> {
    let model = fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf());
    let lock = hidden_sibling(&model, "lock");
    match OpenOptions::new().read(true).open(&lock) {
        Ok(f) => {
            FileExt::lock_shared(&f)?;
            Ok(Some(LockGuard(f)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// When the cache may remove files to make room.
#[derive(Clone, Debug)]
pub struct EvictPolicy {
    /// Largest total size of the cache (complete and partial files); `None`: only free disk space limits.
    pub max_bytes: Option<u64>,
    /// Files used more recently than this are kept: a fetcher has just handed one to a server that has
    /// not opened it yet.
    pub grace: Duration,
}

/// A file the cache could remove.
struct Candidate {
    path: PathBuf,
    lock: PathBuf,
    /// The checksum record that goes with a complete file.
    sha256: Option<PathBuf>,
    len: u64,
    used: SystemTime,
}

fn walk(dir: &Path, out: &mut Vec<Candidate>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let ty = e.file_type()?;
        let path = e.path();
        if ty.is_dir() {
            walk(&path, out)?;
            continue;
        }
        if !ty.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let md = e.metadata()?;
        let (lock, sha256) = if let Some(stem) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".partial"))
        {
            (path.with_file_name(format!(".{stem}.lock")), None)
        } else if name.starts_with('.') {
            continue; // locks and checksum records: tiny, and locks are never deleted
        } else {
            (
                hidden_sibling(&path, "lock"),
                Some(hidden_sibling(&path, "sha256")),
            )
        };
        out.push(Candidate {
            path,
            lock,
            sha256,
            len: md.len(),
            used: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    Ok(())
}

/// Bytes of every model file and partial download under `root`.
pub fn cache_bytes(root: &Path) -> io::Result<u64> {
    let mut all = Vec::new();
    walk(root, &mut all)?;
    Ok(all.iter().map(|c| c.len).sum())
}

/// Removes least recently used files until `need` more bytes fit both the size limit and the disk.
/// Never removes `keep` (the entry being fetched), a file in use (its lock is held), or one used within
/// the grace period. Returns what it removed; the caller checks whether the room is now there.
pub fn make_room(
    root: &Path,
    need: u64,
    keep: &Entry,
    policy: &EvictPolicy,
) -> io::Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    walk(root, &mut all)?;
    let total: u64 = all.iter().map(|c| c.len).sum();
    let over_limit = policy
        .max_bytes
        .map_or(0, |m| total.saturating_add(need).saturating_sub(m));
    let short_on_disk = need.saturating_sub(fs4::available_space(root)?);
    let mut to_free = over_limit.max(short_on_disk);
    let mut removed = Vec::new();
    if to_free == 0 {
        return Ok(removed);
    }
    all.sort_by_key(|c| c.used);
    let now = SystemTime::now();
    for c in all {
        if to_free == 0 {
            break;
        }
        if c.path == keep.path || c.path == keep.partial {
            continue;
        }
        if now.duration_since(c.used).unwrap_or_default() < policy.grace {
            continue;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&c.lock)?;
        if !try_lock(&lock, true)? {
            continue; // in use, or being downloaded
        }
        match fs::remove_file(&c.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if let Some(s) = &c.sha256 {
            let _ = fs::remove_file(s);
        }
        tracing::info!(
            "cache: evicted {} ({} bytes, least recently used)",
            c.path.display(),
            c.len
        );
        to_free = to_free.saturating_sub(c.len);
        removed.push(c.path);
    }
    Ok(removed)
}
