//! Which endpoints a service port's traffic may use, following upstream's `CategorizeEndpoints`
//! (pkg/proxy/topology.go): ready endpoints first, serving+terminating ones as a fallback, topology hints
//! for cluster traffic, and a separate local set for Local traffic policies.

use super::service_port::{EndpointAddr, PortEndpoint};

/// The facts about this node and this service that endpoint selection depends on.
#[derive(Clone, Copy, Debug)]
pub struct TopologyInput<'a> {
    pub node_name: &'a str,
    /// The node's topology.kubernetes.io/zone label, if any.
    pub zone: Option<&'a str>,
    pub uses_cluster_endpoints: bool,
    pub uses_local_endpoints: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    pub cluster: Vec<EndpointAddr>,
    pub local: Vec<EndpointAddr>,
    pub has_any_endpoints: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    All,
    SameNode,
    SameZone,
}

/// Use hints only when every ready endpoint carries one and some hint names this node (or its zone);
/// otherwise a partial rollout of hints could starve this node of endpoints.
fn topology(endpoints: &[PortEndpoint], input: &TopologyInput) -> Topology {
    let mut any_ready = false;
    let (mut all_node_hints, mut found_node) = (true, false);
    let (mut all_zone_hints, mut found_zone) = (true, false);
    for ep in endpoints.iter().filter(|e| e.ready) {
        any_ready = true;
        if ep.node_hints().is_empty() {
            all_node_hints = false;
        } else if ep.node_hints().iter().any(|n| n == input.node_name) {
            found_node = true;
        }
        if ep.zone_hints().is_empty() {
            all_zone_hints = false;
        } else if input.zone.is_some_and(|z| ep.zone_hints().iter().any(|h| h == z)) {
            found_zone = true;
        }
    }
    if !any_ready {
        Topology::All
    } else if all_node_hints && found_node {
        Topology::SameNode
    } else if all_zone_hints && found_zone {
        Topology::SameZone
    } else {
        Topology::All
    }
}

fn addrs(endpoints: &[PortEndpoint], keep: impl Fn(&PortEndpoint) -> bool) -> Vec<EndpointAddr> {
    endpoints.iter().filter(|e| keep(e)).map(|e| e.addr).collect()
}

/// Choose the cluster and local endpoint sets of one service port.
pub fn categorize(endpoints: &[PortEndpoint], input: &TopologyInput) -> Categorized {
    let mut out = Categorized::default();
    if input.uses_cluster_endpoints {
        let topo = topology(endpoints, input);
        let in_topology = |ep: &PortEndpoint| match topo {
            Topology::All => true,
            Topology::SameNode => ep.node_hints().iter().any(|n| n == input.node_name),
            Topology::SameZone => input.zone.is_some_and(|z| ep.zone_hints().iter().any(|h| h == z)),
        };
        out.cluster = addrs(endpoints, |ep| ep.ready && in_topology(ep));
        if out.cluster.is_empty() {
            // Topology is only ever used when some endpoint is ready, so the fallback ignores it.
            out.cluster = addrs(endpoints, |ep| ep.serving && ep.terminating);
        }
        out.has_any_endpoints = !out.cluster.is_empty();
    }
    if !input.uses_local_endpoints {
        return out;
    }
    let usable = |ep: &PortEndpoint| ep.ready || (ep.serving && ep.terminating);
    out.has_any_endpoints |= endpoints.iter().any(usable);
    let local_ready = endpoints.iter().any(|ep| ep.ready && ep.is_local);
    out.local = if local_ready {
        addrs(endpoints, |ep| ep.ready && ep.is_local)
    } else {
        addrs(endpoints, |ep| ep.serving && ep.terminating && ep.is_local)
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, ready: bool, serving: bool, terminating: bool, local: bool) -> PortEndpoint {
        PortEndpoint {
            addr: EndpointAddr { ip: format!("10.0.0.{last}").parse().unwrap(), port: 80 },
            ready,
            serving,
            terminating,
            is_local: local,
            hints: None,
        }
    }

    fn hint(ep: &mut PortEndpoint, f: impl FnOnce(&mut crate::model::Hints)) {
        let mut h = ep.hints.as_deref().cloned().unwrap_or_default();
        f(&mut h);
        ep.hints = Some(std::sync::Arc::new(h));
    }

    fn ips(v: &[EndpointAddr]) -> Vec<String> {
        v.iter().map(|a| a.ip.to_string()).collect()
    }

    const CLUSTER: TopologyInput = TopologyInput {
        node_name: "node-a",
        zone: Some("zone-a"),
        uses_cluster_endpoints: true,
        uses_local_endpoints: false,
    };
    const LOCAL: TopologyInput = TopologyInput { uses_cluster_endpoints: false, uses_local_endpoints: true, ..CLUSTER };
    const BOTH: TopologyInput = TopologyInput { uses_cluster_endpoints: true, uses_local_endpoints: true, ..CLUSTER };

    #[test]
    fn ready_endpoints_are_preferred_over_terminating_ones() {
        let eps = [ep(1, true, true, false, false), ep(2, false, true, true, false)];
        let c = categorize(&eps, &CLUSTER);
        assert_eq!(ips(&c.cluster), ["10.0.0.1"]);
        assert!(c.has_any_endpoints);
    }

    #[test]
    fn serving_terminating_endpoints_are_the_fallback() {
        let eps =
            [ep(1, false, false, true, false), ep(2, false, true, true, false), ep(3, false, false, false, false)];
        let c = categorize(&eps, &CLUSTER);
        assert_eq!(ips(&c.cluster), ["10.0.0.2"]);
        assert!(c.has_any_endpoints);
    }

    #[test]
    fn no_usable_endpoint_means_none() {
        let eps = [ep(1, false, false, true, false), ep(2, false, false, false, false)];
        let c = categorize(&eps, &BOTH);
        assert!(c.cluster.is_empty() && c.local.is_empty());
        assert!(!c.has_any_endpoints);
    }

    #[test]
    fn local_set_takes_only_this_nodes_endpoints() {
        let eps = [ep(1, true, true, false, true), ep(2, true, true, false, false)];
        let c = categorize(&eps, &LOCAL);
        assert_eq!(ips(&c.local), ["10.0.0.1"]);
        assert!(c.cluster.is_empty());
    }

    #[test]
    fn local_set_falls_back_to_local_terminating_separately_from_cluster_set() {
        // Cluster has a ready remote endpoint; locally only a terminating one is serving.
        let eps = [ep(1, false, true, true, true), ep(2, true, true, false, false)];
        let c = categorize(&eps, &BOTH);
        assert_eq!(ips(&c.cluster), ["10.0.0.2"]);
        assert_eq!(ips(&c.local), ["10.0.0.1"]);
    }

    #[test]
    fn no_local_endpoint_but_remote_ones_exist() {
        let eps = [ep(2, true, true, false, false)];
        let c = categorize(&eps, &LOCAL);
        assert!(c.local.is_empty());
        assert!(c.has_any_endpoints, "remote endpoints exist: Local policy drops rather than rejects");
    }

    #[test]
    fn zone_hints_used_when_all_ready_endpoints_have_them_and_one_matches() {
        let mut a = ep(1, true, true, false, false);
        hint(&mut a, |h| h.zones = vec!["zone-a".into()]);
        let mut b = ep(2, true, true, false, false);
        hint(&mut b, |h| h.zones = vec!["zone-b".into()]);
        let c = categorize(&[a.clone(), b.clone()], &CLUSTER);
        assert_eq!(ips(&c.cluster), ["10.0.0.1"]);

        // One ready endpoint without hints: hints are ignored.
        let plain = ep(3, true, true, false, false);
        let c = categorize(&[a.clone(), b.clone(), plain], &CLUSTER);
        assert_eq!(ips(&c.cluster), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);

        // No hint names our zone: hints are ignored.
        let c = categorize(&[b.clone()], &CLUSTER);
        assert_eq!(ips(&c.cluster), ["10.0.0.2"]);
        let no_zone = TopologyInput { zone: None, ..CLUSTER };
        let c = categorize(&[a, b], &no_zone);
        assert_eq!(c.cluster.len(), 2);
    }

    #[test]
    fn unready_endpoints_without_hints_do_not_disable_zone_hints() {
        let mut a = ep(1, true, true, false, false);
        hint(&mut a, |h| h.zones = vec!["zone-a".into()]);
        let terminating = ep(2, false, true, true, false);
        let c = categorize(&[a, terminating], &CLUSTER);
        assert_eq!(ips(&c.cluster), ["10.0.0.1"]);
    }

    #[test]
    fn node_hints_take_precedence_over_zone_hints() {
        let mut a = ep(1, true, true, false, false);
        hint(&mut a, |h| h.zones = vec!["zone-a".into()]);
        hint(&mut a, |h| h.nodes = vec!["node-b".into()]);
        let mut b = ep(2, true, true, false, false);
        hint(&mut b, |h| h.zones = vec!["zone-a".into()]);
        hint(&mut b, |h| h.nodes = vec!["node-a".into()]);
        let c = categorize(&[a.clone(), b.clone()], &CLUSTER);
        assert_eq!(ips(&c.cluster), ["10.0.0.2"]);

        // Node hints that do not name this node: fall back to zone hints.
        hint(&mut b, |h| h.nodes = vec!["node-c".into()]);
        let c = categorize(&[a, b], &CLUSTER);
        assert_eq!(ips(&c.cluster), ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn topology_does_not_apply_to_local_set() {
        let mut a = ep(1, true, true, false, true);
        hint(&mut a, |h| h.zones = vec!["zone-b".into()]);
        let mut b = ep(2, true, true, false, false);
        hint(&mut b, |h| h.zones = vec!["zone-a".into()]);
        let c = categorize(&[a, b], &BOTH);
        assert_eq!(ips(&c.cluster), ["10.0.0.2"]);
        assert_eq!(ips(&c.local), ["10.0.0.1"]);
    }
}
