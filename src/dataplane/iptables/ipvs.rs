//! Removing what upstream's IPVS mode leaves outside iptables: virtual servers for service addresses, the
//! `kube-ipvs0` dummy interface holding those addresses, and its ipsets.
//!
//! IPVS itself is handled narrowly. Upstream's cleanup flushes *all* of IPVS; we delete only the virtual servers
//! whose address sits on `kube-ipvs0`, which is what identifies them as upstream's. NodePort virtual servers (on
//! the node's own addresses) cannot be told apart from an operator's and are left alone.

use std::net::IpAddr;
use std::path::Path;

use super::names::{IPVS_INTERFACE, ipvs_ipsets};
use super::{IptablesError, tool};

/// What happened to IPVS virtual servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VirtualServers {
    /// IPVS is not in this kernel (or not loaded), so there are none.
    Unavailable,
    /// The virtual servers on `kube-ipvs0`'s addresses were deleted (possibly none), e.g. `TCP 10.96.0.1:443`.
    Removed(Vec<String>),
    /// IPVS is there, but which virtual servers are upstream's cannot be told; IPVS was not touched.
    Undetermined(String),
}

/// What happened to the `kube-ipvs0` interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterfaceOutcome {
    /// There is no such interface.
    Absent,
    /// It was a dummy interface and was deleted.
    Removed,
    /// An interface of that name exists but is not a dummy (its kind is given), so it is not upstream's.
    KeptNotDummy(String),
}

/// What [`remove_ipvs_leftovers`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsReport {
    pub virtual_servers: VirtualServers,
    pub interface: InterfaceOutcome,
    /// Upstream ipsets destroyed.
    pub ipsets_destroyed: Vec<String>,
    /// Upstream ipsets that exist but were left in place, with the reason: an iptables rule still references
    /// it (someone else's rule, or a kube-proxy chain kept because someone else's chain jumps to it).
    pub ipsets_kept: Vec<(String, String)>,
}

/// Remove upstream IPVS-mode leftovers: virtual servers on `kube-ipvs0`'s addresses (when IPVS is available),
/// the `kube-ipvs0` dummy interface, and the ipsets named in upstream's list (IPv4 and IPv6 names). Other
/// ipsets, interfaces and virtual servers are not touched. Idempotent.
///
/// Call it after [`super::remove_kube_proxy_chains`]: a set still referenced by an iptables rule cannot be
/// destroyed (it is then reported in `ipsets_kept`, not as an error).
pub fn remove_ipvs_leftovers() -> Result<IpvsReport, IptablesError> {
    let link = read_link()?;
    let virtual_servers = remove_virtual_servers(link.as_ref())?;
    let interface = match link {
        None => InterfaceOutcome::Absent,
        Some(Link { kind: Some(kind), .. }) if kind == "dummy" => {
            tool::run_required(&["ip", "link", "del", IPVS_INTERFACE], None)?;
            InterfaceOutcome::Removed
        }
        Some(Link { kind, .. }) => {
            let kind = kind.unwrap_or_else(|| "device".into());
            tracing::warn!(interface = IPVS_INTERFACE, %kind, "not a dummy interface, so not upstream's; left alone");
            InterfaceOutcome::KeptNotDummy(kind)
        }
    };
    let mut report = IpvsReport { virtual_servers, interface, ipsets_destroyed: vec![], ipsets_kept: vec![] };
    destroy_ipsets(&mut report)?;
    let removed_any = report.interface == InterfaceOutcome::Removed
        || !report.ipsets_destroyed.is_empty()
        || matches!(&report.virtual_servers, VirtualServers::Removed(v) if !v.is_empty());
    if removed_any {
        tracing::info!(?report, "removed upstream kube-proxy IPVS leftovers");
    } else {
        tracing::debug!(?report, "no upstream kube-proxy IPVS leftovers to remove");
    }
    Ok(report)
}

/// `kube-ipvs0` as `ip` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Link {
    /// `linkinfo.info_kind`: "dummy" for upstream's; absent for plain devices.
    pub kind: Option<String>,
    pub addresses: Vec<IpAddr>,
}

fn read_link() -> Result<Option<Link>, IptablesError> {
    let argv = ["ip", "-details", "-json", "address", "show", "dev", IPVS_INTERFACE];
    let out = tool::run_installed(&argv, None)?;
    if !out.status.success() && out.stderr.contains("does not exist") {
        return Ok(None);
    }
    parse_link(&out.success(&argv)?.stdout)
}

/// Parse `ip -details -json address show dev kube-ipvs0`.
pub(super) fn parse_link(json: &str) -> Result<Option<Link>, IptablesError> {
    let bad = |reason: &str| IptablesError::Parse { tool: "ip -json".into(), line: 1, reason: reason.into() };
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let Some(link) = value.as_array().ok_or_else(|| bad("not a JSON array"))?.first() else {
        return Ok(None);
    };
    let kind = link.pointer("/linkinfo/info_kind").and_then(|k| k.as_str()).map(str::to_string);
    let addresses = link
        .get("addr_info")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("local")?.as_str()?.parse().ok())
        .collect();
    Ok(Some(Link { kind, addresses }))
}

fn remove_virtual_servers(link: Option<&Link>) -> Result<VirtualServers, IptablesError> {
    // thread-self, not self: the namespace of this thread, which is the one whose IPVS we would change.
    if !Path::new("/proc/thread-self/net/ip_vs").exists() {
        tracing::debug!("IPVS is not available in this kernel; no virtual servers to remove");
        return Ok(VirtualServers::Unavailable);
    }
    let Some(link) = link else {
        // Without kube-ipvs0 upstream's IPVS mode is most likely not (or no longer) here: not worth a warning.
        tracing::debug!("{IPVS_INTERFACE} is absent; IPVS virtual servers left alone");
        return Ok(VirtualServers::Undetermined(format!("{IPVS_INTERFACE} is absent, so upstream's are unknown")));
    };
    let list = ["ipvsadm", "--save", "--numeric"];
    let Some(out) = tool::run(&list, None)? else {
        return Ok(undetermined("ipvsadm is not installed".into()));
    };
    let mut removed = Vec::new();
    for vs in parse_ipvsadm_save(&out.success(&list)?.stdout) {
        if link.addresses.contains(&vs.ip) {
            tool::run_required(&["ipvsadm", "--delete-service", &vs.flag, &vs.address], None)?;
            removed.push(format!("{} {}", vs.protocol, vs.address));
        }
    }
    Ok(VirtualServers::Removed(removed))
}

fn undetermined(reason: String) -> VirtualServers {
    tracing::warn!(%reason, "IPVS virtual servers left alone");
    VirtualServers::Undetermined(reason)
}

/// A virtual service as `ipvsadm --save --numeric` prints it: `-A -t 10.96.0.1:443 -s rr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct VirtualService {
    /// The option naming the protocol, reused verbatim to delete it: `-t`, `-u` or `--sctp-service`.
    pub flag: String,
    pub protocol: &'static str,
    /// `10.96.0.1:443` or `[fd00::1]:443`, verbatim.
    pub address: String,
    pub ip: IpAddr,
}

/// The address-based virtual services of `ipvsadm --save --numeric` (firewall-mark services have no address
/// and are skipped; upstream never creates them).
pub(super) fn parse_ipvsadm_save(text: &str) -> Vec<VirtualService> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "-A" {
                return None;
            }
            let flag = words.next()?;
            let protocol = match flag {
                "-t" | "--tcp-service" => "TCP",
                "-u" | "--udp-service" => "UDP",
                "--sctp-service" => "SCTP",
                _ => return None,
            };
            let address = words.next()?;
            let (host, _port) = address.rsplit_once(':')?;
            let ip = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
            Some(VirtualService { flag: flag.to_string(), protocol, address: address.to_string(), ip })
        })
        .collect()
}

/// Destroy the upstream ipsets that exist, noting in `report` which went and which had to stay.
fn destroy_ipsets(report: &mut IpvsReport) -> Result<(), IptablesError> {
    let list = ["ipset", "list", "-name"];
    let Some(out) = tool::run(&list, None)? else {
        tracing::debug!("ipset is not installed; no ipsets to destroy");
        return Ok(());
    };
    let existing = out.success(&list)?.stdout;
    let existing: Vec<&str> = existing.lines().map(str::trim).collect();
    for name in ipvs_ipsets().into_iter().filter(|n| existing.contains(&n.as_str())) {
        let argv = ["ipset", "destroy", name.as_str()];
        let out = tool::run_installed(&argv, None)?;
        if out.status.success() {
            report.ipsets_destroyed.push(name);
        } else if out.stderr.contains("does not exist") {
            // Gone since it was listed: someone else removed it.
        } else if out.stderr.contains("in use") {
            tracing::warn!(ipset = %name, "upstream ipset still referenced by an iptables rule; left alone");
            report.ipsets_kept.push((name, "still referenced by an iptables rule".into()));
        } else {
            out.success(&argv)?;
        }
    }
    Ok(())
}
