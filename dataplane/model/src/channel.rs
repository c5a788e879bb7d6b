//! The snapshot channel's wire format, shared by the controller and the dataplane.
//!
//! `GET /v1/snapshots/{namespace}/{gateway}` over HTTP/2 and TLS answers with a body that never
//! ends while the connection lives: a sequence of frames, each a 4-byte big-endian length and
//! that many bytes of JSON [`Snapshot`]. The dataplane answers each one with
//! `POST /v1/acks/{namespace}/{gateway}` and an [`Ack`].
//!
//! Why JSON frames rather than gRPC: the snapshot's serde types are the schema, so there is no
//! second definition (protobuf) to keep in step, and a frame is easy to inspect. Snapshots are
//! sent whole and rarely (on a change), so encoding cost is not on any hot path. Latest wins:
//! the server only ever holds the newest snapshot per Gateway, so a slow reader skips
//! versions instead of queueing them.

use crate::snapshot::Snapshot;
use serde::{Deserialize, Serialize};

/// The audience dataplane tokens must be issued for (projected ServiceAccount token).
pub const TOKEN_AUDIENCE: &str = "portico.dev/snapshots";
/// Request header naming the dataplane replica (its pod name).
pub const REPLICA_HEADER: &str = "x-portico-replica";
/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 64 << 20;

/// A dataplane's answer to one snapshot version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    pub version: u64,
    /// `None` for ACK; the reason the snapshot was rejected for NACK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One frame for `snapshot`.
pub fn encode_frame(snapshot: &Snapshot) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(snapshot)?;
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(json.len() + 4);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is larger than the {MAX_FRAME} byte limit")]
    TooLarge(usize),
    #[error("frame is not a valid snapshot: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// Accumulates bytes and yields whole frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete snapshot, if one has fully arrived.
    pub fn next_snapshot(&mut self) -> Result<Option<Snapshot>, FrameError> {
        let Some(len) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
        Ok(Some(serde_json::from_slice(&frame)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectRef;

    #[test]
    fn frames_survive_arbitrary_splits() {
        let mut a = Snapshot {
            version: 1,
            gateway: ObjectRef::new("ns", "gw"),
            ..Snapshot::default()
        };
        let mut bytes = encode_frame(&a).expect("encode");
        a.version = 2;
        bytes.extend(encode_frame(&a).expect("encode"));
        for split in [1, 3, 4, 5, 17, bytes.len() - 1] {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(split) {
                d.push(chunk);
                while let Some(s) = d.next_snapshot().expect("decode") {
                    got.push(s.version);
                }
            }
            assert_eq!(got, [1, 2], "split {split}");
        }
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut d = FrameDecoder::default();
        d.push(&u32::MAX.to_be_bytes());
        assert!(matches!(d.next_snapshot(), Err(FrameError::TooLarge(_))));
        let mut d = FrameDecoder::default();
        d.push(&3u32.to_be_bytes());
        d.push(b"{x}");
        assert!(matches!(d.next_snapshot(), Err(FrameError::Invalid(_))));
    }
}
