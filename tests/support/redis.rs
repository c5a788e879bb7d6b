//! A real `redis-server` (Debian's, installed into `target/tools/redis` by `make redis`) on
//! its own 127.0.0.x address, for global rate limits; killed on drop, restartable on the same
//! port.

use crate::{Proc, TempDir, free_port, loopback_ip};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// The launcher `make redis` writes, or `PORTICO_REDIS_SERVER`.
pub fn server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTICO_REDIS_SERVER") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/redis/redis-server");
    assert!(
        p.exists(),
        "{} is missing: run `make redis` (make test does)",
        p.display()
    );
    p
}

pub struct Redis {
    pub addr: SocketAddr,
    proc: Option<Proc>,
    dir: TempDir,
}

impl Redis {
    pub fn start() -> Self {
        let ip = loopback_ip();
        let addr = SocketAddr::new(ip, free_port(ip));
        let mut r = Self {
            addr,
            proc: None,
            dir: TempDir::new("redis"),
        };
        r.restart();
        r
    }

    /// `redis://ip:port`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills the server at once (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts the server (again) on the same address, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let args: Vec<String> = [
            "--bind",
            &self.addr.ip().to_string(),
            "--port",
            &self.addr.port().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            &self.dir.path().display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.proc = Some(Proc::spawn("redis", &server_path(), &args));
        let end = Instant::now() + crate::DEADLINE;
        while self.try_command(&["PING"]).as_deref() != Some("+PONG\r\n") {
            assert!(Instant::now() < end, "redis on {} did not start", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one command and returns the raw reply.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|| panic!("redis on {} does not answer", self.addr))
    }

    fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(cmd.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
