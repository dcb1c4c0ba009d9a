//! The shape of kube-proxy-rs's nftables ruleset: a fixed skeleton per family plus, per service port, a few
//! chains and map elements. Few chains and shared named maps keep the kernel's work small (see
//! ../shared/notes/kernel-and-tools.md): endpoints are chosen with `numgen random mod N offset B` into endpoint
//! maps shared by the services whose index blocks fall in the same span, so no chain exists per endpoint (except
//! for session affinity).

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;

use super::ir::*;
use crate::core::{EndpointAddr, ServicePort};
pub use crate::dataplane::settings::LocalTraffic;
use crate::model::Protocol;

pub const TABLE: &str = "kube-proxy-rs";
/// Upstream kube-proxy's nftables table: replaced by ours in the first sync when we take over a node.
pub const UPSTREAM_TABLE: &str = "kube-proxy";

// Named sets and maps of the skeleton.
pub const CLUSTER_IPS: &str = "cluster-ips";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Indexes per endpoint map. The kernel checks every element added to a map against every rule that uses the
/// map, and every rule that starts using a map against all its elements (nft_add_set_elem, nf_tables_bind_set):
/// one map for all services costs elements × services — 13.6 s for a full sync of 10,000 services × 10
/// endpoints. A map per span of the index space is used by a few dozen rules only. Many small maps cost too, as
/// the kernel finds a set by name by walking the table's sets: 512 measured best (0.65 s; 128: 0.94 s, 2048:
/// 0.85 s; examples/nftables_scale.rs).
pub const ENDPOINT_MAP_SPAN: u32 = 512;

/// The endpoint map of the index block at `offset`, per protocol (nft type-checks a DNAT's protocol against the
/// map's).
pub fn endpoints_map(protocol: Protocol, offset: u32) -> String {
    format!("endpoints-{}-{}", protocol.name(), offset / ENDPOINT_MAP_SPAN)
}

/// The endpoint-chain map (session affinity) of the index block at `offset`.
pub fn endpoint_chains_map(offset: u32) -> String {
    format!("endpoint-chains-{}", offset / ENDPOINT_MAP_SPAN)
}

/// The name of a set in a port's elements: a skeleton set, or an endpoint map.
pub type SetName = Cow<'static, str>;
pub const HAIRPIN: &str = "hairpin";
pub const FIREWALL_IPS: &str = "firewall-ips";

// Chains of the skeleton.
const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
const MASQUERADING: &str = "masquerading";
const SERVICES: &str = "services";
const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
const REJECT_CHAIN: &str = "reject-chain";
const FIREWALL_CHECK: &str = "firewall-check";

/// Which local addresses accept NodePort traffic (`--nodeport-addresses`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local address (`fib daddr type local`).
    All,
    /// Addresses listed in the `nodeport-ips` set, computed from the node.
    Listed,
}

/// Everything the ruleset's shape depends on besides the service ports, for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyConfig {
    pub family: Family,
    pub masquerade_mark: u32,
    pub masquerade_all: bool,
    pub local: LocalTraffic,
    pub nodeports: NodePortAddresses,
    /// The node's IPs of this family: a source range containing one lets the node reach its own LB IPs.
    pub node_ips: Vec<IpAddr>,
}

/// The objects one service port contributes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PortObjects {
    /// Chains (with their rules) that belong to this port alone.
    pub chains: Vec<(String, Vec<Rule>)>,
    /// Dynamic sets (session affinity) that belong to this port alone.
    pub sets: Vec<SetDef>,
    /// Endpoint maps this port's rules use. Shared with the other ports of the same span: created when first
    /// needed, kept while the table lives.
    pub maps: Vec<SetDef>,
    /// Elements (of the skeleton's maps, and of endpoint maps) whose keys belong to this port alone.
    pub elements: Vec<(SetName, Element)>,
    /// Elements other ports may contribute too (a cluster IP, a hairpin pair): reference-counted.
    pub shared: Vec<Shared>,
}

/// An element several service ports may need: it exists while any of them does. Kept as the address alone, so
/// the reference counts of 100k endpoints stay small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shared {
    /// A cluster IP, in `cluster-ips`.
    ClusterIp(IpAddr),
    /// An endpoint's (address . address) pair, in `hairpin`.
    Hairpin(IpAddr),
}

impl Shared {
    /// The set and element this stands for.
    pub fn element(self) -> (&'static str, Element) {
        match self {
            Shared::ClusterIp(ip) => (CLUSTER_IPS, Element { key: vec![Value::Addr(ip)], data: None }),
            Shared::Hairpin(ip) => (HAIRPIN, Element { key: vec![Value::Addr(ip), Value::Addr(ip)], data: None }),
        }
    }
}

/// Which of a port's dispatch chains an index block belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOwner {
    /// The chain over the cluster endpoints (`svc-…`).
    Cluster = 0,
    /// The chain over the local endpoints (`local-…`).
    Local = 1,
}

/// Allocates a block of indexes in the shared endpoint maps for a dispatch chain of `n` endpoints.
pub trait BlockAllocator {
    fn block(&mut self, owner: BlockOwner, n: u32) -> u32;
}

impl FamilyConfig {
    fn mark_masq() -> Stmt {
        Stmt::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into()))
    }

    fn nodeport_match(&self) -> Stmt {
        match self.nodeports {
            NodePortAddresses::All => {
                Stmt::Cmp { field: Field::FibDaddrType, value: Value::AddrTypeLocal, negate: false }
            }
            NodePortAddresses::Listed => {
                Stmt::Lookup { key: vec![Field::Daddr], set: NODEPORT_IPS.into(), negate: false }
            }
        }
    }

    /// A statement matching packets that did NOT come from a local pod, if local traffic is detectable.
    fn not_local(&self) -> Option<Stmt> {
        match &self.local {
            LocalTraffic::Undetectable => None,
            LocalTraffic::Cidr(net) => Some(Stmt::Cmp { field: Field::Saddr, value: Value::Net(*net), negate: true }),
            LocalTraffic::Bridge(name) => {
                Some(Stmt::Cmp { field: Field::Iifname, value: Value::Iface(name.clone()), negate: true })
            }
            LocalTraffic::InterfacePrefix(p) => {
                Some(Stmt::Cmp { field: Field::Iifname, value: Value::Iface(format!("{p}*")), negate: true })
            }
        }
    }

    /// The positive form of `not_local`.
    fn is_local(&self) -> Option<Stmt> {
        self.not_local().map(|s| match s {
            Stmt::Cmp { field, value, .. } => Stmt::Cmp { field, value, negate: false },
            other => other,
        })
    }

    /// Sets, maps, chains and rules that exist whatever the services are.
    pub fn skeleton(&self) -> Vec<Op> {
        use DataType::{Addr, Port, Proto};
        let set = |name: &str, key: Vec<DataType>, data: Vec<DataType>| {
            Op::AddSet(SetDef { name: name.into(), key, data, timeout: None })
        };
        let mut ops = vec![
            set(CLUSTER_IPS, vec![Addr], vec![]),
            set(NODEPORT_IPS, vec![Addr], vec![]),
            set(SERVICE_IPS, vec![Addr, Proto, Port], vec![DataType::Verdict]),
            set(SERVICE_NODEPORTS, vec![Proto, Port], vec![DataType::Verdict]),
            set(NO_ENDPOINT_SERVICES, vec![Addr, Proto, Port], vec![DataType::Verdict]),
            set(NO_ENDPOINT_NODEPORTS, vec![Proto, Port], vec![DataType::Verdict]),
            set(HAIRPIN, vec![Addr, Addr], vec![]),
            set(FIREWALL_IPS, vec![Addr, Proto, Port], vec![DataType::Verdict]),
        ];
        let mut chain = |name: &str, base: Option<BaseChain>, rules: Vec<Rule>| {
            ops.push(Op::AddChain { name: name.into(), base });
            ops.extend(rules.into_iter().map(|rule| Op::AddRule { chain: name.into(), rule }));
        };
        let mark = self.masquerade_mark;
        let jump = |c: &str| Stmt::Verdict(Verdict::Jump(c.into()));
        chain(MARK_FOR_MASQUERADE, None, vec![vec![Stmt::MarkOr(mark)]]);
        chain(
            MASQUERADING,
            None,
            vec![
                // Hairpin: a pod reaching itself through a service must see the node as the source, or its
                // reply would bypass conntrack's un-DNAT.
                vec![
                    Stmt::CtStatusDnat,
                    Stmt::Lookup { key: vec![Field::Saddr, Field::Daddr], set: HAIRPIN.into(), negate: false },
                    Stmt::MarkOr(mark),
                ],
                vec![Stmt::MarkMatch { mask: mark, value: 0 }, Stmt::Verdict(Verdict::Return)],
                vec![Stmt::MarkXor(mark)],
                vec![Stmt::Masquerade],
            ],
        );
        let mut services = Vec::new();
        let to_cluster_ip = Stmt::Lookup { key: vec![Field::Daddr], set: CLUSTER_IPS.into(), negate: false };
        if self.masquerade_all {
            services.push(vec![to_cluster_ip, Self::mark_masq()]);
        } else if let Some(not_local) = self.not_local() {
            // Off-cluster clients of a cluster IP may be routed back elsewhere: masquerade them.
            services.push(vec![to_cluster_ip, not_local, Self::mark_masq()]);
        }
        services
            .push(vec![Stmt::Vmap { key: vec![Field::Daddr, Field::L4Proto, Field::Dport], map: SERVICE_IPS.into() }]);
        services.push(vec![
            self.nodeport_match(),
            Stmt::Vmap { key: vec![Field::L4Proto, Field::Dport], map: SERVICE_NODEPORTS.into() },
        ]);
        chain(SERVICES, None, services);
        chain(
            SERVICE_ENDPOINTS_CHECK,
            None,
            vec![vec![Stmt::Vmap {
                key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
                map: NO_ENDPOINT_SERVICES.into(),
            }]],
        );
        chain(
            NODEPORT_ENDPOINTS_CHECK,
            None,
            vec![vec![
                self.nodeport_match(),
                Stmt::Vmap { key: vec![Field::L4Proto, Field::Dport], map: NO_ENDPOINT_NODEPORTS.into() },
            ]],
        );
        let tcp = Stmt::Cmp { field: Field::L4Proto, value: Value::Proto(Protocol::Tcp), negate: false };
        chain(REJECT_CHAIN, None, vec![vec![tcp, Stmt::RejectTcpReset], vec![Stmt::Reject]]);
        chain(
            FIREWALL_CHECK,
            None,
            vec![vec![Stmt::Vmap { key: vec![Field::Daddr, Field::L4Proto, Field::Dport], map: FIREWALL_IPS.into() }]],
        );
        chain(
            CLUSTER_IPS_CHECK,
            None,
            vec![vec![Stmt::Lookup { key: vec![Field::Daddr], set: CLUSTER_IPS.into(), negate: false }, Stmt::Reject]],
        );
        let base = |chain_type, hook, priority| Some(BaseChain { chain_type, hook, priority });
        let new = |c: &str| vec![Stmt::CtStateNew, jump(c)];
        chain("nat-prerouting", base(ChainType::Nat, Hook::Prerouting, -100), vec![vec![jump(SERVICES)]]);
        chain("nat-output", base(ChainType::Nat, Hook::Output, -100), vec![vec![jump(SERVICES)]]);
        chain("nat-postrouting", base(ChainType::Nat, Hook::Postrouting, 100), vec![vec![jump(MASQUERADING)]]);
        chain(
            "filter-input",
            base(ChainType::Filter, Hook::Input, -110),
            vec![new(NODEPORT_ENDPOINTS_CHECK), new(SERVICE_ENDPOINTS_CHECK)],
        );
        chain(
            "filter-forward",
            base(ChainType::Filter, Hook::Forward, -110),
            vec![new(SERVICE_ENDPOINTS_CHECK), new(CLUSTER_IPS_CHECK)],
        );
        // loadBalancerSourceRanges are checked before DNAT, while the destination is still the LB IP.
        chain("filter-prerouting", base(ChainType::Filter, Hook::Prerouting, -110), vec![new(FIREWALL_CHECK)]);
        chain(
            "filter-output",
            base(ChainType::Filter, Hook::Output, -110),
            vec![new(FIREWALL_CHECK), new(SERVICE_ENDPOINTS_CHECK)],
        );
        // After DNAT: anything still addressed to a cluster IP used a port the service does not define.
        chain("filter-output-post-dnat", base(ChainType::Filter, Hook::Output, -90), vec![new(CLUSTER_IPS_CHECK)]);
        ops
    }

    /// Elements of `nodeport-ips` for these addresses.
    pub fn nodeport_ip_elements(&self, ips: &[IpAddr]) -> Vec<Element> {
        ips.iter().map(|ip| Element { key: vec![Value::Addr(*ip)], data: None }).collect()
    }

    /// The chains, sets and elements of one service port.
    pub fn port_objects(&self, p: &ServicePort, blocks: &mut dyn BlockAllocator) -> PortObjects {
        debug_assert_eq!(Family::of(p.family), self.family);
        let mut out = PortObjects::default();
        let id = port_id(p);
        let svc_chain = format!("svc-{id}");
        let local_chain = format!("local-{id}");
        let ext_chain = format!("ext-{id}");
        let proto = Value::Proto(p.protocol());
        let port = Value::Port(p.port);
        let goto = |c: &str| Some(ElemData::Verdict(Verdict::Goto(c.to_string())));
        let reject = goto(REJECT_CHAIN);
        let drop = Some(ElemData::Verdict(Verdict::Drop));
        let elem = |key: Vec<Value>, data: Option<ElemData>| Element { key, data };

        let cluster_ok = p.uses_cluster_endpoints() && !p.cluster_endpoints.is_empty();
        let local_ok = p.uses_local_endpoints() && !p.local_endpoints.is_empty();
        if cluster_ok {
            self.dispatch_chain(&mut out, &id, (&svc_chain, BlockOwner::Cluster), p, &p.cluster_endpoints, blocks);
        }
        if local_ok {
            self.dispatch_chain(&mut out, &id, (&local_chain, BlockOwner::Local), p, &p.local_endpoints, blocks);
        }
        if p.session_affinity_timeout.is_some() {
            for ep in p.reachable_endpoints() {
                self.endpoint_chain(&mut out, &id, p, ep);
            }
        }
        out.shared.extend(p.reachable_endpoints().iter().map(|ep| Shared::Hairpin(ep.ip)));
        out.shared.push(Shared::ClusterIp(p.cluster_ip));
        let cluster_key = vec![Value::Addr(p.cluster_ip), proto.clone(), port.clone()];
        let internal =
            if p.internal_policy_local { local_ok.then_some(&local_chain) } else { cluster_ok.then_some(&svc_chain) };
        match internal {
            Some(chain) => out.elements.push((SERVICE_IPS.into(), elem(cluster_key, goto(chain)))),
            None if !p.has_any_endpoints => {
                out.elements.push((NO_ENDPOINT_SERVICES.into(), elem(cluster_key, reject.clone())))
            }
            None => out.elements.push((NO_ENDPOINT_SERVICES.into(), elem(cluster_key, drop.clone()))),
        }

        if !p.externally_accessible() {
            return out;
        }
        self.firewall(&mut out, &id, p);
        let external_ips = p.external_ips.iter().chain(&p.load_balancer_ips);
        let nodeport_key = p.node_port.map(|np| vec![proto.clone(), Value::Port(np)]);
        if !cluster_ok {
            // No endpoint anywhere (external traffic always needs the cluster set for short-circuiting).
            for ip in external_ips {
                out.elements.push((
                    NO_ENDPOINT_SERVICES.into(),
                    elem(vec![Value::Addr(*ip), proto.clone(), port.clone()], reject.clone()),
                ));
            }
            if let Some(key) = nodeport_key {
                out.elements.push((NO_ENDPOINT_NODEPORTS.into(), elem(key, reject.clone())));
            }
            return out;
        }
        let mut ext_rules = Vec::new();
        if p.external_policy_local {
            // Pods and the node itself may use every endpoint; only traffic from outside must stay local.
            if let Some(is_local) = self.is_local() {
                ext_rules.push(vec![is_local, Stmt::Verdict(Verdict::Goto(svc_chain.clone()))]);
            }
            let from_node = Stmt::Cmp { field: Field::FibSaddrType, value: Value::AddrTypeLocal, negate: false };
            ext_rules.push(vec![from_node.clone(), Self::mark_masq()]);
            ext_rules.push(vec![from_node, Stmt::Verdict(Verdict::Goto(svc_chain.clone()))]);
            if local_ok {
                ext_rules.push(vec![Stmt::Verdict(Verdict::Goto(local_chain.clone()))]);
            }
        } else {
            ext_rules.push(vec![Self::mark_masq()]);
            ext_rules.push(vec![Stmt::Verdict(Verdict::Goto(svc_chain.clone()))]);
        }
        out.chains.push((ext_chain.clone(), ext_rules));
        // With Local policy and no local endpoint, outside traffic falls through the ext chain undNATed and is
        // dropped by the filter chains.
        let dropped = p.external_policy_local && !local_ok;
        for ip in external_ips {
            let key = vec![Value::Addr(*ip), proto.clone(), port.clone()];
            out.elements.push((SERVICE_IPS.into(), elem(key.clone(), goto(&ext_chain))));
            if dropped {
                out.elements.push((NO_ENDPOINT_SERVICES.into(), elem(key, drop.clone())));
            }
        }
        if let Some(key) = nodeport_key {
            out.elements.push((SERVICE_NODEPORTS.into(), elem(key.clone(), goto(&ext_chain))));
            if dropped {
                out.elements.push((NO_ENDPOINT_NODEPORTS.into(), elem(key, drop.clone())));
            }
        }
        out
    }

    /// loadBalancerSourceRanges: traffic to the LB IPs from anywhere else is dropped (NodePorts are not
    /// filtered, as upstream).
    fn firewall(&self, out: &mut PortObjects, id: &str, p: &ServicePort) {
        if p.load_balancer_source_ranges.is_empty() || p.load_balancer_ips.is_empty() {
            return;
        }
        let chain = format!("firewall-{id}");
        let mut allowed = p.load_balancer_source_ranges.clone();
        if self.node_ips.iter().any(|ip| allowed.iter().any(|r| r.contains(ip))) {
            // The node may reach its own LB IP with the LB IP as source (VIP on a local route).
            allowed.extend(p.load_balancer_ips.iter().map(|ip| IpNet::from(*ip)));
        }
        // One `return` per allowed range, then `drop`. The chain is entered by goto from `firewall-check`, so
        // `return` resumes the filter base chain that jumped there, exactly as falling off the end would.
        let mut rules: Vec<Rule> = allowed
            .into_iter()
            .map(|net| {
                vec![
                    Stmt::Cmp { field: Field::Saddr, value: Value::Net(net), negate: false },
                    Stmt::Verdict(Verdict::Return),
                ]
            })
            .collect();
        rules.push(vec![Stmt::Verdict(Verdict::Drop)]);
        out.chains.push((chain.clone(), rules));
        for ip in &p.load_balancer_ips {
            out.elements.push((
                FIREWALL_IPS.into(),
                Element {
                    key: vec![Value::Addr(*ip), Value::Proto(p.protocol()), Value::Port(p.port)],
                    data: Some(ElemData::Verdict(Verdict::Goto(chain.clone()))),
                },
            ));
        }
    }

    /// A chain that DNATs to one of `endpoints` at random (or, with affinity, to the client's previous choice).
    fn dispatch_chain(
        &self,
        out: &mut PortObjects,
        id: &str,
        (chain, owner): (&str, BlockOwner),
        p: &ServicePort,
        endpoints: &[EndpointAddr],
        blocks: &mut dyn BlockAllocator,
    ) {
        let n = endpoints.len() as u32;
        let mut rules = Vec::new();
        if p.session_affinity_timeout.is_some() {
            for ep in endpoints {
                rules.push(vec![
                    Stmt::Lookup { key: vec![Field::Saddr], set: affinity_set(id, ep), negate: false },
                    Stmt::Verdict(Verdict::Goto(endpoint_chain(id, ep))),
                ]);
            }
            let offset = blocks.block(owner, n);
            let map = endpoint_chains_map(offset);
            out.maps.push(SetDef {
                name: map.clone(),
                key: vec![DataType::Index],
                data: vec![DataType::Verdict],
                timeout: None,
            });
            rules.push(vec![Stmt::Vmap { key: vec![Field::Numgen { modulus: n, offset }], map: map.clone() }]);
            for (i, ep) in endpoints.iter().enumerate() {
                out.elements.push((
                    map.clone().into(),
                    Element {
                        key: vec![Value::Index(offset + i as u32)],
                        data: Some(ElemData::Verdict(Verdict::Goto(endpoint_chain(id, ep)))),
                    },
                ));
            }
        } else if n == 1 {
            rules.push(vec![Stmt::Dnat { protocol: p.protocol(), addr: endpoints[0].ip, port: endpoints[0].port }]);
        } else {
            let offset = blocks.block(owner, n);
            let map = endpoints_map(p.protocol(), offset);
            out.maps.push(SetDef {
                name: map.clone(),
                key: vec![DataType::Index],
                data: vec![DataType::Addr, DataType::L4Port(p.protocol())],
                timeout: None,
            });
            rules.push(vec![Stmt::DnatMap {
                protocol: p.protocol(),
                key: vec![Field::Numgen { modulus: n, offset }],
                map: map.clone(),
            }]);
            for (i, ep) in endpoints.iter().enumerate() {
                out.elements.push((
                    map.clone().into(),
                    Element {
                        key: vec![Value::Index(offset + i as u32)],
                        data: Some(ElemData::Values(vec![Value::Addr(ep.ip), Value::Port(ep.port)])),
                    },
                ));
            }
        }
        out.chains.push((chain.to_string(), rules));
    }

    /// Session affinity: remember the client in the endpoint's own set, then DNAT to it.
    fn endpoint_chain(&self, out: &mut PortObjects, id: &str, p: &ServicePort, ep: EndpointAddr) {
        let set = affinity_set(id, &ep);
        out.sets.push(SetDef {
            name: set.clone(),
            key: vec![DataType::Addr],
            data: vec![],
            timeout: p.session_affinity_timeout,
        });
        out.chains.push((
            endpoint_chain(id, &ep),
            vec![
                vec![Stmt::Update { key: vec![Field::Saddr], set }],
                vec![Stmt::Dnat { protocol: p.protocol(), addr: ep.ip, port: ep.port }],
            ],
        ));
    }
}

/// A readable, unique id of a service port for chain names: namespace/name/protocol/port-name.
pub fn port_id(p: &ServicePort) -> String {
    let n = &p.name;
    format!("{}/{}/{}/{}", n.service.namespace, n.service.name, n.protocol, n.port)
}

fn endpoint_suffix(ep: &EndpointAddr) -> String {
    // ':' is not allowed in nft identifiers.
    format!("{}/{}", ep.ip.to_string().replace(':', "-"), ep.port)
}

fn endpoint_chain(id: &str, ep: &EndpointAddr) -> String {
    format!("ep-{id}/{}", endpoint_suffix(ep))
}

fn affinity_set(id: &str, ep: &EndpointAddr) -> String {
    format!("affinity-{id}/{}", endpoint_suffix(ep))
}
