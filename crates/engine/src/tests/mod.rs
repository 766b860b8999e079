//! Unit tests of the engine over the fakes of `crate::testing`: no root, no processes,
//! no cluster. The integration tests in crates/e2e show the same with real plugins.

mod add;
mod devices;
mod hotplug;
mod inspect;
mod plan;
mod routes;
mod teardown;
