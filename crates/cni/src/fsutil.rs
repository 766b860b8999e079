//! Crash-safe file writes.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory,
/// fsync, rename, fsync of the directory. Readers see the old or the new content,
/// never a part. Parent directories are created with `dir_mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, dir_mode: u32) -> std::io::Result<()> {
    write_replace(path, bytes, mode, dir_mode, true)
}

/// Like [`write_atomic`]; with `durable` false there is no fsync: readers still see the
/// old or the new content, but a crash may lose the write (for caches that are not
/// the source of truth, as libcni writes its result cache).
pub fn write_replace(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    dir_mode: u32,
    durable: bool,
) -> std::io::Result<()> {
    write_renamed(path, bytes, mode, dir_mode, durable)?;
    if durable {
        std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    }
    Ok(())
}

/// A write that readers already see and that is being made durable on another thread.
#[must_use = "wait() tells whether the write reached the disk"]
pub struct Syncing(std::thread::JoinHandle<std::io::Result<()>>);

impl Syncing {
    /// Waits until the file and its directory entry are on disk.
    pub fn wait(self) -> std::io::Result<()> {
        self.0
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("fsync thread panicked")))
    }
}

/// Like [`write_atomic`], but returns as soon as readers see the new content (after the
/// rename); the fsync of the file and of its directory runs on another thread, so the
/// caller can work meanwhile and [`Syncing::wait`] before it depends on durability.
/// Until then a crash of the machine (not of the process) may leave the old content,
/// none, or an empty file.
pub fn write_then_sync(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    dir_mode: u32,
) -> std::io::Result<Syncing> {
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let file = write_renamed(path, bytes, mode, dir_mode, false)?;
    Ok(Syncing(std::thread::spawn(move || {
        file.sync_all()?;
        std::fs::File::open(&dir)?.sync_all()
    })))
}

/// Writes a temporary file (fsynced first with `sync`) and renames it over `path`;
/// returns the written file.
fn write_renamed(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    dir_mode: u32,
    sync: bool,
) -> std::io::Result<std::fs::File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir_all_mode(dir, dir_mode)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{seq}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
        } else {
            replace_unsynced(&tmp, path)?;
        }
        Ok(f)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames `tmp` over `path`. ext4 (`auto_da_alloc`) writes an unsynced file out before
/// a rename replaces another with it, which takes a fraction of a millisecond on the
/// request path; exchanging the two names and removing the old one does not, and
/// readers still see either content whole. Where the exchange is unsupported, or
/// `path` does not exist yet, a plain rename.
fn replace_unsynced(tmp: &Path, path: &Path) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        if renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RenameFlags::RENAME_EXCHANGE).is_ok() {
            // `tmp` now names the old content.
            return std::fs::remove_file(tmp);
        }
    }
    std::fs::rename(tmp, path)
}

/// `mkdir -p` with `mode` for the directories it creates.
pub fn create_dir_all_mode(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
}

/// Removes a file; a file that is already gone is success.
pub fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes a file written with [`write_atomic`] (or its siblings) for good, and the
/// temporary files of writes to it that never finished: a process killed between
/// writing its temporary file and renaming it leaves `.<name>.tmp.<pid>.<seq>`. Only
/// temporaries whose writer is no longer running are removed, so a write under way in
/// another live process keeps its file.
pub fn remove_with_orphans(path: &Path) -> std::io::Result<()> {
    remove_if_exists(path)?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let prefix = format!(".{}.tmp.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let writer = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
        let orphan = writer.is_some_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        });
        if orphan {
            remove_if_exists(&e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_takes_the_temporaries_of_killed_writers_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c1.json");
        write_atomic(&p, b"{}", 0o600, 0o700).unwrap();
        // A writer killed before its rename (no such process), a live writer (this
        // process's parent, which runs), and another file's temporary.
        let dead = d.path().join(".c1.json.tmp.2147483646.0");
        let live = d.path().join(format!(
            ".c1.json.tmp.{}.3",
            std::os::unix::process::parent_id()
        ));
        let other = d.path().join(".c2.json.tmp.2147483646.0");
        for f in [&dead, &live, &other] {
            std::fs::write(f, b"{").unwrap();
        }
        remove_with_orphans(&p).unwrap();
        assert!(!p.exists() && !dead.exists());
        assert!(live.exists() && other.exists());
        // Nothing to remove is success.
        remove_with_orphans(&p).unwrap();
    }
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/file");
        write_atomic(&p, b"one", 0o600, 0o700).unwrap();
        write_atomic(&p, b"two", 0o600, 0o700).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        remove_if_exists(&p).unwrap();
        remove_if_exists(&p).unwrap();
    }

    #[test]
    fn write_then_sync_is_visible_before_the_wait() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s/state.json");
        let syncing = write_then_sync(&p, b"first", 0o600, 0o700).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        syncing.wait().unwrap();
        write_then_sync(&p, b"second", 0o600, 0o700)
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
