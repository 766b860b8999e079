//! Running plugin binaries: lookup on `CNI_PATH`, a clean explicit environment,
//! stdin/stdout/stderr handling, a timeout that kills the whole process group, and a
//! child that dies with its parent.

use crate::error::{CniError, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Largest stdout accepted from a plugin.
pub const MAX_STDOUT: u64 = 16 << 20;
/// How much of a plugin's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;

/// One execution of a binary.
#[derive(Debug, Clone)]
pub struct ExecRequest<'a> {
    /// The binary.
    pub binary: &'a Path,
    /// Its arguments (plugins get none; wrappers such as `chroot` do).
    pub args: Vec<String>,
    /// The whole environment of the child (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Bytes written to the child's stdin.
    pub stdin: &'a [u8],
    /// Time after which the child and its process group are killed.
    pub timeout: Duration,
}

/// What a finished child left behind.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: Vec<u8>,
    /// The tail of its stderr.
    pub stderr: Vec<u8>,
}

/// The seam between the runtime and processes; tests and the daemon may pass their own.
pub trait Exec: Send + Sync {
    /// Runs the binary to completion or until the timeout.
    fn run(&self, req: &ExecRequest<'_>) -> Result<ExecOutput>;

    /// Starts the binary now without giving it its stdin yet (see
    /// [`crate::runtime::Runtime::prestart_add`]); `None` when this executor cannot, and
    /// the runtime then runs the binary when it is needed.
    fn start(&self, _req: &StartRequest<'_>) -> Result<Option<Box<dyn Prestarted>>> {
        Ok(None)
    }
}

/// A binary to start ahead of its stdin.
#[derive(Debug, Clone)]
pub struct StartRequest<'a> {
    /// The binary.
    pub binary: &'a Path,
    /// Its arguments.
    pub args: Vec<String>,
    /// The whole environment of the child.
    pub env: Vec<(String, String)>,
}

/// A started child waiting for its stdin; dropped unfinished, it is killed and reaped.
pub trait Prestarted: Send {
    /// Writes `input` to its stdin and collects it as [`Exec::run`] does; the timeout
    /// counts from now.
    fn finish(self: Box<Self>, input: &[u8], timeout: Duration) -> Result<ExecOutput>;
}

/// Runs real processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessExec;

/// What the pipes carried.
struct Pumped {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    timed_out: bool,
}

fn nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Reads what is there; `Ok(false)` at end of file.
fn drain(r: &mut impl Read, buf: &mut [u8], mut keep: impl FnMut(&[u8])) -> std::io::Result<bool> {
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => keep(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes `input` to the child's stdin and reads its stdout (up to `MAX_STDOUT` + 1
/// bytes kept, the rest drained) and the tail of its stderr, all on this thread, until
/// both outputs are closed or `deadline` passes. A child that exits without reading
/// its stdin is not an error.
// Long on purpose: one poll loop over three pipes and the deadline; split, its state
// (buffers, which fds are open) would have to travel between the parts.
fn pump(
    stdin: ChildStdin,
    mut stdout: ChildStdout,
    mut stderr: ChildStderr,
    input: &[u8],
    deadline: Instant,
) -> std::io::Result<Pumped> {
    nonblocking(stdin.as_fd())?;
    nonblocking(stdout.as_fd())?;
    nonblocking(stderr.as_fd())?;
    let mut stdin = (!input.is_empty()).then_some(stdin);
    let mut written = 0;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    // On the stack: a zeroed 64 KiB heap buffer per execution was a tenth of the
    // daemon's instructions (plugins print a few KiB).
    let mut buf = [0u8; 16 << 10];
    while out_open || err_open {
        let Some(timeout) = time_left(deadline) else {
            return Ok(Pumped {
                stdout: out,
                stderr: err,
                timed_out: true,
            });
        };
        let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        let (mut want_in, mut want_out, mut want_err) = (false, false, false);
        {
            let mut fds = Vec::with_capacity(3);
            if let Some(s) = &stdin {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLOUT));
            }
            if out_open {
                fds.push(PollFd::new(stdout.as_fd(), PollFlags::POLLIN));
            }
            if err_open {
                fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            let mut ready = fds
                .iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()));
            if stdin.is_some() {
                want_in = ready.next().is_some_and(|r| !r.is_empty());
            }
            if out_open {
                want_out = ready.next().is_some_and(|r| r.intersects(readable));
            }
            if err_open {
                want_err = ready.next().is_some_and(|r| r.intersects(readable));
            }
        }
        if want_in {
            if let Some(s) = stdin.as_mut() {
                match s.write(&input[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // EPIPE and the like: the child does not read its stdin (any more).
                    Err(_) => written = input.len(),
                }
                if written >= input.len() {
                    stdin = None;
                }
            }
        }
        if want_out {
            out_open = drain(&mut stdout, &mut buf, |b| {
                let room = (MAX_STDOUT as usize + 1).saturating_sub(out.len());
                out.extend_from_slice(&b[..b.len().min(room)]);
            })?;
        }
        if want_err {
            err_open = drain(&mut stderr, &mut buf, |b| {
                err.extend_from_slice(b);
                if err.len() > 4 * STDERR_TAIL {
                    err.drain(..err.len() - STDERR_TAIL);
                }
            })?;
        }
    }
    if err.len() > STDERR_TAIL {
        err.drain(..err.len() - STDERR_TAIL);
    }
    Ok(Pumped {
        stdout: out,
        stderr: err,
        timed_out: false,
    })
}

/// A pidfd for the child, polled for its exit (`None` where the kernel has none).
fn pidfd(child: &Child) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// The `poll` timeout until `deadline` (whole milliseconds, rounded up; at most
/// `u16::MAX`, the caller polls again); `None` once it has passed.
fn time_left(deadline: Instant) -> Option<PollTimeout> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    let ms = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
    Some(PollTimeout::from(ms))
}

/// Waits until the process behind `pidfd` has exited (true) or `deadline` passes.
fn exits_by(pidfd: &OwnedFd, deadline: Instant) -> bool {
    loop {
        let Some(timeout) = time_left(deadline) else {
            return false;
        };
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
}

impl Exec for ProcessExec {
    fn run(&self, req: &ExecRequest<'_>) -> Result<ExecOutput> {
        Box::new(Started::spawn(req.binary, &req.args, &req.env)?).finish(req.stdin, req.timeout)
    }

    fn start(&self, req: &StartRequest<'_>) -> Result<Option<Box<dyn Prestarted>>> {
        Ok(Some(Box::new(Started::spawn(
            req.binary, &req.args, &req.env,
        )?)))
    }
}

/// A child started with its pipes, not yet given its stdin. Dropped unfinished, it is
/// killed with its process group and reaped.
struct Started {
    /// `None` once a waiter thread owns it.
    child: Option<Child>,
    pid: Pid,
    shown: String,
    pipes: Option<(ChildStdin, ChildStdout, ChildStderr)>,
}

impl Started {
    fn spawn(binary: &Path, args: &[String], env: &[(String, String)]) -> Result<Started> {
        let shown = binary.display().to_string();
        let mut cmd = Command::new(binary);
        // Killed with its parent: a delegate never goes on attaching for a plugin or
        // daemon that is gone (the pid is then reaped by init, not left running).
        plexus_netns::child::die_with_parent(&mut cmd);
        let mut child = cmd
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: a timeout kills the plugin and everything it started.
            .process_group(0)
            .spawn()
            .map_err(|e| CniError::internal(format!("cannot execute {shown}: {e}")))?;
        let pipes = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
            (Some(i), Some(o), Some(e)) => Some((i, o, e)),
            _ => None,
        };
        let mut started = Started {
            pid: Pid::from_raw(child.id() as i32),
            child: Some(child),
            shown,
            pipes,
        };
        if started.pipes.is_none() {
            started.kill();
            return Err(CniError::internal(format!(
                "{}: child pipes missing",
                started.shown
            )));
        }
        Ok(started)
    }

    /// Kills the child and its group and reaps it, unless it was reaped already.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = killpg(self.pid, Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Prestarted for Started {
    fn finish(mut self: Box<Self>, input: &[u8], timeout: Duration) -> Result<ExecOutput> {
        let shown = self.shown.clone();
        let deadline = Instant::now() + timeout;
        let pid = self.pid;
        let (Some((stdin, stdout, stderr)), Some(mut child)) =
            (self.pipes.take(), self.child.take())
        else {
            return Err(CniError::internal(format!("{shown}: child pipes missing")));
        };
        let finished = |p: &std::io::Result<Pumped>| matches!(p, Ok(p) if !p.timed_out);
        let (pumped, status) = match pidfd(&child) {
            // This thread moves the bytes, then waits for the exit on a pidfd, both
            // bounded by the deadline.
            Some(fd) => {
                let pumped = pump(stdin, stdout, stderr, input, deadline);
                let exited = finished(&pumped) && exits_by(&fd, deadline);
                if !exited {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
                let status = child.wait();
                (pumped, exited.then_some(status))
            }
            // No pidfd (Linux before 5.3): a thread waits for the exit.
            None => {
                let (tx, rx) = mpsc::channel();
                let waiter = std::thread::spawn(move || {
                    let _ = tx.send(child.wait());
                });
                let pumped = pump(stdin, stdout, stderr, input, deadline);
                let status = if finished(&pumped) {
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        .ok()
                } else {
                    None
                };
                if status.is_none() {
                    let _ = killpg(pid, Signal::SIGKILL);
                    let _ = rx.recv();
                }
                let _ = waiter.join();
                (pumped, status)
            }
        };
        let Some(status) = status else {
            return Err(match pumped {
                Err(e) => CniError::io(format!("talking to {shown}: {e}")),
                Ok(_) => CniError::interrupted(format!(
                    "{shown} did not finish within {timeout:?} and was killed"
                )),
            });
        };
        let pumped = pumped.map_err(|e| CniError::io(format!("talking to {shown}: {e}")))?;
        let status = status.map_err(|e| CniError::internal(format!("waiting for {shown}: {e}")))?;
        if pumped.stdout.len() as u64 > MAX_STDOUT {
            return Err(CniError::decode(format!(
                "{shown} printed more than {MAX_STDOUT} bytes"
            )));
        }
        Ok(ExecOutput {
            status,
            stdout: pumped.stdout,
            stderr: pumped.stderr,
        })
    }
}

/// Finds plugin `plugin_type` in `paths` (the first executable regular file wins).
pub fn find_plugin(plugin_type: &str, paths: &[PathBuf]) -> Result<PathBuf> {
    crate::validate::plugin_type(plugin_type)?;
    for dir in paths {
        let candidate = dir.join(plugin_type);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    Err(CniError::invalid_config(format!(
        "failed to find plugin {plugin_type:?} in path [{}]",
        shown.join(" ")
    )))
}

/// Interprets a finished plugin: success gives its stdout; failure gives the error
/// object it printed (its code kept), or an internal error quoting its stderr.
pub fn interpret(binary: &Path, out: ExecOutput) -> Result<Vec<u8>> {
    if out.status.success() {
        return Ok(out.stdout);
    }
    if let Ok(mut e) = serde_json::from_slice::<CniError>(&out.stdout) {
        e.cni_version.clear();
        return Err(e);
    }
    let how = match (out.status.code(), out.status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    };
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(512)])
        .trim()
        .to_string();
    Err(CniError::internal(format!(
        "{} failed with {how} and printed no CNI error",
        binary.display()
    ))
    .with_details(format!("stdout: {stdout:?}; stderr: {stderr:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str, timeout: Duration) -> Result<ExecOutput> {
        let env = vec![
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("X".into(), "y".into()),
        ];
        ProcessExec.run(&ExecRequest {
            binary: Path::new("/bin/sh"),
            args: vec![],
            env,
            stdin: script.as_bytes(),
            timeout,
        })
    }

    #[test]
    fn runs_with_explicit_env_and_stdin() {
        let out = sh(
            "echo \"$X\"; echo err >&2; echo ${HOME:-none}",
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "y\nnone\n");
        assert_eq!(out.stderr, b"err\n");
    }

    fn run_sh(args: &str, stdin: &[u8]) -> Result<ExecOutput> {
        ProcessExec.run(&ExecRequest {
            binary: Path::new("/bin/sh"),
            args: vec!["-c".into(), args.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin,
            timeout: Duration::from_secs(20),
        })
    }

    #[test]
    fn large_input_and_output_do_not_deadlock() {
        // The child writes 1 MiB before it reads its 1 MiB of stdin.
        let input = vec![b'x'; 1 << 20];
        let out = run_sh("head -c 1048576 /dev/zero; wc -c >&2", &input).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), 1 << 20);
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "1048576");
    }

    #[test]
    fn a_child_that_never_reads_stdin_is_fine() {
        let input = vec![b'x'; 1 << 20];
        let out = run_sh("echo done; exit 3", &input).unwrap();
        assert_eq!(
            (out.status.code(), out.stdout.as_slice()),
            (Some(3), &b"done\n"[..])
        );
    }

    #[test]
    fn only_the_stderr_tail_is_kept() {
        let out = run_sh(
            "head -c 100000 /dev/zero | tr '\\0' a >&2; echo end >&2",
            b"",
        )
        .unwrap();
        assert_eq!(out.stderr.len(), STDERR_TAIL);
        assert!(out.stderr.ends_with(b"aaaa\nend\n") || out.stderr.ends_with(b"end\n"));
    }

    #[test]
    fn timeout_kills_process_group() {
        let start = Instant::now();
        // The grandchild keeps stdout open: the whole group must die for us to return.
        let e = sh("sleep 30 & sleep 30", Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("was killed"));
        assert!(e.interrupted, "a killed plugin undid nothing");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_child_that_closes_its_output_and_stays_is_killed_at_the_deadline() {
        let start = Instant::now();
        // Both pipes end at once; the exit, waited for on the pidfd, never comes.
        let e = sh("exec >&- 2>&-; sleep 30", Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("was killed"), "{}", e.msg);
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_exit_status_is_the_childs() {
        let out = sh("echo out; exit 3", Duration::from_secs(10)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
    }

    #[test]
    fn interprets_errors() {
        let out = sh(
            r#"echo '{"cniVersion":"1.0.0","code":51,"msg":"down","details":"d"}'; exit 1"#,
            Duration::from_secs(10),
        )
        .unwrap();
        let e = interpret(Path::new("p"), out).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str(), e.details.as_str()),
            (51, "down", "d")
        );
        let out = sh(
            "echo garbage; echo boom >&2; exit 3",
            Duration::from_secs(10),
        )
        .unwrap();
        let e = interpret(Path::new("p"), out).unwrap_err();
        assert_eq!(e.code, 999);
        assert!(
            e.msg.contains("exit status 3")
                && e.details.contains("boom")
                && e.details.contains("garbage")
        );
    }

    #[test]
    fn find_plugin_rules() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("plug");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        let e = find_plugin("plug", &[d.path().to_path_buf()]).unwrap_err();
        assert!(e.msg.contains("failed to find plugin \"plug\""));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            find_plugin(
                "plug",
                &[PathBuf::from("/nonexistent"), d.path().to_path_buf()]
            )
            .unwrap(),
            p
        );
        assert_eq!(
            find_plugin("../plug", &[d.path().join("x")])
                .unwrap_err()
                .code,
            7
        );
    }
}
