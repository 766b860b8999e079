//! The CNI protocol, spec 1.1.0, from both sides.
//!
//! - [`result`]: results of every version 0.1.0..1.1.0 and libcni's conversion rules;
//! - [`config`]: plugin configurations and configuration lists, unknown keys kept;
//! - [`loader`]: loading `.conf`/`.conflist`/`.json` files the way libcni does;
//! - [`plugin`]: the plugin side (read `CNI_*` and stdin, dispatch, print one document);
//! - [`exec`] and [`runtime`]: the runtime side (find and run delegates, whole conflists);
//! - [`cache`]: the libcni-compatible result cache.

pub mod args;
pub mod cache;
pub mod config;
pub mod error;
pub mod exec;
pub mod fsutil;
pub mod loader;
pub mod plugin;
pub mod result;
pub mod runtime;
pub mod validate;
pub mod version;

pub use error::{code, CniError, Result};
pub use ipnet;
pub use result::CniResult;
