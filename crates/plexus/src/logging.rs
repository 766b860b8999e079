//! Logging as the configuration asks (`logLevel`, `logFile`, `logToStderr`). Never stdout:
//! stdout carries the one CNI document.

use plexus_engine::NetConf;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tracing_subscriber::fmt::writer::MakeWriterExt;

fn level(conf: &NetConf) -> tracing::Level {
    match conf.log_level.as_str() {
        "debug" => tracing::Level::DEBUG,
        "verbose" => tracing::Level::INFO,
        _ => tracing::Level::ERROR,
    }
}

/// Rotates `path` as `logOptions` says (Multus's defaults: 100 MB, 5 backups, 5 days):
/// when the file has reached `maxSize`, it becomes `path.1`, older backups shift, and
/// backups beyond `maxBackups` or older than `maxAge` days are removed.
fn rotate(conf: &NetConf, path: &Path) {
    let o = conf.log_options.clone().unwrap_or_default();
    let max_size = u64::from(o.max_size.unwrap_or(100)) << 20;
    let backups = o.max_backups.unwrap_or(5).max(1);
    let max_age = Duration::from_secs(u64::from(o.max_age.unwrap_or(5)) * 86_400);
    let backup = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    if std::fs::metadata(path)
        .map(|m| m.len() >= max_size)
        .unwrap_or(false)
    {
        for n in (1..backups).rev() {
            let _ = std::fs::rename(backup(n), backup(n + 1));
        }
        let _ = std::fs::rename(path, backup(1));
    }
    for n in 1..=backups + 1 {
        let old = std::fs::metadata(backup(n))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if n > backups || old.is_some_and(|age| age > max_age) {
            let _ = std::fs::remove_file(backup(n));
        }
    }
}

/// Installs the subscriber once; later calls do nothing.
pub fn init(conf: &NetConf) {
    let max = level(conf);
    let to_stderr = conf.log_to_stderr.unwrap_or(true);
    let file = (!conf.log_file.is_empty())
        .then(|| {
            rotate(conf, Path::new(&conf.log_file));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&conf.log_file)
                .ok()
        })
        .flatten();
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false);
    let _ = match (file, to_stderr) {
        (Some(f), true) => builder
            .with_writer(Mutex::new(f).and(std::io::stderr).with_max_level(max))
            .try_init(),
        (Some(f), false) => builder
            .with_writer(Mutex::new(f).with_max_level(max))
            .try_init(),
        (None, true) => builder
            .with_writer(std::io::stderr.with_max_level(max))
            .try_init(),
        (None, false) => Ok(()),
    };
}
