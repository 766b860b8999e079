//! The Plexus engine: from (configuration, pod, NADs) a plan of attachments, then
//! ADD, DEL, CHECK, STATUS and GC over the delegates, with rollback and a local state
//! file that lets DEL and CHECK work without the API server. Thin mode (the `plexus`
//! binary) and thick mode (`plexusd`) share it and its on-disk state.

mod add;
pub mod cluster;
pub mod config;
pub mod devices;
mod engine;
pub mod hotplug;
mod inspect;
pub mod local;
mod outcome;
pub mod plan;
pub mod resolve;
pub mod routes;
pub mod sandbox;
pub mod state;
mod teardown;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use cluster::{Cluster, EventType, PodInfo, PodOrigin};
pub use config::NetConf;
pub use devices::{Allocation, Device, DeviceAttributes, Devices, DraDevice};
pub use engine::{Engine, Request};
pub use inspect::valid_attachments;
