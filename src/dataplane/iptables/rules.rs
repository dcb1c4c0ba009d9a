//! The iptables mode's rules, as `iptables-restore` lines, in upstream kube-proxy's layout
//! (pkg/proxy/iptables/proxier.go): KUBE-SERVICES matches each service address and jumps to the port's
//! KUBE-SVC-/KUBE-SVL-/KUBE-EXT-/KUBE-FW- chains, which pick a KUBE-SEP- chain per endpoint at random; the filter
//! table rejects or drops what has no endpoint. Pure: a port's rules depend on the port and [`RulesConfig`] only.

use std::net::IpAddr;

use super::layout::*;
use crate::core::{EndpointAddr, ServicePort};
use crate::dataplane::settings::LocalTraffic;
use crate::model::{IpFamily, Protocol};

/// Everything the rules depend on besides the service ports, for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RulesConfig {
    pub family: IpFamily,
    pub masquerade_mark: u32,
    pub masquerade_all: bool,
    pub local: LocalTraffic,
    /// Addresses that accept NodePorts; `None`: every local address but loopback.
    pub nodeport_ips: Option<Vec<IpAddr>>,
    /// The node's IPs of this family: a source range containing one lets the node reach its own LB IPs.
    pub node_ips: Vec<IpAddr>,
    /// See [`crate::dataplane::settings::ProxySettings::drop_invalid_forwarded`].
    pub drop_invalid: bool,
}

/// A rule in one of the shared chains (KUBE-SERVICES, KUBE-NODEPORTS, …) that belongs to one service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedRule {
    pub table: Table,
    pub chain: &'static str,
    /// Everything after `-A CHAIN `.
    pub spec: String,
}

/// The rules one service port contributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    /// Its own nat chains, with their rules, in order.
    pub chains: Vec<(String, Vec<String>)>,
    /// Its rules in shared chains.
    pub shared: Vec<SharedRule>,
}

/// A rule in a built-in chain that hooks one of our chains in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jump {
    pub table: Table,
    pub builtin: &'static str,
    pub spec: String,
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn comment(text: &str) -> String {
    format!("-m comment --comment \"{text}\"")
}

/// `-m tcp -p tcp -d IP --dport PORT`, upstream's order.
fn to_addr(protocol: Protocol, ip: IpAddr, port: u16) -> String {
    let p = protocol.name();
    format!("-m {p} -p {p} -d {} --dport {port}", host(ip))
}

fn to_port(protocol: Protocol, port: u16) -> String {
    let p = protocol.name();
    format!("-m {p} -p {p} --dport {port}")
}

fn dnat_target(ep: &EndpointAddr) -> String {
    match ep.ip {
        IpAddr::V4(ip) => format!("{ip}:{}", ep.port),
        IpAddr::V6(ip) => format!("[{ip}]:{}", ep.port),
    }
}

impl RulesConfig {
    fn loopback(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "127.0.0.0/8",
            IpFamily::V6 => "::1/128",
        }
    }

    /// Destination matches of NodePort traffic: one rule each.
    fn nodeport_destinations(&self) -> Vec<String> {
        match &self.nodeport_ips {
            None => vec![format!("! -d {} -m addrtype --dst-type LOCAL", self.loopback())],
            Some(ips) => ips.iter().map(|ip| format!("-d {}", host(*ip))).collect(),
        }
    }

    /// The match of local pod traffic, or with `negate` of everything else; `None` when undetectable.
    fn local_match(&self, negate: bool) -> Option<String> {
        let not = if negate { "! " } else { "" };
        match &self.local {
            LocalTraffic::Undetectable => None,
            LocalTraffic::Cidr(net) => Some(format!("{not}-s {net}")),
            LocalTraffic::Bridge(name) => Some(format!("{not}-i {name}")),
            LocalTraffic::InterfacePrefix(prefix) => Some(format!("{not}-i {prefix}+")),
        }
    }

    fn mark(&self) -> String {
        format!("{:#010x}", self.masquerade_mark)
    }

    /// Rules of the fixed chains (nat KUBE-SERVICES gets [`RulesConfig::services_tail`] after the ports' rules).
    pub fn static_rules(&self) -> Vec<(Table, &'static str, String)> {
        let m = self.mark();
        let mut rules = Vec::new();
        if self.drop_invalid {
            rules.push((Table::Filter, FORWARD, "-m conntrack --ctstate INVALID -j DROP".to_string()));
        }
        rules.extend([
            (Table::Nat, POSTROUTING, format!("-m mark ! --mark {m}/{m} -j RETURN")),
            // The mark is cleared so that a packet re-entering the stack is not masqueraded twice.
            (Table::Nat, POSTROUTING, format!("-j MARK --xor-mark {m}")),
            (
                Table::Nat,
                POSTROUTING,
                format!("{} -j MASQUERADE --random-fully", comment("kubernetes service traffic requiring SNAT")),
            ),
            (Table::Nat, MARK_MASQ, format!("-j MARK --or-mark {m}")),
            (
                Table::Filter,
                FORWARD,
                format!("{} -m mark --mark {m}/{m} -j ACCEPT", comment("kubernetes forwarding rules")),
            ),
            (
                Table::Filter,
                FORWARD,
                format!(
                    "{} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                    comment("kubernetes forwarding conntrack rule")
                ),
            ),
        ]);
        rules
    }

    /// The last rules of nat KUBE-SERVICES: NodePort traffic goes on to KUBE-NODEPORTS. Last, so that a service
    /// address that is also a local address is matched as a service first.
    pub fn services_tail(&self) -> Vec<String> {
        let c = comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain");
        self.nodeport_destinations().into_iter().map(|d| format!("{c} {d} -j {NODEPORTS}")).collect()
    }

    /// The jumps from the built-in chains, in the order they must appear at the top of each.
    pub fn jumps() -> Vec<Jump> {
        let new = "-m conntrack --ctstate NEW ";
        let j = |table, builtin, spec: String| Jump { table, builtin, spec };
        let firewall = format!("{new}{} -j {PROXY_FIREWALL}", comment("kubernetes load balancer firewall"));
        let portals = |c: &str| format!("{} -j {c}", comment("kubernetes service portals"));
        let external =
            format!("{new}{} -j {EXTERNAL_SERVICES}", comment("kubernetes externally-visible service portals"));
        vec![
            j(Table::Filter, "INPUT", firewall.clone()),
            j(Table::Filter, "INPUT", format!("{} -j {NODEPORTS}", comment("kubernetes health check service ports"))),
            j(Table::Filter, "INPUT", external.clone()),
            j(Table::Filter, "FORWARD", firewall.clone()),
            j(Table::Filter, "FORWARD", format!("{} -j {FORWARD}", comment("kubernetes forwarding rules"))),
            j(Table::Filter, "FORWARD", format!("{new}{}", portals(SERVICES))),
            j(Table::Filter, "FORWARD", external),
            j(Table::Filter, "OUTPUT", firewall),
            j(Table::Filter, "OUTPUT", format!("{new}{}", portals(SERVICES))),
            j(Table::Nat, "OUTPUT", portals(SERVICES)),
            j(Table::Nat, "PREROUTING", portals(SERVICES)),
            j(Table::Nat, "POSTROUTING", format!("{} -j {POSTROUTING}", comment("kubernetes postrouting rules"))),
        ]
    }

    /// The rules of one service port, as upstream's syncProxyRules writes them.
    pub fn port_rules(&self, p: &ServicePort) -> PortRules {
        let names = PortChains::of(&p.name);
        let svc = &names.display;
        let proto = p.protocol();
        let mut out = PortRules::default();
        let mut shared = |table, chain, spec: String| out.shared.push(SharedRule { table, chain, spec });

        let cluster_eps: &[EndpointAddr] = if p.uses_cluster_endpoints() { &p.cluster_endpoints } else { &[] };
        let local_eps: &[EndpointAddr] = if p.uses_local_endpoints() { &p.local_endpoints } else { &[] };
        let cluster_chain = (!cluster_eps.is_empty()).then_some(names.svc.as_str());
        let local_chain = (!local_eps.is_empty()).then_some(names.svl.as_str());
        let internal_chain = if p.internal_policy_local { local_chain } else { cluster_chain };
        let external_chain = if p.external_policy_local { local_chain } else { cluster_chain };
        let uses_ext = p.externally_accessible() && (cluster_chain.is_some() || local_chain.is_some());
        let uses_fw = uses_ext && !p.load_balancer_ips.is_empty() && !p.load_balancer_source_ranges.is_empty();
        // Nothing to serve anywhere: reject at once (TCP with a reset: ICMP errors are rate-limited, so a client
        // retrying quickly would wait for a SYN retransmission). Endpoints elsewhere but none for this traffic: drop.
        let reject = if proto == Protocol::Tcp { "REJECT --reject-with tcp-reset" } else { "REJECT" };
        let (internal_filter, external_filter) = if !p.has_any_endpoints {
            (Some(("has no endpoints", reject)), Some(("has no endpoints", reject)))
        } else {
            (
                internal_chain.is_none().then_some(("has no local endpoints", "DROP")),
                external_chain.is_none().then_some(("has no local endpoints", "DROP")),
            )
        };

        // "<svc> <what>" comment, the service address and port, the target: most rules below.
        let to_service = |what: &str, ip: IpAddr, target: &str| {
            format!("{} {} -j {target}", comment(&format!("{svc} {what}")), to_addr(proto, ip, p.port))
        };
        match (internal_chain, internal_filter) {
            (Some(chain), _) => shared(Table::Nat, SERVICES, to_service("cluster IP", p.cluster_ip, chain)),
            (None, Some((why, target))) => shared(Table::Filter, SERVICES, to_service(why, p.cluster_ip, target)),
            (None, None) => unreachable!("no internal chain means a filter target"),
        }
        for ip in p.external_ips.iter().copied() {
            if uses_ext {
                shared(Table::Nat, SERVICES, to_service("external IP", ip, &names.ext));
            }
            if let Some((why, target)) = external_filter {
                shared(Table::Filter, EXTERNAL_SERVICES, to_service(why, ip, target));
            }
        }
        for ip in p.load_balancer_ips.iter().copied() {
            if uses_ext {
                let to = if uses_fw { &names.fw } else { &names.ext };
                shared(Table::Nat, SERVICES, to_service("loadbalancer IP", ip, to));
            }
            if uses_fw {
                // Allowed sources were DNATed by the time filter sees them; what still goes to the LB IP was not.
                let what = format!("traffic not accepted by {}", names.fw);
                shared(Table::Filter, PROXY_FIREWALL, to_service(&what, ip, "DROP"));
            }
            if let Some((why, target)) = external_filter {
                shared(Table::Filter, EXTERNAL_SERVICES, to_service(why, ip, target));
            }
        }
        if let Some(node_port) = p.node_port {
            if uses_ext {
                shared(
                    Table::Nat,
                    NODEPORTS,
                    format!("{} {} -j {}", comment(svc), to_port(proto, node_port), names.ext),
                );
            }
            if let Some((why, target)) = external_filter {
                for dst in self.nodeport_destinations() {
                    shared(
                        Table::Filter,
                        EXTERNAL_SERVICES,
                        format!("{} {dst} {} -j {target}", comment(&format!("{svc} {why}")), to_port(proto, node_port)),
                    );
                }
            }
        }
        if let Some(hc) = p.health_check_node_port {
            shared(
                Table::Filter,
                NODEPORTS,
                format!(
                    "{} {} -j ACCEPT",
                    comment(&format!("{svc} health check node port")),
                    to_port(Protocol::Tcp, hc)
                ),
            );
        }

        // Cluster-IP traffic from outside the pod network is masqueraded: its replies might not come back here.
        let masq_source = if self.masquerade_all { Some(String::new()) } else { self.local_match(true) };
        let internal_masq = masq_source.filter(|_| internal_chain.is_some()).map(|source| {
            let source = if source.is_empty() { source } else { format!(" {source}") };
            format!("{}{source} -j {MARK_MASQ}", to_addr(proto, p.cluster_ip, p.port))
        });
        let first_rules = |chain: Option<&str>| -> Vec<String> {
            match (&internal_masq, chain) {
                (Some(rule), Some(c)) if Some(c) == internal_chain => vec![rule.clone()],
                _ => Vec::new(),
            }
        };
        if let Some(chain) = cluster_chain {
            let mut rules = first_rules(Some(chain));
            self.dispatch(&mut rules, &names, p, cluster_eps);
            out.chains.push((chain.to_string(), rules));
        }
        if let Some(chain) = local_chain {
            let mut rules = first_rules(Some(chain));
            self.dispatch(&mut rules, &names, p, local_eps);
            out.chains.push((chain.to_string(), rules));
        }
        if uses_ext {
            out.chains.push((names.ext.clone(), self.external_rules(p, &names, cluster_chain, local_chain)));
        }
        if uses_fw {
            let mut allowed: Vec<String> = p.load_balancer_source_ranges.iter().map(|r| r.to_string()).collect();
            if self.node_ips.iter().any(|ip| p.load_balancer_source_ranges.iter().any(|r| r.contains(ip))) {
                // The node may reach its own LB IP with the LB IP as source (VIP on a local route).
                allowed.extend(p.load_balancer_ips.iter().map(|ip| host(*ip)));
            }
            let c = comment(&format!("{svc} loadbalancer IP"));
            let rules = allowed.iter().map(|src| format!("{c} -s {src} -j {}", names.ext)).collect();
            out.chains.push((names.fw.clone(), rules));
        }
        let mut reachable: Vec<EndpointAddr> = cluster_eps.iter().chain(local_eps).copied().collect();
        reachable.sort();
        reachable.dedup();
        for ep in &reachable {
            let sep = names.sep(ep);
            let affinity = match p.session_affinity_timeout {
                Some(_) => format!("-m recent --name {sep} --set "),
                None => String::new(),
            };
            let rules = vec![
                // Hairpin: a pod reaching itself through its service must see another source, or its reply
                // would bypass conntrack's reverse NAT.
                format!("-s {} -j {MARK_MASQ}", host(ep.ip)),
                format!("{affinity}-m {0} -p {0} -j DNAT --to-destination {1}", proto.name(), dnat_target(ep)),
            ];
            out.chains.push((sep, rules));
        }
        out
    }

    /// Pick one of `endpoints` at random, or the client's previous pick under session affinity.
    fn dispatch(&self, rules: &mut Vec<String>, names: &PortChains, p: &ServicePort, endpoints: &[EndpointAddr]) {
        if let Some(timeout) = p.session_affinity_timeout {
            for ep in endpoints {
                let sep = names.sep(ep);
                rules.push(format!("-m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}"));
            }
        }
        let n = endpoints.len();
        for (i, ep) in endpoints.iter().enumerate() {
            let sep = names.sep(ep);
            if i + 1 < n {
                // Each rule takes its share of what the rules before it left: 1/n, 1/(n-1), …, then the rest.
                let probability = 1.0 / (n - i) as f64;
                rules.push(format!("-m statistic --mode random --probability {probability:.10} -j {sep}"));
            } else {
                rules.push(format!("-j {sep}"));
            }
        }
    }

    /// KUBE-EXT-: masquerade and go to the cluster chain, or under Local policy keep outside clients' source and
    /// stay on this node, while pods and the node itself still use every endpoint.
    fn external_rules(
        &self,
        p: &ServicePort,
        names: &PortChains,
        cluster_chain: Option<&str>,
        local_chain: Option<&str>,
    ) -> Vec<String> {
        let svc = &names.display;
        let mut rules = Vec::new();
        if !p.external_policy_local {
            rules.push(format!(
                "{} -j {MARK_MASQ}",
                comment(&format!("masquerade traffic for {svc} external destinations"))
            ));
            if let Some(chain) = cluster_chain {
                rules.push(format!("-j {chain}"));
            }
            return rules;
        }
        if let Some(chain) = cluster_chain {
            if let Some(is_local) = self.local_match(false) {
                rules.push(format!(
                    "{} {is_local} -j {chain}",
                    comment(&format!("pod traffic for {svc} external destinations"))
                ));
            }
            rules.push(format!(
                "{} -m addrtype --src-type LOCAL -j {MARK_MASQ}",
                comment(&format!("masquerade LOCAL traffic for {svc} external destinations"))
            ));
            rules.push(format!(
                "{} -m addrtype --src-type LOCAL -j {chain}",
                comment(&format!("route LOCAL traffic for {svc} external destinations"))
            ));
        }
        if let Some(chain) = local_chain {
            rules.push(format!("-j {chain}"));
        }
        rules
    }
}
