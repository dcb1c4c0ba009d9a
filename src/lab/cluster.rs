//! [`ClusterLab`]: one node, its pods and an outside client, each in its own network namespace.
//!
//! ```text
//!   outside 192.168.50.2 ── eth0 ══ eth0 ── node 192.168.50.1 ── veth0 ══ eth0 ── pod 10.244.0.10
//!   (routes service, external           (forwarding on,        └─ veth1 ══ eth0 ── pod 10.244.0.11 …
//!    and LB ranges via node)             default via outside)
//! ```
//!
//! Pods are wired ptp-style like Calico: every node-side veth carries the same 10.244.0.1/32 (fd00:10:244::1/128)
//! and the node has a host route per pod; a pod routes everything via that address. The node's default route
//! points at the outside host, as a real node's does, so cluster IPs are routable before the proxy DNATs them.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Output};

use super::addresses::*;
use super::netns::Netns;
use super::probe::{ProbeResult, ProbeSpec};
use super::session::Session;
use super::{LabError, Result, cli};
use crate::model::IpFamily;

/// One pod of a [`LabSpec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name; also the name its echo server answers with.
    pub name: String,
    /// The node the pod claims to run on (for EndpointSlices' `nodeName`); `None` = the lab's node.
    pub node: Option<String>,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// The kube-proxy-rs binary, which provides the `echo-server` and `probe` helpers.
    pub binary: PathBuf,
    /// Name of the one real node.
    pub node_name: String,
    /// Pods, in address order.
    pub pods: Vec<PodSpec>,
}

impl LabSpec {
    /// A spec with no pods and node name `lab-node`.
    pub fn new(binary: impl Into<PathBuf>) -> LabSpec {
        LabSpec { binary: binary.into(), node_name: "lab-node".into(), pods: Vec::new() }
    }

    /// Adds a pod on the lab's node.
    pub fn pod(mut self, name: &str) -> LabSpec {
        self.pods.push(PodSpec { name: name.into(), node: None });
        self
    }

    /// Adds a pod that claims to run on `node` (only the lab's node really exists; all pods hang off it).
    pub fn pod_on(mut self, name: &str, node: &str) -> LabSpec {
        self.pods.push(PodSpec { name: name.into(), node: Some(node.into()) });
        self
    }
}

/// Where a command runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Where {
    /// The node namespace, where the proxy runs.
    Node,
    /// The external client's namespace.
    Outside,
    /// A pod's namespace, by pod name.
    Pod(String),
}

impl Where {
    /// `Where::Pod(name)`.
    pub fn pod(name: &str) -> Where {
        Where::Pod(name.into())
    }
}

/// A built pod.
#[derive(Debug)]
pub struct LabPod {
    /// Pod name.
    pub name: String,
    /// The node name it claims.
    pub node_name: String,
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// IPv6 address.
    pub ip6: Ipv6Addr,
    /// Its veth's name in the node namespace.
    pub node_veth: String,
    netns: Netns,
}

impl LabPod {
    /// The pod's address of one family.
    pub fn addr(&self, family: IpFamily) -> IpAddr {
        pick(family, self.ip, self.ip6)
    }

    /// The pod's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

/// A throwaway cluster. Dropping it kills the helpers it started, then every process left in its namespaces,
/// then deletes the namespaces (which deletes their veths).
#[derive(Debug)]
pub struct ClusterLab {
    binary: PathBuf,
    node_name: String,
    // Field order is drop order: helpers die first, then namespaces go (their Drop kills any stragglers).
    children: Vec<Child>,
    pods: Vec<LabPod>,
    outside: Netns,
    node: Netns,
}

/// Namespace names start with this, then the creating pid (see [`Netns::sweep_stale`]).
const NETNS_PREFIX: &str = "kpr";

impl ClusterLab {
    /// Builds the namespaces, links, addresses and routes described in the module docs.
    pub fn build(spec: &LabSpec) -> Result<ClusterLab> {
        validate(spec)?;
        Netns::sweep_stale(NETNS_PREFIX);
        let base = super::unique_name(NETNS_PREFIX);
        // Each namespace is owned as soon as it exists, so an error below cleans up what was made so far.
        let node = Netns::create(format!("{base}-node"))?;
        let outside = Netns::create(format!("{base}-out"))?;
        prepare(&node, true)?;
        prepare(&outside, false)?;
        wire_outside(&node, &outside)?;
        let mut pods = Vec::with_capacity(spec.pods.len());
        for (i, p) in spec.pods.iter().enumerate() {
            let netns = Netns::create(format!("{base}-p{i}"))?;
            prepare(&netns, false)?;
            let pod = LabPod {
                name: p.name.clone(),
                node_name: p.node.clone().unwrap_or_else(|| spec.node_name.clone()),
                ip: pod_ip(i),
                ip6: pod_ip6(i),
                node_veth: format!("{POD_VETH_PREFIX}{i}"),
                netns,
            };
            wire_pod(&node, &pod)?;
            pods.push(pod);
        }
        Ok(ClusterLab {
            binary: spec.binary.clone(),
            node_name: spec.node_name.clone(),
            children: vec![],
            pods,
            outside,
            node,
        })
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The node's IP (on its uplink): the address for NodePorts and the node's InternalIP.
    pub fn node_ip(&self, family: IpFamily) -> IpAddr {
        pick(family, NODE_UPLINK_IP_V4, NODE_UPLINK_IP_V6)
    }

    /// The address the node uses towards pods (same on every pod veth).
    pub fn node_pod_side_ip(&self, family: IpFamily) -> IpAddr {
        pick(family, NODE_POD_SIDE_IP_V4, NODE_POD_SIDE_IP_V6)
    }

    /// The outside host's address.
    pub fn outside_ip(&self, family: IpFamily) -> IpAddr {
        pick(family, OUTSIDE_IP_V4, OUTSIDE_IP_V6)
    }

    /// The pod named `name`. Panics if there is none: a test asking for a pod it did not create is a bug in the
    /// test; see [`ClusterLab::try_pod`] for a fallible form.
    pub fn pod(&self, name: &str) -> &LabPod {
        self.try_pod(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The pod named `name`, if any.
    pub fn try_pod(&self, name: &str) -> Result<&LabPod> {
        self.pods.iter().find(|p| p.name == name).ok_or_else(|| LabError::NoSuchPod(name.into()))
    }

    /// All pods, in address order.
    pub fn pods(&self) -> &[LabPod] {
        &self.pods
    }

    /// The namespace behind a [`Where`].
    pub fn netns(&self, at: &Where) -> Result<&Netns> {
        match at {
            Where::Node => Ok(&self.node),
            Where::Outside => Ok(&self.outside),
            Where::Pod(name) => Ok(&self.try_pod(name)?.netns),
        }
    }

    /// Runs `argv` to completion at `at` (e.g. `nft list ruleset` or `conntrack -L` on the node).
    pub fn exec<S: AsRef<OsStr>>(&self, at: &Where, argv: &[S]) -> Result<Output> {
        self.netns(at)?.exec(argv)
    }

    /// Starts `argv` at `at` with stdin closed (e.g. the proxy on the node; for other stdio use
    /// [`Netns::command`] via [`ClusterLab::netns`]). The caller owns the child; whatever still runs when the lab
    /// is dropped is killed.
    pub fn spawn<S: AsRef<OsStr>>(&self, at: &Where, argv: &[S]) -> Result<Child> {
        self.netns(at)?.spawn(argv)
    }

    /// A command running this lab's binary with `args` at `at`, for callers that want to set up stdio.
    pub fn helper_command(&self, at: &Where, args: &[String]) -> Result<Command> {
        let mut argv = vec![self.binary.as_os_str().to_owned()];
        argv.extend(args.iter().map(Into::into));
        Ok(self.netns(at)?.command(&argv))
    }

    /// Starts an echo server answering as the pod's name on `port` (TCP and UDP, both families) in that pod, and
    /// waits until it is listening.
    pub fn start_echo(&mut self, pod: &str, port: u16) -> Result<()> {
        self.start_echo_at(&Where::pod(pod), pod, port)
    }

    /// Starts an echo server answering as `name` on `port` anywhere (e.g. on the node, for host-network
    /// endpoints) and waits until it is listening. It lives as long as the lab.
    pub fn start_echo_at(&mut self, at: &Where, name: &str, port: u16) -> Result<()> {
        let args = cli::EchoArgs { name: name.into(), port }.to_args();
        let child = cli::start_echo_helper(self.helper_command(at, &args)?, name)?;
        self.children.push(child);
        Ok(())
    }

    /// Runs the probe helper at `from` and returns one result per attempt.
    pub fn probe(&self, from: &Where, spec: &ProbeSpec) -> Result<Vec<ProbeResult>> {
        let args = cli::ProbeArgs { spec: spec.clone(), session: false }.to_args();
        let mut cmd = self.helper_command(from, &args)?;
        let out = cmd.output().map_err(|source| LabError::Spawn { argv: format!("{cmd:?}"), source })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(LabError::Failed { argv: format!("{cmd:?}"), status: out.status, stderr });
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).map_err(|_| LabError::Protocol { what: "probe".into(), line: l.into() }))
            .collect()
    }

    /// Opens a long-lived TCP connection from `from` to `spec.target` (see [`Session`]); `spec` also gives the
    /// per-step timeout (its count, interval and source port are not used).
    pub fn open_session(&self, from: &Where, spec: &ProbeSpec) -> Result<Session> {
        let args = cli::ProbeArgs { spec: ProbeSpec::tcp(spec.target).timeout(spec.timeout), session: true }.to_args();
        Session::start(self.helper_command(from, &args)?)
    }
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn validate(spec: &LabSpec) -> Result<()> {
    if spec.pods.len() > MAX_PODS {
        return Err(LabError::Spec(format!("{} pods; at most {MAX_PODS}", spec.pods.len())));
    }
    for (i, p) in spec.pods.iter().enumerate() {
        // The name is the first word of the echo server's greeting, so it cannot contain whitespace.
        if p.name.is_empty() || p.name.contains(char::is_whitespace) {
            return Err(LabError::Spec(format!("pod name {:?} must be one word", p.name)));
        }
        if spec.pods[..i].iter().any(|q| q.name == p.name) {
            return Err(LabError::Spec(format!("pod name {:?} used twice", p.name)));
        }
    }
    Ok(())
}

/// Sysctls and loopback. DAD is off so that IPv6 addresses are usable at once (no tentative state).
fn prepare(ns: &Netns, router: bool) -> Result<()> {
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    if router {
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    }
    ns.ip(&["link", "set", "lo", "up"]).map(drop)
}

fn wire_outside(node: &Netns, outside: &Netns) -> Result<()> {
    // Created from inside the node namespace with the peer placed directly in `outside`: the root namespace
    // never sees the link, and names only need to be unique per namespace.
    node.ip(&["link", "add", NODE_UPLINK, "type", "veth", "peer", "name", "eth0", "netns", outside.name()])?;
    node.ip(&["addr", "add", &format!("{NODE_UPLINK_IP_V4}/24"), "dev", NODE_UPLINK])?;
    node.ip(&["-6", "addr", "add", &format!("{NODE_UPLINK_IP_V6}/64"), "dev", NODE_UPLINK, "nodad"])?;
    outside.ip(&["addr", "add", &format!("{OUTSIDE_IP_V4}/24"), "dev", "eth0"])?;
    outside.ip(&["-6", "addr", "add", &format!("{OUTSIDE_IP_V6}/64"), "dev", "eth0", "nodad"])?;
    node.ip(&["link", "set", NODE_UPLINK, "up"])?;
    outside.ip(&["link", "set", "eth0", "up"])?;
    node.ip(&["route", "add", "default", "via", &OUTSIDE_IP_V4.to_string()])?;
    node.ip(&["-6", "route", "add", "default", "via", &OUTSIDE_IP_V6.to_string()])?;
    for net in [SERVICE_CIDR_V4, EXTERNAL_IP_RANGE_V4, LB_IP_RANGE_V4] {
        outside.ip(&["route", "add", &net.to_string(), "via", &NODE_UPLINK_IP_V4.to_string()])?;
    }
    for net in [SERVICE_CIDR_V6, EXTERNAL_IP_RANGE_V6, LB_IP_RANGE_V6] {
        outside.ip(&["-6", "route", "add", &net.to_string(), "via", &NODE_UPLINK_IP_V6.to_string()])?;
    }
    Ok(())
}

fn wire_pod(node: &Netns, pod: &LabPod) -> Result<()> {
    let (veth, ns) = (pod.node_veth.as_str(), &pod.netns);
    node.ip(&["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
    node.ip(&["addr", "add", &format!("{NODE_POD_SIDE_IP_V4}/32"), "dev", veth])?;
    node.ip(&["-6", "addr", "add", &format!("{NODE_POD_SIDE_IP_V6}/128"), "dev", veth, "nodad"])?;
    node.ip(&["link", "set", veth, "up"])?;
    node.ip(&["route", "add", &format!("{}/32", pod.ip), "dev", veth])?;
    node.ip(&["-6", "route", "add", &format!("{}/128", pod.ip6), "dev", veth])?;
    ns.ip(&["addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"])?;
    ns.ip(&["-6", "addr", "add", &format!("{}/128", pod.ip6), "dev", "eth0", "nodad"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", &NODE_POD_SIDE_IP_V4.to_string(), "dev", "eth0"])?;
    ns.ip(&["route", "add", "default", "via", &NODE_POD_SIDE_IP_V4.to_string()])?;
    ns.ip(&["-6", "route", "add", &NODE_POD_SIDE_IP_V6.to_string(), "dev", "eth0"])?;
    ns.ip(&["-6", "route", "add", "default", "via", &NODE_POD_SIDE_IP_V6.to_string()])?;
    Ok(())
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
