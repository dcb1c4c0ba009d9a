use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// This node, as far as the proxy cares.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Node {
    pub name: String,
    /// InternalIP addresses first, then ExternalIP ones.
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    pub labels: BTreeMap<String, String>,
    /// Being deleted, or tainted ToBeDeletedByClusterAutoscaler: /healthz reports 503.
    pub being_deleted: bool,
}

impl Node {
    pub const ZONE_LABEL: &'static str = "topology.kubernetes.io/zone";

    pub fn zone(&self) -> Option<&str> {
        self.labels.get(Self::ZONE_LABEL).map(String::as_str).filter(|z| !z.is_empty())
    }
}
