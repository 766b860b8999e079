//! The CNI error object and the spec's well-known error codes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Error codes of CNI spec 1.1.0 §Error, plus the two libcni-only codes runtimes use.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin not available, existing containers may have limited connectivity (STATUS).
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    /// libcni's `ErrInternal`: a failure that fits no spec code (a delegate that
    /// failed without an error object, a process that could not be run).
    pub const INTERNAL: u32 = 999;
}

/// A CNI error as printed on stdout: `{cniVersion, code, msg, details}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    /// The spec version the error is reported in; filled when printed.
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    /// Spec error code (0-99 reserved, 100+ plugin specific).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation, may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
    /// The plugin was killed before it finished (at its time limit): unlike a plugin
    /// that failed, it had no chance to undo what it had done, and only its DEL can.
    /// Never printed.
    #[serde(skip)]
    pub interrupted: bool,
}

impl CniError {
    /// An error with `code` and `msg`.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            cni_version: String::new(),
            code,
            msg: msg.into(),
            details: String::new(),
            interrupted: false,
        }
    }

    /// A plugin killed before it finished (code 11: the runtime may try again).
    pub fn interrupted(msg: impl Into<String>) -> Self {
        CniError {
            interrupted: true,
            ..CniError::new(code::TRY_AGAIN_LATER, msg)
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Prefixes the message with context, keeping the code.
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    /// The JSON document printed on stdout, with `cniVersion` set to `version`.
    pub fn to_json(&self, version: &str) -> Vec<u8> {
        let mut e = self.clone();
        if e.cni_version.is_empty() {
            e.cni_version = version.to_string();
        }
        serde_json::to_vec(&e)
            .unwrap_or_else(|_| b"{\"code\":999,\"msg\":\"unprintable error\"}".to_vec())
    }

    /// All of `errors` as one (the first one's code, every message), or `Ok` when empty:
    /// teardown, GC and CHECK go on after an error and report them all.
    pub fn join(errors: Vec<CniError>) -> Result<()> {
        let Some(first) = errors.first() else {
            return Ok(());
        };
        let msg = errors
            .iter()
            .map(|e| e.msg.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Err(CniError::new(first.code, msg))
    }

    /// Shorthand for [`code::INVALID_NETWORK_CONFIG`].
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_NETWORK_CONFIG, msg)
    }

    /// Shorthand for [`code::INVALID_ENVIRONMENT`].
    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENVIRONMENT, msg)
    }

    /// Shorthand for [`code::DECODING_FAILURE`].
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(code::DECODING_FAILURE, msg)
    }

    /// Shorthand for [`code::IO_FAILURE`].
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(code::IO_FAILURE, msg)
    }

    /// Shorthand for [`code::INTERNAL`].
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, msg)
    }

    /// Shorthand for [`code::INCOMPATIBLE_VERSION`].
    pub fn incompatible_version(msg: impl Into<String>) -> Self {
        Self::new(code::INCOMPATIBLE_VERSION, msg)
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        write!(f, " [code {}]", self.code)
    }
}

impl std::error::Error for CniError {}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, CniError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_spec_shape() {
        let e = CniError::new(7, "bad").with_details("more");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json("1.1.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.1.0","code":7,"msg":"bad","details":"more"})
        );
        let e = CniError::new(11, "later");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json("0.4.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"0.4.0","code":11,"msg":"later"})
        );
    }

    #[test]
    fn context_keeps_code() {
        let e = CniError::new(51, "down").context("plugin \"x\"");
        assert_eq!(e.code, 51);
        assert_eq!(e.msg, "plugin \"x\": down");
    }
}
