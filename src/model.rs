//! Plain data the proxy works with: Services, EndpointSlices and the Node, converted at the edge from the
//! Kubernetes wire types. Everything here is owned, comparable and free of I/O, so the core can diff it.

mod node;
mod service;
mod slice;

pub mod convert;
#[cfg(test)]
pub mod fixtures;
pub use convert::{ConvertError, Object, ObjectKey, ObjectKind};
pub use node::Node;
pub use service::{Protocol, Service, ServiceKey, ServicePortSpec, ServiceType};
pub use slice::{Endpoint, EndpointSlice, Hints, SlicePort};

use std::net::IpAddr;

/// The two IP families; the proxy keeps one set of kernel state per family, like upstream's per-family proxiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    pub fn of_net(net: &ipnet::IpNet) -> IpFamily {
        match net {
            ipnet::IpNet::V4(_) => IpFamily::V4,
            ipnet::IpNet::V6(_) => IpFamily::V6,
        }
    }

    /// Kubernetes' spelling, as in `spec.ipFamilies`.
    pub fn k8s_name(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}
