//! The arithmetic, and every "leave it alone" rule, against a fake tree of /proc and /sys files.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

const SECOND: Duration = Duration::from_secs(1);

/// A temporary directory holding `proc/…` and `sys/…` files, removed on drop.
struct FakeRoot(PathBuf);

impl FakeRoot {
    fn empty() -> FakeRoot {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("kube-proxy-rs-nodesetup-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap();
        FakeRoot(path)
    }

    /// A two-CPU node with a small conntrack table and the kernel's default timeouts.
    fn node() -> FakeRoot {
        let root = FakeRoot::empty();
        for (file, value) in [
            (ONLINE_CPUS, "0-1\n"),
            (NF_CONNTRACK_MAX, "65536\n"),
            (HASHSIZE, "16384\n"),
            (TCP_TIMEOUT_ESTABLISHED, "432000\n"),
            (TCP_TIMEOUT_CLOSE_WAIT, "60\n"),
            (TCP_BE_LIBERAL, "0\n"),
            (UDP_TIMEOUT, "30\n"),
            (UDP_TIMEOUT_STREAM, "120\n"),
            (OOM_SCORE_ADJ, "0\n"),
        ] {
            root.write(file, value);
        }
        root
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.path(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, value).unwrap();
    }

    fn remove(&self, file: &str) {
        fs::remove_file(self.path(file)).unwrap();
    }

    fn read(&self, file: &str) -> String {
        fs::read_to_string(self.path(file)).unwrap().trim().to_string()
    }

    fn apply(&self, settings: &NodeSetupSettings) -> Result<Report, NodeSetupError> {
        NodeSetup::at(&self.0).apply(settings)
    }

    /// The files written, relative to the root, with their new values.
    fn written(&self, report: &Report) -> Vec<(String, i64)> {
        report.changes.iter().map(|c| (c.path.strip_prefix(&self.0).unwrap().display().to_string(), c.after)).collect()
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn defaults() -> NodeSetupSettings {
    NodeSetupSettings { conntrack: ConntrackSettings::default(), oom_score_adj: Some(-999) }
}

/// Settings that ask for nothing at all.
fn leave_everything_alone() -> NodeSetupSettings {
    NodeSetupSettings {
        conntrack: ConntrackSettings {
            max_per_core: 0,
            min: 131072,
            tcp_established_timeout: Duration::ZERO,
            tcp_close_wait_timeout: Duration::ZERO,
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        },
        oom_score_adj: None,
    }
}

// === the arithmetic ===

#[test]
fn conntrack_max_is_per_core_times_cpus_with_a_floor_and_a_cap() {
    let per_core = |max_per_core, min| ConntrackSettings { max_per_core, min, ..ConntrackSettings::default() };
    // Upstream's defaults: 32768 per core, at least 131072.
    assert_eq!(conntrack_max(&per_core(32768, 131072), 2), Some(131072), "the floor wins on small nodes");
    assert_eq!(conntrack_max(&per_core(32768, 131072), 8), Some(262144));
    assert_eq!(conntrack_max(&per_core(32768, 0), 1), Some(32768));
    assert_eq!(conntrack_max(&per_core(32768, 131072), 32), Some(CONNTRACK_MAX_CAP));
    assert_eq!(conntrack_max(&per_core(32768, 131072), 33), Some(1 << 20), "capped at 1Mi");
    assert_eq!(conntrack_max(&per_core(32768, 4 << 20), 64), Some(1 << 20), "the cap is checked before the floor");
    assert_eq!(conntrack_max(&per_core(1, 4 << 20), 2), Some(4 << 20), "a floor above the cap applies below it");
    // 0 per core: leave the table alone, whatever min says.
    assert_eq!(conntrack_max(&per_core(0, 131072), 8), None);
    assert_eq!(conntrack_max(&per_core(0, 0), 8), None);
}

#[test]
fn zero_timeouts_and_a_false_be_liberal_are_left_alone() {
    assert_eq!(
        sysctl_values(&ConntrackSettings::default()),
        [(TCP_TIMEOUT_ESTABLISHED, 86400), (TCP_TIMEOUT_CLOSE_WAIT, 3600)],
        "upstream's defaults set only the two TCP timeouts"
    );
    assert_eq!(sysctl_values(&leave_everything_alone().conntrack), []);
    let all = ConntrackSettings {
        tcp_established_timeout: 7200 * SECOND,
        tcp_close_wait_timeout: 90 * SECOND,
        tcp_be_liberal: true,
        udp_timeout: 45 * SECOND,
        udp_stream_timeout: 180 * SECOND,
        ..ConntrackSettings::default()
    };
    assert_eq!(
        sysctl_values(&all),
        [
            (TCP_TIMEOUT_ESTABLISHED, 7200),
            (TCP_TIMEOUT_CLOSE_WAIT, 90),
            (TCP_BE_LIBERAL, 1),
            (UDP_TIMEOUT, 45),
            (UDP_TIMEOUT_STREAM, 180)
        ]
    );
    // Whole seconds, truncated as upstream's int(d / time.Second): a non-zero sub-second timeout writes 0.
    let short = ConntrackSettings {
        tcp_established_timeout: Duration::from_millis(1500),
        tcp_close_wait_timeout: Duration::ZERO,
        udp_timeout: Duration::from_millis(500),
        ..ConntrackSettings::default()
    };
    assert_eq!(sysctl_values(&short), [(TCP_TIMEOUT_ESTABLISHED, 1), (UDP_TIMEOUT, 0)]);
}

#[test]
fn cpu_lists_are_counted() {
    assert_eq!(count_cpu_list("0-3,8-11\n"), Some(8));
    assert_eq!(count_cpu_list("0"), Some(1));
    assert_eq!(count_cpu_list("0-1"), Some(2));
    assert_eq!(count_cpu_list("0,2,4-5"), Some(4));
    assert_eq!(count_cpu_list(""), None);
    assert_eq!(count_cpu_list("3-1"), None);
    assert_eq!(count_cpu_list("a-b"), None);
}

#[test]
fn cpus_are_the_online_ones_else_the_affinity_mask() {
    let root = FakeRoot::node();
    root.write(ONLINE_CPUS, "0-3,8-11\n");
    assert_eq!(root.apply(&leave_everything_alone()).unwrap().cpus, 8);
    root.remove(ONLINE_CPUS);
    let cpus = root.apply(&leave_everything_alone()).unwrap().cpus;
    assert_eq!(cpus, affinity_cpus());
    assert!(cpus >= 1);
}

// === applying against a fake tree ===

#[test]
fn defaults_raise_the_table_set_tcp_timeouts_and_the_oom_score() {
    let root = FakeRoot::node();
    let report = root.apply(&defaults()).unwrap();
    assert_eq!((report.cpus, report.conntrack_max), (2, Some(131072)));
    assert_eq!(
        root.written(&report),
        [
            (NF_CONNTRACK_MAX.to_string(), 131072),
            (HASHSIZE.to_string(), 32768),
            (TCP_TIMEOUT_ESTABLISHED.to_string(), 86400),
            (TCP_TIMEOUT_CLOSE_WAIT.to_string(), 3600),
            (OOM_SCORE_ADJ.to_string(), -999),
        ]
    );
    assert_eq!(report.changes[0].before, Some(65536));
    assert_eq!(root.read(NF_CONNTRACK_MAX), "131072");
    assert_eq!(root.read(HASHSIZE), "32768");
    assert_eq!(root.read(OOM_SCORE_ADJ), "-999");
    // Left alone: zero UDP timeouts, a false be-liberal.
    assert_eq!(
        (root.read(UDP_TIMEOUT), root.read(UDP_TIMEOUT_STREAM), root.read(TCP_BE_LIBERAL)),
        ("30".into(), "120".into(), "0".into())
    );
    assert!(report.warnings.is_empty());
}

#[test]
fn nothing_is_written_when_the_kernel_already_has_the_values() {
    let root = FakeRoot::node();
    root.apply(&defaults()).unwrap();
    let again = root.apply(&defaults()).unwrap();
    assert_eq!(root.written(&again), [], "a second start (after --init-only) needs no write access");
}

#[test]
fn a_larger_table_is_never_lowered_and_a_larger_hashsize_is_kept() {
    let root = FakeRoot::node();
    root.write(NF_CONNTRACK_MAX, "262144");
    root.write(HASHSIZE, "65536");
    let report = root.apply(&defaults()).unwrap();
    assert_eq!(report.conntrack_max, Some(131072));
    assert_eq!((root.read(NF_CONNTRACK_MAX), root.read(HASHSIZE)), ("262144".into(), "65536".into()));
    assert!(!root.written(&report).iter().any(|(f, _)| f == NF_CONNTRACK_MAX || f == HASHSIZE));
}

#[test]
fn hashsize_is_raised_even_when_the_table_is_large_enough() {
    let root = FakeRoot::node();
    root.write(NF_CONNTRACK_MAX, "262144");
    root.write(HASHSIZE, "1024");
    let report = root.apply(&defaults()).unwrap();
    assert_eq!(root.written(&report)[0], (HASHSIZE.to_string(), 32768));
    assert_eq!(report.changes[0].before, Some(1024));
}

#[test]
fn an_unreadable_table_size_counts_as_too_small() {
    let root = FakeRoot::node();
    root.write(NF_CONNTRACK_MAX, "garbage");
    let report = root.apply(&defaults()).unwrap();
    assert_eq!(report.changes[0].before, None);
    assert_eq!(root.read(NF_CONNTRACK_MAX), "131072");
}

#[test]
fn max_per_core_zero_leaves_table_and_hashsize_alone_even_when_missing() {
    let root = FakeRoot::node();
    root.remove(NF_CONNTRACK_MAX);
    root.remove(HASHSIZE);
    let settings = NodeSetupSettings {
        conntrack: ConntrackSettings { max_per_core: 0, min: 1 << 30, ..ConntrackSettings::default() },
        ..defaults()
    };
    let report = root.apply(&settings).unwrap();
    assert_eq!(report.conntrack_max, None);
    assert_eq!(
        root.written(&report).iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
        [TCP_TIMEOUT_ESTABLISHED, TCP_TIMEOUT_CLOSE_WAIT, OOM_SCORE_ADJ]
    );
    assert!(!root.path(NF_CONNTRACK_MAX).exists() && !root.path(HASHSIZE).exists());
}

#[test]
fn settings_that_ask_for_nothing_touch_nothing_not_even_missing_files() {
    let root = FakeRoot::empty();
    let report = root.apply(&leave_everything_alone()).unwrap();
    assert!(report.changes.is_empty() && report.warnings.is_empty());
    assert_eq!(fs::read_dir(&root.0).unwrap().count(), 0, "nothing created");
}

#[test]
fn each_non_zero_value_is_written_to_its_own_file() {
    let root = FakeRoot::node();
    let settings = NodeSetupSettings {
        conntrack: ConntrackSettings {
            max_per_core: 0,
            min: 0,
            tcp_established_timeout: 2 * 3600 * SECOND,
            tcp_close_wait_timeout: 60 * SECOND,
            tcp_be_liberal: true,
            udp_timeout: 45 * SECOND,
            udp_stream_timeout: 2 * 60 * SECOND,
        },
        oom_score_adj: Some(-500),
    };
    let report = root.apply(&settings).unwrap();
    // close_wait (60) and udp_timeout_stream (120) already hold the values asked for.
    assert_eq!(
        root.written(&report),
        [
            (TCP_TIMEOUT_ESTABLISHED.to_string(), 7200),
            (TCP_BE_LIBERAL.to_string(), 1),
            (UDP_TIMEOUT.to_string(), 45),
            (OOM_SCORE_ADJ.to_string(), -500),
        ]
    );
    assert_eq!(root.read(TCP_BE_LIBERAL), "1");
}

#[test]
fn a_false_be_liberal_never_clears_a_set_one() {
    let root = FakeRoot::node();
    root.write(TCP_BE_LIBERAL, "1");
    root.apply(&defaults()).unwrap();
    assert_eq!(root.read(TCP_BE_LIBERAL), "1");
}

#[test]
fn oom_score_none_leaves_it_alone_and_a_failure_to_set_it_is_not_fatal() {
    let root = FakeRoot::node();
    root.write(OOM_SCORE_ADJ, "100");
    root.apply(&NodeSetupSettings { oom_score_adj: None, ..defaults() }).unwrap();
    assert_eq!(root.read(OOM_SCORE_ADJ), "100");

    root.remove(OOM_SCORE_ADJ);
    let report = root.apply(&defaults()).unwrap();
    assert_eq!(report.warnings.len(), 1);
    let warning = report.warnings[0].to_string();
    assert!(warning.contains(&root.path(OOM_SCORE_ADJ).display().to_string()), "{warning}");
    assert!(!root.path(OOM_SCORE_ADJ).exists(), "not created");
}

#[test]
fn conntrack_failures_are_fatal_and_name_the_file() {
    // No hashsize to read while the table is to be sized: fatal (upstream returns the read error).
    let root = FakeRoot::node();
    root.remove(HASHSIZE);
    let err = root.apply(&defaults()).unwrap_err();
    assert!(matches!(err, NodeSetupError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains(&root.path(HASHSIZE).display().to_string()), "{err}");

    // A hashsize that is not a number.
    let root = FakeRoot::node();
    root.write(HASHSIZE, "lots");
    let err = root.apply(&defaults()).unwrap_err().to_string();
    assert!(err.contains(HASHSIZE) && err.contains("lots"), "{err}");

    // A missing sysctl (nf_conntrack not loaded) that must be written: fatal, and not created.
    let root = FakeRoot::node();
    root.remove(UDP_TIMEOUT);
    let settings = NodeSetupSettings {
        conntrack: ConntrackSettings { udp_timeout: 45 * SECOND, ..ConntrackSettings::default() },
        ..defaults()
    };
    let err = root.apply(&settings).unwrap_err();
    assert!(matches!(err, NodeSetupError::Write { value: 45, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&root.path(UDP_TIMEOUT).display().to_string()), "{message}");
    assert!(message.contains("nf_conntrack module"), "{message}");
    assert!(!root.path(UDP_TIMEOUT).exists());
}

#[test]
fn an_unreadable_timeout_is_written_anyway() {
    let root = FakeRoot::node();
    root.write(TCP_TIMEOUT_CLOSE_WAIT, "");
    let report = root.apply(&defaults()).unwrap();
    let change = report.changes.iter().find(|c| c.path == root.path(TCP_TIMEOUT_CLOSE_WAIT)).unwrap();
    assert_eq!((change.before, change.after), (None, 3600));
}

#[test]
fn hints_explain_the_usual_causes() {
    let err = |errno| io::Error::from_raw_os_error(errno);
    assert!(hint(HASHSIZE, &err(libc::EROFS)).contains("read-only"));
    assert!(hint(HASHSIZE, &err(libc::EOPNOTSUPP)).contains("initial network namespace"));
    assert!(hint(NF_CONNTRACK_MAX, &err(libc::EACCES)).contains("--conntrack-max-per-core=0"));
    assert!(hint(OOM_SCORE_ADJ, &err(libc::EACCES)).contains("CAP_SYS_RESOURCE"));
    assert_eq!(hint(UDP_TIMEOUT, &err(libc::EIO)), "");
}
