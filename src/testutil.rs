//! Helpers for unit tests that need the real kernel.

/// Move the calling thread into a fresh, empty network namespace. It vanishes with the thread, so a test
/// can program netfilter freely and leave nothing behind. Processes spawned from this thread inherit it.
pub fn enter_new_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
}
