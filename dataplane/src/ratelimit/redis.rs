//! A small Redis client for global limits: RESP2 over a few long-lived connections, each
//! pipelining whatever requests are waiting into one write (the batching that keeps a Redis
//! round trip per request affordable), reconnecting with back-off when Redis goes away.
//!
//! Any command (rate limiting's `EVALSHA`/`EVAL` of our scripts, the cache's `GET` and
//! `SET`), and `SELECT`. A request never waits for a connection: while Redis is down, calls
//! fail at once and the caller's failure mode applies.

use bytes::{Buf, BytesMut};
use portico_model::ratelimit::RedisAddress;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Connections per Redis: enough to spread the work over the cores, few enough for Redis.
const CONNECTIONS: usize = 2;
/// Calls waiting for a connection's next write, at most.
const QUEUE: usize = 8192;
/// Largest reply accepted by default (rate limiting's are a few integers; the cache's pool
/// takes its largest entry).
const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis is unreachable")]
    Down,
    #[error("Redis did not answer in time")]
    Timeout,
    /// Every connection's queue of waiting calls is full: the call is not queued (a queue
    /// without bound would hold requests for longer than any timeout). The policy's failure
    /// mode applies, as for any other Redis failure.
    #[error("too many Redis calls waiting")]
    Saturated,
    #[error("Redis answered with an error: {0}")]
    Server(String),
    #[error("unexpected answer from Redis")]
    Protocol,
}

/// A RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(crate::util::itoa(args.len() as u64, &mut [0; 20]));
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(crate::util::itoa(a.len() as u64, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` when it is not complete yet.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RedisError> {
    parse_within(buf, MAX_REPLY)
}

/// As [`parse`], with bulk strings of at most `max` bytes.
fn parse_within(buf: &[u8], max: usize) -> Result<Option<(Reply, usize)>, RedisError> {
    fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
        let end = buf.windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[..end], end + 2))
    }
    fn int(s: &[u8]) -> Result<i64, RedisError> {
        std::str::from_utf8(s)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(RedisError::Protocol)
    }
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some((head, used)) = line(&buf[1..]) else {
        return Ok(None);
    };
    let used = used + 1;
    let text = || String::from_utf8_lossy(head).into_owned();
    Ok(Some(match kind {
        b'+' => (Reply::Simple(text()), used),
        b'-' => (Reply::Error(text()), used),
        b':' => (Reply::Integer(int(head)?), used),
        b'$' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), used)));
            }
            let n = usize::try_from(n).map_err(|_| RedisError::Protocol)?;
            if n > max {
                return Err(RedisError::Protocol);
            }
            if buf.len() < used + n + 2 {
                return Ok(None);
            }
            (
                Reply::Bulk(Some(buf[used..used + n].to_vec())),
                used + n + 2,
            )
        }
        b'*' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), used)));
            }
            let n = usize::try_from(n).map_err(|_| RedisError::Protocol)?;
            if n > 1024 {
                return Err(RedisError::Protocol);
            }
            let mut items = Vec::with_capacity(n);
            let mut at = used;
            for _ in 0..n {
                match parse_within(&buf[at..], max)? {
                    None => return Ok(None),
                    Some((r, u)) => {
                        items.push(r);
                        at += u;
                    }
                }
            }
            (Reply::Array(Some(items)), at)
        }
        _ => return Err(RedisError::Protocol),
    }))
}

struct Call {
    command: Vec<u8>,
    reply: oneshot::Sender<Result<Reply, RedisError>>,
}

struct Connection {
    calls: mpsc::Sender<Call>,
    up: Arc<AtomicBool>,
}

/// The connections to one Redis, shared by every policy that uses it.
pub struct RedisPool {
    address: RedisAddress,
    connections: Vec<Connection>,
    next: AtomicUsize,
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPool")
            .field("address", &self.address)
            .finish()
    }
}

impl RedisPool {
    /// Starts connecting in the background (the connections live as long as the pool).
    pub fn new(address: RedisAddress) -> Arc<Self> {
        Self::with_max_reply(address, MAX_REPLY)
    }

    /// As [`RedisPool::new`], accepting replies of up to `max_reply` bytes.
    pub fn with_max_reply(address: RedisAddress, max_reply: usize) -> Arc<Self> {
        let connections = (0..CONNECTIONS)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let up = Arc::new(AtomicBool::new(false));
                tokio::spawn(run(address.clone(), rx, up.clone(), max_reply));
                Connection { calls: tx, up }
            })
            .collect();
        Arc::new(Self {
            address,
            connections,
            next: AtomicUsize::new(0),
        })
    }

    pub fn address(&self) -> &str {
        &self.address.host_port
    }

    /// Whether any connection is up.
    pub fn is_up(&self) -> bool {
        self.connections
            .iter()
            .any(|c| c.up.load(Ordering::Relaxed))
    }

    /// Sends one command and waits at most `timeout` for its reply.
    pub async fn call(&self, args: &[&[u8]], timeout: Duration) -> Result<Reply, RedisError> {
        let n = self.connections.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(conn) = (0..n)
            .map(|i| &self.connections[(first + i) % n])
            .find(|c| c.up.load(Ordering::Relaxed))
        else {
            return Err(RedisError::Down);
        };
        let mut command = Vec::with_capacity(64 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        encode(&mut command, args);
        let (tx, rx) = oneshot::channel();
        conn.calls
            .try_send(Call { command, reply: tx })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => RedisError::Saturated,
                mpsc::error::TrySendError::Closed(_) => RedisError::Down,
            })?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(RedisError::Timeout),
            Ok(Err(_)) => Err(RedisError::Down),
            Ok(Ok(r)) => r,
        }
    }
}

/// One connection's life: connect, serve calls until it breaks, back off, again. Ends when
/// the pool is dropped.
async fn run(
    address: RedisAddress,
    mut calls: mpsc::Receiver<Call>,
    up: Arc<AtomicBool>,
    max_reply: usize,
) {
    let mut backoff = Duration::from_millis(50);
    let mut was_up = true;
    loop {
        match connect(&address).await {
            Ok(stream) => {
                backoff = Duration::from_millis(50);
                up.store(true, Ordering::Relaxed);
                if !was_up {
                    tracing::info!(redis = %address.host_port, "connected to Redis");
                }
                was_up = true;
                let closed = serve(stream, &mut calls, max_reply).await;
                up.store(false, Ordering::Relaxed);
                if closed {
                    return;
                }
            }
            Err(e) => {
                if was_up {
                    tracing::warn!(redis = %address.host_port, error = %e, "cannot connect to Redis; retrying");
                }
                was_up = false;
            }
        }
        // Calls queued while the connection broke fail now rather than at their timeout.
        while let Ok(call) = calls.try_recv() {
            let _ = call.reply.send(Err(RedisError::Down));
        }
        if calls.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn connect(address: &RedisAddress) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(
        Duration::from_secs(1),
        TcpStream::connect(&address.host_port),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let mut stream = stream;
    if address.db != 0 {
        let mut cmd = Vec::new();
        encode(&mut cmd, &[b"SELECT", address.db.to_string().as_bytes()]);
        stream.write_all(&cmd).await?;
        let mut buf = BytesMut::with_capacity(64);
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            match parse(&buf) {
                Ok(Some((Reply::Simple(_), _))) => break,
                Ok(None) => continue,
                _ => return Err(std::io::Error::other("SELECT failed")),
            }
        }
    }
    Ok(stream)
}

/// Serves calls on one connection until it fails (false) or the pool is gone (true).
async fn serve(mut stream: TcpStream, calls: &mut mpsc::Receiver<Call>, max_reply: usize) -> bool {
    let mut waiting: VecDeque<oneshot::Sender<Result<Reply, RedisError>>> = VecDeque::new();
    let mut buf = BytesMut::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let fail = |waiting: &mut VecDeque<oneshot::Sender<Result<Reply, RedisError>>>| {
        for w in waiting.drain(..) {
            let _ = w.send(Err(RedisError::Down));
        }
    };
    loop {
        tokio::select! {
            call = calls.recv() => {
                let Some(call) = call else {
                    fail(&mut waiting);
                    return true;
                };
                // Everything waiting goes out in one write.
                out.clear();
                out.extend_from_slice(&call.command);
                waiting.push_back(call.reply);
                while out.len() < 64 * 1024 {
                    let Ok(more) = calls.try_recv() else { break };
                    out.extend_from_slice(&more.command);
                    waiting.push_back(more.reply);
                }
                if stream.write_all(&out).await.is_err() {
                    fail(&mut waiting);
                    return false;
                }
            }
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => {
                        fail(&mut waiting);
                        return false;
                    }
                    Ok(_) => loop {
                        match parse_within(&buf, max_reply) {
                            Ok(None) => break,
                            Ok(Some((reply, used))) => {
                                buf.advance(used);
                                match waiting.pop_front() {
                                    Some(w) => {
                                        let _ = w.send(Ok(reply));
                                    }
                                    // An answer nobody asked for: the stream is out of step.
                                    None => return false,
                                }
                            }
                            Err(_) => {
                                fail(&mut waiting);
                                return false;
                            }
                        }
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_and_parses_every_reply_kind() {
        let mut out = Vec::new();
        encode(&mut out, &[b"EVALSHA", b"abc", b"1", b"k"]);
        assert_eq!(
            out,
            b"*4\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n$1\r\nk\r\n"
        );
        let reply = b"*4\r\n:1\r\n:-7\r\n$3\r\nabc\r\n$-1\r\n+OK\r\n";
        let (r, used) = parse(reply).expect("valid").expect("complete");
        assert_eq!(
            r,
            Reply::Array(Some(vec![
                Reply::Integer(1),
                Reply::Integer(-7),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Bulk(None),
            ]))
        );
        let (r, _) = parse(&reply[used..]).expect("valid").expect("complete");
        assert_eq!(r, Reply::Simple("OK".into()));
        assert_eq!(
            parse(b"-NOSCRIPT No matching script\r\n")
                .expect("valid")
                .expect("complete")
                .0,
            Reply::Error("NOSCRIPT No matching script".into())
        );
    }

    #[test]
    fn incomplete_replies_wait_and_garbage_is_refused() {
        for partial in [&b"*2\r\n:1\r\n"[..], b"$5\r\nab", b":12", b""] {
            assert_eq!(parse(partial).expect("valid so far"), None);
        }
        for bad in [&b"?x\r\n"[..], b":x\r\n", b"$999999999\r\n"] {
            assert!(parse(bad).is_err());
        }
    }
}
