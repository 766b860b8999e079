//! `plexus-conformance`: a black-box conformance suite for CNI meta-plugins that
//! implement the NPWG multi-network specification (v1.3), the Device Information
//! Specification (1.1) and CNI 1.1. It executes a candidate exactly as a container
//! runtime does (a process, `CNI_*`, the configuration on stdin: ADD, CHECK, DEL,
//! STATUS, GC), in real network namespaces with the reference plugins, against a
//! Kubernetes API (the repo's test API server, or any cluster), and reports
//! requirement by requirement. It knows nothing of any implementation: the candidate is
//! described by a file ([`candidate`]).

pub mod candidate;
pub mod cluster;
pub mod report;
pub mod requirements;
pub mod suite;
pub mod world;
