//! kube-proxy-rs: a drop-in replacement for Kubernetes' kube-proxy.
//!
//! The tree follows the flow of data: `sources` produce changes → the pure `core` turns them into desired state →
//! a `dataplane` per mode programs the kernel → the `runner` paces syncs and feeds `admin` (health, metrics).
//! `config` parses flags; `nodesetup` prepares the node (conntrack sysctls, OOM score) before the start; `lab`
//! builds throwaway network-namespace clusters for the demo and the tests.

pub mod admin;
pub mod config;
pub mod conntrack;
pub mod core;
pub mod dataplane;
pub mod demo;
pub mod lab;
pub mod model;
pub mod nodesetup;
pub mod runner;
pub mod sources;
#[cfg(test)]
mod testutil;
