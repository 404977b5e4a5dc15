//! The NATed network namespaces of `scripts/netns-nat.sh`, for one test; shared by the core's
//! TURN tests and the `meshrtc` binary's ICE tests
//!
//! Needs root. [`Nat::up`] skips (returns `None`) with a message when namespaces cannot be
//! made, and fails when `CI` is set.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/netns-nat.sh");

/// The NATed namespaces of one test; removed on drop
pub struct Nat {
    prefix: String,
}

impl Nat {
    /// Builds them, or returns `None` (skip) where namespaces cannot be made outside CI
    pub fn up(symmetric: bool) -> Option<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "mrtc{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = Command::new("bash");
        cmd.args([SCRIPT, "up", "--prefix", &prefix]);
        if symmetric {
            cmd.arg("--symmetric");
        }
        let out = cmd.output().expect("bash runs");
        let nat = Self { prefix };
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                std::env::var_os("CI").is_none(),
                "netns-nat.sh failed (root, iproute2 and iptables needed): {why}"
            );
            eprintln!(
                "skipped: cannot build network namespaces (needs root, iproute2, iptables): {why}"
            );
            return None;
        }
        Some(nat)
    }

    /// The full name of namespace `name` (`pub`, `lan1`, `lan2`, `nat1`, `nat2`)
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([SCRIPT, "down", "--prefix", &self.prefix])
            .status();
    }
}
