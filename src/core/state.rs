//! The cluster as this node sees it, and the desired state derived from it, kept up to date incrementally:
//! an event marks its service dirty, `refresh` recomputes only dirty services and records which service
//! ports really changed (a no-op update changes nothing), like upstream's change trackers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::categorize::{TopologyInput, categorize};
use super::service_port::{EndpointAddr, PortEndpoint, ServicePort, ServicePortName};
use crate::model::{EndpointSlice, IpFamily, Node, Object, ObjectKey, ObjectKind, Service, ServiceKey};

/// One change from a source.
#[derive(Clone, Debug)]
pub enum Change {
    /// An object was created or changed (sources pass on only real changes).
    Upsert(Object),
    /// An object is gone.
    Delete(ObjectKey),
}

/// This node as the dataplanes need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub zone: Option<String>,
    /// The node's IPs: from its Node object (InternalIP first), else its interfaces' addresses.
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    pub being_deleted: bool,
    /// Every address on this host's interfaces (for `--nodeport-addresses` CIDRs).
    pub interface_addresses: Vec<IpAddr>,
}

impl NodeView {
    pub fn addresses_of(&self, family: IpFamily) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.iter().copied().filter(move |a| IpFamily::of(a) == family)
    }

    /// The first node IP of a family: what `--nodeport-addresses primary` selects.
    pub fn primary_address(&self, family: IpFamily) -> Option<IpAddr> {
        self.addresses_of(family).next()
    }
}

/// The service ports of one IP family.
#[derive(Clone, Debug, Default)]
pub struct FamilyState {
    pub ports: HashMap<ServicePortName, Arc<ServicePort>>,
}

/// Everything the dataplanes must make true.
#[derive(Clone, Debug, Default)]
pub struct DesiredState {
    pub node: NodeView,
    families: [FamilyState; 2],
}

impl DesiredState {
    pub fn family(&self, family: IpFamily) -> &FamilyState {
        &self.families[family as usize]
    }

    fn family_mut(&mut self, family: IpFamily) -> &mut FamilyState {
        &mut self.families[family as usize]
    }

    pub fn port_count(&self) -> usize {
        self.families.iter().map(|f| f.ports.len()).sum()
    }
}

/// What changed since the last `take_changes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    ports: [BTreeSet<ServicePortName>; 2],
    /// The node's addresses, zone, name or pod CIDRs changed.
    pub node_changed: bool,
    /// Service events applied (for kubeproxy_sync_proxy_rules_service_changes_*).
    pub service_events: u64,
    /// EndpointSlice events applied (for kubeproxy_sync_proxy_rules_endpoint_changes_*).
    pub endpoint_events: u64,
    /// last-change-trigger-time of slices changed since the last sync (network programming latency).
    pub trigger_times: Vec<jiff::Timestamp>,
}

impl Changes {
    pub fn ports(&self, family: IpFamily) -> &BTreeSet<ServicePortName> {
        &self.ports[family as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.ports.iter().all(BTreeSet::is_empty) && !self.node_changed
    }

    /// Fold `later` into `self` (used when a sync fails and its changes must be kept for the retry).
    pub fn merge(&mut self, later: Changes) {
        for (mine, theirs) in self.ports.iter_mut().zip(later.ports) {
            mine.extend(theirs);
        }
        self.node_changed |= later.node_changed;
        self.service_events += later.service_events;
        self.endpoint_events += later.endpoint_events;
        self.trigger_times.extend(later.trigger_times);
    }
}

/// Services, slices and the Node, plus the desired state derived from them.
#[derive(Debug)]
pub struct ClusterState {
    node_name: String,
    node: Option<Arc<Node>>,
    interface_addresses: Vec<IpAddr>,
    services: HashMap<ServiceKey, Arc<Service>>,
    /// Each service's slices, sorted by name (a service has a few; a vector costs less than a map).
    slices: HashMap<ServiceKey, Vec<Arc<EndpointSlice>>>,
    slice_owner: HashMap<(String, String), ServiceKey>,
    /// Service port names each service currently contributes, per family, to find ports that disappear.
    ports_of: HashMap<ServiceKey, Vec<(IpFamily, ServicePortName)>>,
    dirty: HashSet<ServiceKey>,
    desired: DesiredState,
    pending: Changes,
}

impl ClusterState {
    /// `node_name` is this node's name (`--hostname-override` or the hostname).
    pub fn new(node_name: impl Into<String>) -> Self {
        let node_name = node_name.into();
        let mut desired = DesiredState::default();
        desired.node.name = node_name.clone();
        ClusterState {
            node_name,
            node: None,
            interface_addresses: Vec::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            ports_of: HashMap::new(),
            dirty: HashSet::new(),
            desired,
            pending: Changes::default(),
        }
    }

    /// The addresses on this host's interfaces: the node IPs when no Node object gives them.
    pub fn set_interface_addresses(&mut self, mut addresses: Vec<IpAddr>) {
        addresses.sort();
        addresses.dedup();
        if addresses != self.interface_addresses {
            self.interface_addresses = addresses;
            self.update_node_view();
        }
    }

    /// Apply one change; returns whether it can affect the desired state.
    pub fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Upsert(Object::Service(svc)) => {
                self.pending.service_events += 1;
                self.dirty.insert(svc.key.clone());
                self.services.insert(svc.key.clone(), svc);
            }
            Change::Upsert(Object::EndpointSlice(slice)) => {
                self.pending.endpoint_events += 1;
                self.pending.trigger_times.extend(slice.trigger_time);
                let id = (slice.namespace.clone(), slice.name.clone());
                if let Some(old_owner) = self.slice_owner.insert(id, slice.service.clone())
                    && old_owner != slice.service
                {
                    self.remove_slice(&old_owner, &slice.name);
                }
                self.dirty.insert(slice.service.clone());
                let slices = self.slices.entry(slice.service.clone()).or_default();
                match slices.binary_search_by(|s| s.name.cmp(&slice.name)) {
                    Ok(at) => slices[at] = slice,
                    Err(at) => slices.insert(at, slice),
                }
            }
            Change::Upsert(Object::Node(node)) => {
                if node.name != self.node_name {
                    return false;
                }
                self.node = Some(node);
                self.update_node_view();
            }
            Change::Delete(key) => match key.kind {
                ObjectKind::Service => {
                    let svc = ServiceKey::new(key.namespace, key.name);
                    self.pending.service_events += 1;
                    self.services.remove(&svc);
                    self.dirty.insert(svc);
                }
                ObjectKind::EndpointSlice => {
                    self.pending.endpoint_events += 1;
                    if let Some(owner) = self.slice_owner.remove(&(key.namespace, key.name.clone())) {
                        self.remove_slice(&owner, &key.name);
                        self.dirty.insert(owner);
                    }
                }
                ObjectKind::Node => {
                    if key.name != self.node_name {
                        return false;
                    }
                    self.node = None;
                    self.update_node_view();
                }
            },
        }
        true
    }

    fn remove_slice(&mut self, owner: &ServiceKey, name: &str) {
        if let Some(slices) = self.slices.get_mut(owner) {
            slices.retain(|s| s.name != name);
            if slices.is_empty() {
                self.slices.remove(owner);
            }
        }
        self.dirty.insert(owner.clone());
    }

    fn update_node_view(&mut self) {
        let mut view = NodeView { name: self.node_name.clone(), ..NodeView::default() };
        if let Some(node) = &self.node {
            view.zone = node.zone().map(str::to_string);
            view.addresses = node.addresses.clone();
            view.pod_cidrs = node.pod_cidrs.clone();
            view.being_deleted = node.being_deleted;
        }
        view.interface_addresses = self.interface_addresses.clone();
        if view.addresses.is_empty() {
            // Without a Node object the node's IPs are its interfaces' (loopback and link-local excluded).
            view.addresses = self.interface_addresses.iter().copied().filter(is_node_ip_candidate).collect();
        }
        if view == self.desired.node {
            return;
        }
        if view.zone != self.desired.node.zone {
            // Topology hints are evaluated against the node's zone: every service may choose differently now.
            self.dirty.extend(self.services.keys().cloned());
        }
        self.desired.node = view;
        self.pending.node_changed = true;
    }

    /// Recompute the desired state of every dirty service.
    pub fn refresh(&mut self) {
        let dirty: Vec<ServiceKey> = self.dirty.drain().collect();
        for key in dirty {
            let new_ports = match self.services.get(&key) {
                Some(svc) => build_ports(svc, self.slices.get(&key), &self.desired.node),
                None => Vec::new(),
            };
            let new_names: Vec<(IpFamily, ServicePortName)> =
                new_ports.iter().map(|p| (p.family, p.name.clone())).collect();
            for (family, name) in self.ports_of.remove(&key).unwrap_or_default() {
                if !new_names.contains(&(family, name.clone())) {
                    self.desired.family_mut(family).ports.remove(&name);
                    self.pending.ports[family as usize].insert(name);
                }
            }
            for port in new_ports {
                let family = port.family;
                let ports = &mut self.desired.family_mut(family).ports;
                if ports.get(&port.name).is_some_and(|old| **old == port) {
                    continue;
                }
                self.pending.ports[family as usize].insert(port.name.clone());
                ports.insert(port.name.clone(), Arc::new(port));
            }
            if !new_names.is_empty() {
                self.ports_of.insert(key, new_names);
            }
        }
    }

    /// The desired state (call `refresh` first to include the latest changes).
    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    /// Refresh, then hand out and reset the record of changes.
    pub fn take_changes(&mut self) -> Changes {
        self.refresh();
        std::mem::take(&mut self.pending)
    }

    /// Changes applied but not yet taken (for the *_changes_pending gauges).
    pub fn pending(&self) -> &Changes {
        &self.pending
    }
}

fn is_node_ip_candidate(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified(),
    }
}

/// Build the per-family service ports of one service from its slices: pure.
fn build_ports(svc: &Service, slices: Option<&Vec<Arc<EndpointSlice>>>, node: &NodeView) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for &cluster_ip in &svc.cluster_ips {
        let family = IpFamily::of(&cluster_ip);
        let of_family = |ips: &[IpAddr]| ips.iter().copied().filter(|ip| IpFamily::of(ip) == family).collect();
        for spec in &svc.ports {
            let endpoints = port_endpoints(slices, family, &spec.name, spec.protocol, node);
            let mut port = ServicePort {
                name: ServicePortName { service: svc.key.clone(), port: spec.name.clone(), protocol: spec.protocol },
                family,
                port: spec.port,
                node_port: spec.node_port,
                cluster_ip,
                external_ips: of_family(&svc.external_ips),
                load_balancer_ips: of_family(&svc.load_balancer_ips),
                load_balancer_source_ranges: svc
                    .load_balancer_source_ranges
                    .iter()
                    .copied()
                    .filter(|n| IpFamily::of_net(n) == family)
                    .collect(),
                session_affinity_timeout: svc.session_affinity_timeout,
                external_policy_local: svc.external_policy_local,
                internal_policy_local: svc.internal_policy_local,
                health_check_node_port: svc.health_check_node_port,
                endpoints,
                cluster_endpoints: Vec::new(),
                local_endpoints: Vec::new(),
                has_any_endpoints: false,
            };
            let chosen = categorize(
                &port.endpoints,
                &TopologyInput {
                    node_name: &node.name,
                    zone: node.zone.as_deref(),
                    uses_cluster_endpoints: port.uses_cluster_endpoints(),
                    uses_local_endpoints: port.uses_local_endpoints(),
                },
            );
            port.cluster_endpoints = chosen.cluster;
            port.local_endpoints = chosen.local;
            port.has_any_endpoints = chosen.has_any_endpoints;
            out.push(port);
        }
    }
    out
}

/// The endpoints of one service port in one family, from every slice of the service, deduplicated by address
/// (the first slice by name wins, as slices are walked in name order) and sorted.
fn port_endpoints(
    slices: Option<&Vec<Arc<EndpointSlice>>>,
    family: IpFamily,
    port_name: &str,
    protocol: crate::model::Protocol,
    node: &NodeView,
) -> Vec<PortEndpoint> {
    let mut seen: BTreeMap<EndpointAddr, PortEndpoint> = BTreeMap::new();
    for slice in slices.into_iter().flatten().filter(|s| s.family == family) {
        let Some(port) = slice.ports.iter().find(|p| p.name == port_name && p.protocol == protocol) else {
            continue;
        };
        for ep in &slice.endpoints {
            let addr = EndpointAddr { ip: ep.ip, port: port.port };
            seen.entry(addr).or_insert_with(|| PortEndpoint {
                addr,
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                is_local: ep.node_name.as_deref() == Some(node.name.as_str()),
                hints: ep.hints.clone(),
            });
        }
    }
    seen.into_values().collect()
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
