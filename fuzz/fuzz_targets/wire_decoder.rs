//! Fuzzes the XenStore stream framer, `xenstore::wire::FrameDecoder`, and the
//! payload splitter, `xenstore::wire::split_strings`.
//!
//! Input layout: byte 0 picks the decoder's payload limit and how many of the
//! following bytes are chunk sizes; the rest is the byte stream, pushed into
//! the decoder in those chunk sizes (cycled; 0 means an empty push). After
//! every push all whole messages are taken out.
//!
//! Checked: re-encoding the decoded messages reproduces exactly the bytes the
//! decoder consumed; what it holds back is exactly the unconsumed tail and is
//! an incomplete message; an oversized length is reported from the header
//! alone, with the header's own value, and stays reported; no payload exceeds
//! the limit; `split_strings` loses and invents no byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenstore::wire::{
    split_strings, FrameDecoder, FrameError, Header, Message, MsgType, HEADER_LEN, PAYLOAD_MAX,
    XENBUS_DEV_PAYLOAD_MAX,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    // Real limits, plus small ones so that many messages fit a short input.
    let max_payload = match control & 0x3 {
        0 => PAYLOAD_MAX,
        1 => XENBUS_DEV_PAYLOAD_MAX,
        2 => 0,
        _ => 64,
    };
    let n_sizes = usize::from(control >> 2) % 16;
    let (sizes, stream) = rest.split_at(n_sizes.min(rest.len()));
    let mut sizes: Vec<usize> = sizes.iter().map(|&s| usize::from(s)).collect();
    if sizes.iter().all(|&s| s == 0) {
        sizes.push(1);
    }

    let mut decoder = FrameDecoder::new(max_payload);
    let mut reencoded = Vec::with_capacity(stream.len());
    let mut pushed = 0usize;
    let mut failed = None;

    'feed: for &size in sizes.iter().cycle() {
        if pushed == stream.len() {
            break;
        }
        let end = (pushed + size).min(stream.len());
        decoder.push(&stream[pushed..end]);
        pushed = end;
        loop {
            match decoder.next_message() {
                Ok(Some(msg)) => {
                    check_message(&msg, max_payload);
                    msg.encode_into(&mut reencoded);
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break 'feed;
                }
            }
        }
        check_consumed(stream, pushed, &reencoded, decoder.pending());
    }

    let consumed = reencoded.len();
    check_consumed(stream, pushed, &reencoded, decoder.pending());
    let held = &stream[consumed..pushed];
    match failed {
        Some(FrameError::PayloadTooLong { len, max }) => {
            // The error comes from the header at the head of what is held.
            let head: &[u8; HEADER_LEN] = held
                .first_chunk()
                .expect("error without a whole header held");
            assert_eq!(Header::decode(head).len, len);
            assert_eq!(max, max_payload);
            assert!(len as usize > max_payload);
            // A broken stream stays broken.
            assert_eq!(
                decoder.next_message(),
                Err(FrameError::PayloadTooLong { len, max })
            );
        }
        None => {
            assert_eq!(pushed, stream.len());
            // Whatever is held is a message still missing bytes.
            if let Some(head) = held.first_chunk::<HEADER_LEN>() {
                let len = Header::decode(head).len as usize;
                assert!(len <= max_payload);
                assert!(
                    held.len() < HEADER_LEN + len,
                    "a whole message was held back"
                );
            }
            assert_eq!(decoder.next_message(), Ok(None));
        }
    }
});

/// The decoder consumed a prefix of the stream that re-encodes exactly, and
/// holds the rest of what was pushed.
fn check_consumed(stream: &[u8], pushed: usize, reencoded: &[u8], pending: usize) {
    assert!(reencoded.len() <= pushed);
    assert_eq!(reencoded, &stream[..reencoded.len()]);
    assert_eq!(reencoded.len() + pending, pushed);
}

fn check_message(msg: &Message, max_payload: usize) {
    assert!(msg.payload.len() <= max_payload);
    let header = msg.header();
    assert_eq!(header.len as usize, msg.payload.len());
    assert_eq!(Header::decode(&header.encode()), header);
    match msg.kind() {
        Some(t) => assert_eq!(t as u32, msg.msg_type),
        None => assert!(MsgType::ALL.iter().all(|t| *t as u32 != msg.msg_type)),
    }

    // split_strings: NUL-terminated parts, then an unterminated tail.
    let (parts, tail) = split_strings(&msg.payload);
    let mut joined = Vec::with_capacity(msg.payload.len());
    for part in &parts {
        assert!(!part.contains(&0));
        joined.extend_from_slice(part);
        joined.push(0);
    }
    assert!(!tail.contains(&0));
    joined.extend_from_slice(tail);
    assert_eq!(joined, msg.payload);
    assert_eq!(parts.len(), msg.payload.iter().filter(|&&b| b == 0).count());
}
