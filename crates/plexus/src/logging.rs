//! Logging as the configuration asks (`logLevel`, `logFile`, `logToStderr`). Never stdout:
//! stdout carries the one CNI document.

use plexus_engine::NetConf;
use std::sync::Mutex;
use tracing_subscriber::fmt::writer::MakeWriterExt;

fn level(conf: &NetConf) -> tracing::Level {
    match conf.log_level.as_str() {
        "debug" => tracing::Level::DEBUG,
        "verbose" => tracing::Level::INFO,
        _ => tracing::Level::ERROR,
    }
}

/// Installs the subscriber once; later calls do nothing.
pub fn init(conf: &NetConf) {
    let max = level(conf);
    let to_stderr = conf.log_to_stderr.unwrap_or(true);
    let file = (!conf.log_file.is_empty())
        .then(|| {
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
