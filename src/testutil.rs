//! Helpers for unit tests that need the real kernel.

/// Whether a test that needs root may run. Without root it is skipped with a printed reason, except under
/// CI=true, where skipping would hide a broken test: then it fails.
pub fn root_or_skip(test: &str) -> bool {
    if nix_is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root and CI=true forbids skipping it");
    }
    eprintln!("SKIPPED {test}: needs root (network namespaces, netfilter)");
    false
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Move the calling thread into a fresh, empty network namespace. It vanishes with the thread, so a test
/// can program netfilter freely and leave nothing behind. Processes spawned from this thread inherit it.
pub fn enter_new_netns() {
    // SAFETY: unshare only affects the calling thread's namespace membership.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
}
