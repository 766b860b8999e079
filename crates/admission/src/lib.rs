//! Admission and access control for networks, with the CNI plugin's own parser and
//! rules: [`rules`] (what is checked), [`review`] (AdmissionReview v1), [`server`] (the
//! `plexus-webhook` HTTPS server). `kubectl-plexus validate` runs the same rules
//! offline.

pub mod review;
pub mod rules;
pub mod server;
