//! Every real-kernel scenario, in iptables mode, on both backends (iptables-nft and iptables-legacy). Needs root
//! (skips with a reason otherwise; never under CI=true).

mod common;

macro_rules! scenarios {
    ($mode:expr, $module:ident: $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if kube_proxy_rs::lab::root_or_skip(stringify!($name)) {
                    common::$module::$name($mode);
                }
            }
        )*
    };
}

/// The whole suite in one mode.
macro_rules! suite {
    ($module_name:ident, $mode:expr) => {
        mod $module_name {
            use super::common;

            scenarios!(
                $mode, scenarios:
                cluster_ip_from_the_node,
                cluster_ip_from_a_pod_is_balanced_and_keeps_the_source,
                hairpin_is_masqueraded,
                node_port_from_outside_is_masqueraded,
                external_and_load_balancer_ips_from_outside,
                undefined_port_is_not_forwarded,
                no_endpoints_is_refused_at_once,
                removed_endpoint_gets_no_traffic_within_2s,
                broken_manifests_change_nothing_for_good_ones,
                health_and_metrics_answer_like_upstream,
                sigterm_keeps_rules_and_cleanup_removes_everything,
                restart_keeps_connections_and_service,
            );

            scenarios!(
                $mode, policies:
                session_affinity_sticks_and_releases,
                external_policy_local,
                internal_policy_local,
                terminating_endpoints_are_the_fallback,
                topology_hints_follow_the_node_zone,
                load_balancer_source_ranges,
                node_port_addresses,
                detect_local_modes,
            );

            scenarios!(
                $mode, robustness:
                rules_removed_behind_our_back_are_restored,
                traffic_keeps_flowing_through_restarts,
                upstream_nftables_table_is_taken_over,
                upstream_iptables_rules_are_taken_over,
                config_file_is_used_and_a_change_restarts,
                udp_flows_follow_endpoint_changes,
            );

            scenarios!(
                $mode, api:
                api_source_follows_the_api_server,
                nothing_is_programmed_before_both_lists,
                watches_resume_and_relists_pass_only_differences,
                api_outage_keeps_traffic_flowing,
            );
        }
    };
}

suite!(nft_backend, common::Mode::IptablesNft);
suite!(legacy_backend, common::Mode::IptablesLegacy);
