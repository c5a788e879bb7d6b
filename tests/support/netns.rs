//! Backends on addresses that are not loopback, for the places Kubernetes refuses
//! 127.0.0.0/8 (EndpointSlice addresses): a network namespace of our own, joined to the host
//! by a veth pair, with addresses from 198.18.0.0/15 (RFC 2544's benchmark range, never
//! routed off this host). Needs root and iproute2, as CI has.
//!
//! One namespace per test process. Statics are never dropped, so a guard process deletes the
//! namespace when our end of its stdin closes, that is when this process exits however it
//! exits; namespaces left by processes killed harder are removed at the next start.

use crate::{Echo, Proc, binaries};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

const PREFIX: &str = "ptest-";

pub struct BackendNet {
    pub name: String,
    ns_if: String,
    octet: u8,
    next: AtomicU8,
    _guard: parking_lot::Mutex<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes namespaces of test processes that no longer run.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// The backend network of this test process.
pub fn backend_net() -> &'static BackendNet {
    static NET: OnceLock<BackendNet> = OnceLock::new();
    NET.get_or_init(|| {
        remove_stale();
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}");
        // Interface names are at most 15 bytes.
        let host_if = format!("pth{}", pid % 10_000_000);
        let ns_if = format!("ptn{}", pid % 10_000_000);
        let octet = u8::try_from(1 + pid % 250).expect("fits");
        let mut guard = Command::new("sh")
            .args(["-c", &format!("read _; ip netns del {name}")])
            .stdin(Stdio::piped())
            .spawn()
            .expect("start the clean-up guard");
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&[
            "addr",
            "add",
            &format!("198.18.{octet}.1/24"),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        // Keep the pipe open; writing nothing, it closes when we exit.
        let _ = guard.stdin.as_mut().map(|s| s.flush());
        BackendNet {
            name,
            ns_if,
            octet,
            next: AtomicU8::new(2),
            _guard: parking_lot::Mutex::new(guard),
        }
    })
}

impl BackendNet {
    /// A new address inside the namespace.
    pub fn address(&self) -> IpAddr {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        assert!(n < 250, "out of backend addresses");
        let addr = Ipv4Addr::new(198, 18, self.octet, n);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &self.ns_if,
        ]);
        IpAddr::V4(addr)
    }

    /// An echo backend listening inside the namespace on an address of its own.
    pub fn echo(&self, name: &str) -> Echo {
        let addr = SocketAddr::new(self.address(), 8080);
        let echo = binaries().echo.display().to_string();
        let proc = Proc::spawn(
            name,
            std::path::Path::new("ip"),
            &[
                "netns".into(),
                "exec".into(),
                self.name.clone(),
                echo,
                "--listen".into(),
                addr.to_string(),
                "--name".into(),
                name.into(),
            ],
        );
        crate::wait_port(addr);
        Echo { addr, proc }
    }
}
