//! The pure core: Services + EndpointSlices + this Node in, the proxy's desired state out, with a record of
//! which service ports changed since the last sync. No I/O, no clocks, no globals: every input is passed in.

mod categorize;
#[cfg(test)]
pub mod fixtures;
mod service_port;
mod state;

pub use categorize::{Categorized, TopologyInput, categorize};
pub use service_port::{EndpointAddr, PortEndpoint, ServicePort, ServicePortName};
pub use state::{Change, Changes, ClusterState, DesiredState, FamilyState, NodeView};
