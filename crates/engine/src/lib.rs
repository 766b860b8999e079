//! The Plexus engine: from (configuration, pod, NADs) a plan of attachments, then
//! ADD, DEL, CHECK, STATUS and GC over the delegates, with rollback and a local state
//! file that lets DEL and CHECK work without the API server. Thin mode (the `plexus`
//! binary) and thick mode (`plexusd`) share it and its on-disk state.

pub mod cluster;
pub mod config;
mod engine;
pub mod local;
pub mod plan;
pub mod resolve;
pub mod routes;
pub mod state;

pub use cluster::{Cluster, EventType, PodInfo};
pub use config::NetConf;
pub use engine::{valid_attachments, Engine, Request};
