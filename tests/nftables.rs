//! Every real-kernel scenario, in nftables mode (netlink transport). Needs root (skips with a reason otherwise;
//! never under CI=true). A few run through the `nft -f` fallback transport too.

#[macro_use]
mod common;

suite!(netlink, common::Mode::Nftables);

/// The fallback transport end to end: balancing, affinity (dynamic sets), rebuilding after an external flush.
mod via_nft {
    use super::common::{self, Mode};

    scenarios!(Mode::NftablesViaNft, scenarios: cluster_ip_from_a_pod_is_balanced_and_keeps_the_source);
    scenarios!(Mode::NftablesViaNft, policies: session_affinity_sticks_and_releases);
    scenarios!(Mode::NftablesViaNft, robustness: rules_removed_behind_our_back_are_restored);
}
