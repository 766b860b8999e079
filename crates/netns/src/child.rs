//! Children that die with their parent.
//!
//! A delegate runs in its own process group, so a timeout can kill it and everything it
//! started; but when the plugin or the daemon that started it is itself killed (kill -9,
//! the OOM killer, a node drain), nothing is left to send that signal and the delegate
//! would go on attaching interfaces for an answer nobody reads. The kernel can tie a
//! child to its parent instead: `PR_SET_PDEATHSIG` sends the child SIGKILL when the
//! thread that forked it exits. This lives here because it needs `pre_exec`, and this
//! crate is the one place Plexus relaxes `unsafe_code`.

use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::Signal;
use nix::unistd::{getppid, Pid};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child started by `cmd` receive SIGKILL when its parent dies.
///
/// The signal follows the *thread* that forks, not the process: spawn from a thread
/// that outlives the child (the one that waits for it). It survives `execve` (except of
/// set-user-ID binaries) but not `fork`, so it covers the delegate itself; what the
/// delegate forks is still in its process group. If the parent died between the fork
/// and the call, the child refuses to start rather than run unowned.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    let parent = Pid::this();
    let tie = move || -> std::io::Result<()> {
        set_pdeathsig(Signal::SIGKILL)?;
        if getppid() != parent {
            return Err(nix::errno::Errno::ESRCH.into());
        }
        Ok(())
    };
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed: it makes two system calls (prctl, getppid),
    // allocates nothing and takes no lock; its error is a plain errno.
    unsafe {
        cmd.pre_exec(tie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn alive(pid: u32) -> bool {
        // A zombie still has a /proc entry; only a running or sleeping child counts.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
            .is_some_and(|r| !r.starts_with('Z'))
    }

    #[test]
    fn a_child_is_killed_when_the_thread_that_started_it_ends() {
        let child = std::thread::spawn(|| {
            die_with_parent(&mut Command::new("sleep"))
                .arg("30")
                .spawn()
                .expect("starting sleep")
        })
        .join()
        .expect("spawning thread");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut child = child;
        let gone = !alive(pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(gone, "sleep {pid} outlived the thread that started it");
    }

    #[test]
    fn a_child_of_a_living_parent_runs_normally() {
        let out = die_with_parent(&mut Command::new("echo"))
            .arg("ok")
            .output()
            .expect("running echo");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    }
}
