//! Every real-kernel scenario, in iptables mode, on both backends (iptables-nft and iptables-legacy). Needs root
//! (skips with a reason otherwise; never under CI=true).

#[macro_use]
mod common;

suite!(nft_backend, common::Mode::IptablesNft);
suite!(legacy_backend, common::Mode::IptablesLegacy);
