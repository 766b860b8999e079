//! Network namespaces: the one place Plexus enters them.
//!
//! A namespace is held as an open file. Work runs inside it on a short-lived dedicated
//! thread (the Rust form of Go's `ns.Do`): the calling thread never changes namespace,
//! so no async worker or shared thread is ever left in the wrong one, whatever the
//! work does (returns early, fails or panics).

pub mod child;

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC, PROC_SUPER_MAGIC};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// Where named namespaces live, as with `ip netns`.
pub const RUN_DIR: &str = "/run/netns";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path could not be opened.
    #[error("cannot open network namespace {path}: {cause}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The path is not a network namespace.
    #[error("{path} is not a network namespace ({what})")]
    NotNetns {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        what: String,
    },
    /// Entering the namespace failed.
    #[error("cannot enter network namespace {path}: {cause}")]
    Enter {
        /// The path.
        path: PathBuf,
        /// Why.
        cause: nix::Error,
    },
    /// A name unusable for a namespace.
    #[error("invalid network namespace name {0:?}")]
    InvalidName(String),
    /// Creating or removing a named namespace failed.
    #[error("network namespace {name:?}: {op}: {cause}")]
    Manage {
        /// The name.
        name: String,
        /// The step that failed.
        op: &'static str,
        /// Why.
        cause: std::io::Error,
    },
    /// The work panicked on its thread.
    #[error("work inside network namespace {0} panicked")]
    Panicked(PathBuf),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, NetnsError>;

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens `path` and checks that it is a network namespace (an nsfs or procfs file
    /// whose link reads `net:[...]`), never a regular file or another namespace type.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|cause| NetnsError::Open {
            path: path.clone(),
            cause,
        })?;
        let not = |what: String| NetnsError::NotNetns {
            path: path.clone(),
            what,
        };
        let fs = fstatfs(&file).map_err(|e| not(format!("statfs: {e}")))?;
        if fs.filesystem_type() != NSFS_MAGIC && fs.filesystem_type() != PROC_SUPER_MAGIC {
            return Err(not(format!(
                "filesystem type {:#x}",
                fs.filesystem_type().0
            )));
        }
        let kind = ns_type(&file).map_err(|e| not(format!("NS_GET_NSTYPE: {e}")))?;
        if kind != CloneFlags::CLONE_NEWNET.bits() {
            return Err(not(format!("namespace type {kind:#x}")));
        }
        Ok(NetNs { file, path })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<NetNs> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `net:[<inode>]`, which identifies the namespace (as `/proc/<pid>/ns/net` reads).
    pub fn id(&self) -> Result<String> {
        nix::sys::stat::fstat(&self.file)
            .map(|st| format!("net:[{}]", st.st_ino))
            .map_err(|e| NetnsError::Open {
                path: self.path.clone(),
                cause: e.into(),
            })
    }

    /// Runs `f` inside the namespace on a dedicated thread and returns its value.
    /// Processes `f` spawns start in the namespace too.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|cause| NetnsError::Enter {
                    path: self.path.clone(),
                    cause,
                })?;
                // The thread ends right after: nothing runs on it in this namespace again.
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Panicked(self.path.clone()))?
        })
    }

    /// Starts `f` in the namespace now, on a dedicated thread, and returns at once: the
    /// cost of starting the thread, entering and working overlaps with whatever the
    /// caller does meanwhile; [`Ahead::wait`] takes the outcome (by then the thread has
    /// usually ended, so nothing wakes it on the caller's path). Dropping the result
    /// without waiting lets the thread finish on its own.
    pub fn run_ahead<O>(&self, f: impl FnOnce() -> O + Send + 'static) -> Result<Ahead<O>>
    where
        O: Send + 'static,
    {
        let file = self.file.try_clone().map_err(|cause| NetnsError::Open {
            path: self.path.clone(),
            cause,
        })?;
        let path = self.path.clone();
        let thread = std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|cause| NetnsError::Enter { path, cause })?;
            // The thread ends right after: nothing runs on it in this namespace again.
            Ok(f())
        });
        Ok(Ahead {
            thread,
            path: self.path.clone(),
        })
    }
}

/// Work started inside a namespace (see [`NetNs::run_ahead`]).
pub struct Ahead<O> {
    thread: std::thread::JoinHandle<Result<O>>,
    path: PathBuf,
}

impl<O> Ahead<O> {
    /// Waits for the work and returns what it made.
    pub fn wait(self) -> Result<O> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(NetnsError::Panicked(self.path)))
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

// NS_GET_NSTYPE from <linux/nsfs.h>: _IO(0xb7, 0x3).
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

/// The `CLONE_NEW*` type of a namespace file.
#[allow(unsafe_code)]
fn ns_type(file: &File) -> nix::Result<i32> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the namespace behind the
    // fd, which `file` keeps open for the duration of the call.
    unsafe { ns_get_nstype(file.as_raw_fd()) }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(NetnsError::InvalidName(name.to_string()))
    }
}

/// A namespace bound at `/run/netns/<name>` (what `ip netns add` makes); removed
/// with [`NamedNetNs::remove`] or when dropped.
#[derive(Debug)]
pub struct NamedNetNs {
    name: String,
    path: PathBuf,
    removed: bool,
}

impl NamedNetNs {
    /// Creates a new, empty namespace named `name` under [`RUN_DIR`].
    pub fn create(name: &str) -> Result<NamedNetNs> {
        Self::create_in(Path::new(RUN_DIR), name)
    }

    /// Creates a new namespace bound at `dir/name`.
    pub fn create_in(dir: &Path, name: &str) -> Result<NamedNetNs> {
        check_name(name)?;
        let err = |op, cause| NetnsError::Manage {
            name: name.to_string(),
            op,
            cause,
        };
        std::fs::create_dir_all(dir).map_err(|e| err("create directory", e))?;
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| err("create mount point", e))?;
        let bound = std::thread::scope(|s| {
            s.spawn(|| -> std::io::Result<()> {
                unshare(CloneFlags::CLONE_NEWNET)?;
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("thread panicked")))
        });
        if let Err(e) = bound {
            let _ = std::fs::remove_file(&path);
            return Err(err("bind mount", e));
        }
        Ok(NamedNetNs {
            name: name.to_string(),
            path,
            removed: false,
        })
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path (`/run/netns/<name>`), what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens it.
    pub fn open(&self) -> Result<NetNs> {
        NetNs::open(&self.path)
    }

    /// Runs `f` inside it (see [`NetNs::run`]).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.open()?.run(f)
    }

    /// Unmounts and removes it; links inside are destroyed with the namespace.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        remove_path(&self.name, &self.path)
    }
}

fn remove_path(name: &str, path: &Path) -> Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => {
            return Err(NetnsError::Manage {
                name: name.into(),
                op: "unmount",
                cause: e.into(),
            })
        }
    }
    let mut removed = std::fs::remove_file(path);
    if removed
        .as_ref()
        .is_err_and(|e| e.raw_os_error() == Some(nix::libc::EBUSY))
    {
        // A recursive bind mount of a directory above it, made while it was mounted
        // (a host root bound under a daemon's chroot directory), holds a copy of its
        // mount, which keeps the file a mount point: those copies go first.
        for copy in copies_of(path) {
            let _ = nix::mount::umount2(copy.as_path(), nix::mount::MntFlags::MNT_DETACH);
        }
        removed = std::fs::remove_file(path);
    }
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetnsError::Manage {
            name: name.into(),
            op: "remove mount point",
            cause: e,
        }),
        _ => Ok(()),
    }
}

/// The mount points of this mount namespace that end in `path` without being it:
/// where recursive bind mounts of its parents show it.
fn copies_of(path: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mount_points_ending_in(&info, path)
}

fn mount_points_ending_in(mountinfo: &str, path: &Path) -> Vec<PathBuf> {
    let want = path.to_string_lossy();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m != want && m.ends_with(want.as_ref()))
        .map(PathBuf::from)
        .collect()
}

impl Drop for NamedNetNs {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove_path(&self.name, &self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_the_mount_points_ending_in_the_path() {
        let info = "36 25 0:4 net:[1] /run/netns/a rw shared:5 - nsfs nsfs rw\n\
                    90 88 0:4 net:[1] /srv/root/run/netns/a rw - nsfs nsfs rw\n\
                    91 88 0:4 net:[2] /srv/root/run/netns/ab rw - nsfs nsfs rw\n";
        assert_eq!(
            mount_points_ending_in(info, Path::new("/run/netns/a")),
            [PathBuf::from("/srv/root/run/netns/a")]
        );
    }

    #[test]
    fn a_namespace_is_removed_while_a_recursive_bind_of_the_root_shows_it() {
        // A host root bound under a chroot directory (the DaemonSet's /hostroot, the
        // thick tests' HostRoot) copies every namespace mounted at that moment.
        if !nix::unistd::Uid::effective().is_root() {
            return; // mounting needs root; the test suite runs as root
        }
        let name = format!("plxcopy{}", std::process::id());
        let ns = NamedNetNs::create(&name).unwrap();
        let root = std::env::temp_dir().join(format!("plexus-netns-root-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        nix::mount::mount(
            Some("/"),
            &root,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
        let path = ns.path().to_path_buf();
        let removed = ns.remove();
        let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&root);
        removed.unwrap();
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    fn errors_print_their_cause_once() {
        let e = NetNs::open("/nonexistent/plexus-netns").unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("No such file"), "{shown}");
        // The cause is in the message; as a source too, reporters would print it twice.
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn rejects_what_is_not_a_netns() {
        let d = std::env::temp_dir().join(format!("plexus-netns-test-{}", std::process::id()));
        std::fs::write(&d, b"x").unwrap();
        assert!(matches!(NetNs::open(&d), Err(NetnsError::NotNetns { .. })));
        std::fs::remove_file(&d).unwrap();
        assert!(matches!(
            NetNs::open("/nonexistent/ns"),
            Err(NetnsError::Open { .. })
        ));
        assert!(matches!(
            NetNs::open("/proc/self/ns/uts"),
            Err(NetnsError::NotNetns { .. })
        ));
        for bad in ["", "..", "a/b", "../x"] {
            assert!(
                matches!(NamedNetNs::create(bad), Err(NetnsError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn create_run_remove() {
        let name = format!("plx-unit-{}", std::process::id());
        let ns = NamedNetNs::create(&name).expect("creating a namespace needs root");
        let here = NetNs::current().unwrap().id().unwrap();
        let inside = ns.run(|| NetNs::current().unwrap().id().unwrap()).unwrap();
        assert_ne!(here, inside);
        assert_eq!(inside, ns.open().unwrap().id().unwrap());
        // The caller's thread never moved.
        assert_eq!(NetNs::current().unwrap().id().unwrap(), here);
        assert!(ns.run(|| panic!("boom")).is_err());
        assert_eq!(NetNs::current().unwrap().id().unwrap(), here);
        // Run ahead: the work runs inside while the caller goes on.
        let opened = ns.open().unwrap();
        let ahead = opened
            .run_ahead(|| NetNs::current().unwrap().id().unwrap())
            .unwrap();
        assert_eq!(ahead.wait().unwrap(), inside);
        let unused = opened.run_ahead(|| ()).unwrap();
        drop(unused);
        assert!(opened.run_ahead(|| panic!("boom")).unwrap().wait().is_err());

        assert_eq!(NetNs::current().unwrap().id().unwrap(), here);
        let path = ns.path().to_path_buf();
        ns.remove().unwrap();
        assert!(!path.exists());
    }
}
