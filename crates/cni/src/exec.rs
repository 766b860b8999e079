//! Running plugin binaries: lookup on `CNI_PATH`, a clean explicit environment,
//! stdin/stdout/stderr handling and a timeout that kills the whole process group.

use crate::error::{code, CniError, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
}

/// Runs real processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessExec;

fn read_capped(mut r: impl Read, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.by_ref().take(cap + 1).read_to_end(&mut buf)?;
    // Drain the rest so the child never blocks on a full pipe.
    std::io::copy(&mut r, &mut std::io::sink())?;
    Ok(buf)
}

fn read_tail(mut r: impl Read) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = r.read(&mut chunk) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&chunk[..n]);
        if all.len() > 4 * STDERR_TAIL {
            all.drain(..all.len() - STDERR_TAIL);
        }
    }
    if all.len() > STDERR_TAIL {
        all.drain(..all.len() - STDERR_TAIL);
    }
    all
}

impl Exec for ProcessExec {
    fn run(&self, req: &ExecRequest<'_>) -> Result<ExecOutput> {
        let shown = req.binary.display();
        let mut child = Command::new(req.binary)
            .args(&req.args)
            .env_clear()
            .envs(req.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: a timeout kills the plugin and everything it started.
            .process_group(0)
            .spawn()
            .map_err(|e| CniError::internal(format!("cannot execute {shown}: {e}")))?;
        let pid = Pid::from_raw(child.id() as i32);
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(CniError::internal(format!("{shown}: child pipes missing")));
        };
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(move || {
                // A plugin may exit without reading stdin: EPIPE is not our error.
                let _ = stdin.write_all(req.stdin);
            });
            let out = s.spawn(move || read_capped(stdout, MAX_STDOUT));
            let err = s.spawn(move || read_tail(stderr));
            s.spawn(move || {
                let _ = tx.send(child.wait());
            });
            let (status, timed_out) = match rx.recv_timeout(req.timeout) {
                Ok(status) => (status, false),
                Err(_) => {
                    let _ = killpg(pid, Signal::SIGKILL);
                    (
                        rx.recv().unwrap_or_else(|_| Ok(ExitStatus::from_raw(9))),
                        true,
                    )
                }
            };
            let stdout = out
                .join()
                .map_err(|_| CniError::internal("stdout reader panicked"))?;
            let stderr = err.join().unwrap_or_default();
            if timed_out {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "{shown} did not finish within {:?} and was killed",
                        req.timeout
                    ),
                ));
            }
            let status =
                status.map_err(|e| CniError::internal(format!("waiting for {shown}: {e}")))?;
            let stdout =
                stdout.map_err(|e| CniError::io(format!("reading stdout of {shown}: {e}")))?;
            if stdout.len() as u64 > MAX_STDOUT {
                return Err(CniError::decode(format!(
                    "{shown} printed more than {MAX_STDOUT} bytes"
                )));
            }
            Ok(ExecOutput {
                status,
                stdout,
                stderr,
            })
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

    #[test]
    fn timeout_kills_process_group() {
        let start = Instant::now();
        // The grandchild keeps stdout open: the whole group must die for us to return.
        let e = sh("sleep 30 & sleep 30", Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("was killed"));
        assert!(start.elapsed() < Duration::from_secs(10));
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
