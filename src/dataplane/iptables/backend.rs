//! Choosing between iptables-nft and iptables-legacy as upstream's images do (kubernetes-sigs/iptables-wrappers):
//! the backend the node already uses wins — the one holding the kubelet's KUBE-IPTABLES-HINT or
//! KUBE-KUBELET-CANARY chain, else the one with more rules — and on an empty node the system's default, which on
//! Debian and every current distribution is nft.

use super::save::{self, Table};
use super::{Backend, tool};
use crate::model::IpFamily;

/// `--iptables-backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// Detect, as upstream's images do.
    Auto,
    Fixed(Backend),
}

/// What one backend holds, as far as the choice goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendUse {
    /// The kubelet's hint or canary chain is there: the node's own tools use this backend.
    pub kubelet_mark: bool,
    /// Rules in all tables and both families.
    pub rules: usize,
}

impl BackendUse {
    fn add(&mut self, tables: &[Table]) {
        for t in tables {
            self.kubelet_mark |=
                t.chains.iter().any(|c| c.name == "KUBE-IPTABLES-HINT" || c.name == "KUBE-KUBELET-CANARY");
            self.rules += t.rules.len();
        }
    }
}

/// The pure decision, given what each backend holds.
pub fn decide(nft: BackendUse, legacy: BackendUse) -> Backend {
    if nft.kubelet_mark {
        Backend::Nft
    } else if legacy.kubelet_mark || legacy.rules > nft.rules {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

/// Read what each installed backend holds and decide. A backend whose tools are missing holds nothing.
pub fn detect() -> Backend {
    let mut uses = [BackendUse::default(); 2];
    for (i, backend) in Backend::ALL.into_iter().enumerate() {
        for family in IpFamily::ALL {
            let program = backend.program(family, "save");
            match tool::run(&[&program], None) {
                Ok(Some(out)) if out.status.success() => match save::parse(&program, &out.stdout) {
                    Ok(tables) => uses[i].add(&tables),
                    Err(e) => tracing::warn!(error = %e, "cannot read {program} output"),
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot run {program}"),
            }
        }
    }
    let chosen = decide(uses[0], uses[1]);
    tracing::info!(?chosen, nft = ?uses[0], legacy = ?uses[1], "iptables backend detected");
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_in_use_wins_and_nft_is_the_default() {
        let used = |rules| BackendUse { kubelet_mark: false, rules };
        let marked = BackendUse { kubelet_mark: true, rules: 3 };
        assert_eq!(decide(used(0), used(0)), Backend::Nft, "empty node: the system default");
        assert_eq!(decide(used(0), used(12)), Backend::Legacy);
        assert_eq!(decide(used(12), used(3)), Backend::Nft);
        assert_eq!(decide(used(5), used(5)), Backend::Nft, "a tie is no evidence for legacy");
        assert_eq!(decide(used(0), marked), Backend::Legacy, "the kubelet's hint beats rule counts");
        assert_eq!(decide(marked, used(100)), Backend::Nft);
    }
}
