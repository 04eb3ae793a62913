//! The XenStore wire format (`xen/include/public/io/xs_wire.h`).
//!
//! Every message, in both directions, is a 16-byte header of four
//! little-endian `u32` — `type`, `req_id`, `tx_id`, `len` — followed by `len`
//! payload bytes. `len` never exceeds [`PAYLOAD_MAX`]; a peer that sends more
//! is broken beyond repair and its connection is closed. Strings in a payload
//! are NUL-terminated; lists are NUL-separated. The server echoes `req_id` and
//! `tx_id` in every reply; watch events carry `req_id = tx_id = 0`.
//!
//! This module does no I/O: it frames, parses and builds messages.

use crate::errno::XsErrno;

/// Size of `struct xsd_sockmsg`.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`: the largest payload in either direction.
pub const PAYLOAD_MAX: usize = 4096;
/// Linux's `/dev/xen/xenbus` assembles a request in a 4096-byte buffer that
/// includes the header, so requests through the device are 16 bytes shorter.
pub const XENBUS_DEV_PAYLOAD_MAX: usize = PAYLOAD_MAX - HEADER_LEN;
/// `XENSTORE_ABS_PATH_MAX`.
pub const ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`.
pub const REL_PATH_MAX: usize = 2048;

/// `enum xsd_sockmsg_type`. 20 was `XS_RESTRICT` and is gone; 23–26 were
/// added after Xen 4.17 and are answered as unsupported by this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MsgType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
    GetFeature = 23,
    SetFeature = 24,
    GetQuota = 25,
    SetQuota = 26,
}

/// `XS_INVALID`: guaranteed never to be a valid type.
pub const XS_INVALID: u32 = 0xffff;

impl MsgType {
    /// All defined types, in numeric order.
    pub const ALL: [MsgType; 26] = [
        MsgType::Control,
        MsgType::Directory,
        MsgType::Read,
        MsgType::GetPerms,
        MsgType::Watch,
        MsgType::Unwatch,
        MsgType::TransactionStart,
        MsgType::TransactionEnd,
        MsgType::Introduce,
        MsgType::Release,
        MsgType::GetDomainPath,
        MsgType::Write,
        MsgType::Mkdir,
        MsgType::Rm,
        MsgType::SetPerms,
        MsgType::WatchEvent,
        MsgType::Error,
        MsgType::IsDomainIntroduced,
        MsgType::Resume,
        MsgType::SetTarget,
        MsgType::ResetWatches,
        MsgType::DirectoryPart,
        MsgType::GetFeature,
        MsgType::SetFeature,
        MsgType::GetQuota,
        MsgType::SetQuota,
    ];

    /// The type for a raw header value, if it names one.
    pub fn from_raw(raw: u32) -> Option<MsgType> {
        MsgType::ALL.into_iter().find(|t| *t as u32 == raw)
    }
}

/// `struct xsd_sockmsg`, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Raw type: unknown values must still be answered, so it is not a [`MsgType`].
    pub msg_type: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Header {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Header {
            msg_type: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.msg_type.to_le_bytes());
        out[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out
    }
}

/// A whole message: header fields and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub msg_type: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

/// Why bytes could not be framed as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message payload of {len} bytes exceeds the {max}-byte limit")]
    PayloadTooLong { len: u32, max: usize },
}

impl Message {
    pub fn new(msg_type: MsgType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Message {
        Message {
            msg_type: msg_type as u32,
            req_id,
            tx_id,
            payload,
        }
    }

    /// The decoded type, if the raw one is known.
    pub fn kind(&self) -> Option<MsgType> {
        MsgType::from_raw(self.msg_type)
    }

    pub fn header(&self) -> Header {
        Header {
            msg_type: self.msg_type,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
        }
    }

    /// Appends the encoded message to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header().encode());
        out.extend_from_slice(&self.payload);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut out);
        out
    }

    /// An `ERROR` reply to `req`, echoing its ids.
    pub fn error_reply(req_id: u32, tx_id: u32, errno: XsErrno) -> Message {
        Message::new(MsgType::Error, req_id, tx_id, nul_terminated(errno.name()))
    }

    /// A `WATCH_EVENT`: `<path>\0<token>\0`, with zero ids.
    pub fn watch_event(path: &str, token: &[u8]) -> Message {
        let mut payload = Vec::with_capacity(path.len() + token.len() + 2);
        payload.extend_from_slice(path.as_bytes());
        payload.push(0);
        payload.extend_from_slice(token);
        payload.push(0);
        Message::new(MsgType::WatchEvent, 0, 0, payload)
    }
}

/// `s` followed by one NUL.
pub fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// Splits a payload into its NUL-terminated strings. Bytes after the last
/// NUL (an unterminated tail) are returned separately so callers can decide
/// whether the request allows one (WRITE's value does; paths do not).
pub fn split_strings(payload: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut parts = Vec::new();
    let mut rest = payload;
    while let Some(i) = rest.iter().position(|&b| b == 0) {
        parts.push(&rest[..i]);
        rest = &rest[i + 1..];
    }
    (parts, rest)
}

/// Incremental framer for a byte stream. Feed it what `read` returned and
/// take whole messages out; it keeps partial messages between calls.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_payload: usize,
}

impl FrameDecoder {
    pub fn new(max_payload: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            max_payload,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a whole message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, `Ok(None)` if more bytes are needed, or an
    /// error if the stream can never be valid again.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        let Some(head) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::decode(head);
        let len = header.len as usize;
        if len > self.max_payload {
            return Err(FrameError::PayloadTooLong {
                len: header.len,
                max: self.max_payload,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Message {
            msg_type: header.msg_type,
            req_id: header.req_id,
            tx_id: header.tx_id,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits_match_xs_wire_h() {
        assert_eq!(HEADER_LEN, 16);
        assert_eq!(PAYLOAD_MAX, 4096);
        assert_eq!(XENBUS_DEV_PAYLOAD_MAX, 4080);
        assert_eq!(ABS_PATH_MAX, 3072);
        assert_eq!(REL_PATH_MAX, 2048);
        assert_eq!(XS_INVALID, 0xffff);
    }

    #[test]
    fn type_numbers_match_xs_wire_h() {
        let numbers: Vec<(MsgType, u32)> = MsgType::ALL.iter().map(|t| (*t, *t as u32)).collect();
        let expect = [
            (MsgType::Control, 0),
            (MsgType::Directory, 1),
            (MsgType::Read, 2),
            (MsgType::GetPerms, 3),
            (MsgType::Watch, 4),
            (MsgType::Unwatch, 5),
            (MsgType::TransactionStart, 6),
            (MsgType::TransactionEnd, 7),
            (MsgType::Introduce, 8),
            (MsgType::Release, 9),
            (MsgType::GetDomainPath, 10),
            (MsgType::Write, 11),
            (MsgType::Mkdir, 12),
            (MsgType::Rm, 13),
            (MsgType::SetPerms, 14),
            (MsgType::WatchEvent, 15),
            (MsgType::Error, 16),
            (MsgType::IsDomainIntroduced, 17),
            (MsgType::Resume, 18),
            (MsgType::SetTarget, 19),
            (MsgType::ResetWatches, 21),
            (MsgType::DirectoryPart, 22),
            (MsgType::GetFeature, 23),
            (MsgType::SetFeature, 24),
            (MsgType::GetQuota, 25),
            (MsgType::SetQuota, 26),
        ];
        assert_eq!(numbers, expect);
        assert_eq!(MsgType::from_raw(20), None, "XS_RESTRICT was removed");
        assert_eq!(MsgType::from_raw(XS_INVALID), None);
    }

    #[test]
    fn header_is_four_little_endian_words() {
        let h = Header {
            msg_type: 2,
            req_id: 0x0102_0304,
            tx_id: 7,
            len: 5,
        };
        let bytes = h.encode();
        assert_eq!(bytes, [2, 0, 0, 0, 4, 3, 2, 1, 7, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(Header::decode(&bytes), h);
    }

    #[test]
    fn decoder_waits_for_whole_message_then_yields_it() {
        let msg = Message::new(MsgType::Read, 9, 0, b"/a\0".to_vec());
        let bytes = msg.encode();
        let mut d = FrameDecoder::new(PAYLOAD_MAX);
        d.push(&bytes[..10]);
        assert_eq!(d.next_message(), Ok(None));
        d.push(&bytes[10..]);
        assert_eq!(d.next_message(), Ok(Some(msg)));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn decoder_rejects_oversized_payload_from_header_alone() {
        let h = Header {
            msg_type: 2,
            req_id: 1,
            tx_id: 0,
            len: 4097,
        };
        let mut d = FrameDecoder::new(PAYLOAD_MAX);
        d.push(&h.encode());
        assert_eq!(
            d.next_message(),
            Err(FrameError::PayloadTooLong {
                len: 4097,
                max: 4096
            })
        );
    }

    #[test]
    fn split_strings_separates_unterminated_tail() {
        let (parts, tail) = split_strings(b"/a\0tok\0rest");
        assert_eq!(parts, vec![&b"/a"[..], &b"tok"[..]]);
        assert_eq!(tail, b"rest");
    }

    proptest! {
        #[test]
        fn any_message_sequence_survives_arbitrary_chunking(
            msgs in proptest::collection::vec((0u32..30, any::<u32>(), any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..300)), 0..8),
            cut in 1usize..64,
        ) {
            let msgs: Vec<Message> = msgs.into_iter()
                .map(|(t, r, x, p)| Message { msg_type: t, req_id: r, tx_id: x, payload: p })
                .collect();
            let mut bytes = Vec::new();
            for m in &msgs { m.encode_into(&mut bytes); }
            let mut d = FrameDecoder::new(PAYLOAD_MAX);
            let mut got = Vec::new();
            for chunk in bytes.chunks(cut) {
                d.push(chunk);
                while let Some(m) = d.next_message().unwrap() { got.push(m); }
            }
            prop_assert_eq!(got, msgs);
        }
    }
}
