//! Arbitrary request streams from three connections (privileged dom0 and
//! unprivileged domains 1 and 2) into the XenStore server's protocol core.
//!
//! Input: records of `[conn, type, tx, len, payload[len]]`; `type` is taken
//! mod 32 so unknown and forbidden types appear, `tx` is small so that real
//! transaction ids are hit. A `conn` byte of 0xff reconnects a connection
//! (dropping its transactions and watches) instead.
//!
//! Checked: no panic; every request gets exactly one reply, to its sender,
//! echoing `req_id` and `tx_id`, typed as the request or `ERROR`, within the
//! payload limit; watch events carry zero ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenstore::server::{Core, Quotas};
use xenstore::wire::{Message, MsgType, PAYLOAD_MAX};

fuzz_target!(|data: &[u8]| {
    let mut core = Core::new(Quotas::default());
    core.connect(0, 0, true);
    for d in 1..=2u16 {
        core.introduce(d);
        core.connect(u64::from(d), d, false);
    }
    core.effects.clear();
    let mut rest = data;
    let mut req_id = 0u32;
    while let [conn, ty, tx, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        let conn = u64::from(*conn);
        if conn == 0xff {
            let id = u64::from(*ty % 3);
            core.disconnect(id);
            core.connect(id, u16::try_from(id).unwrap_or(0), id == 0);
            continue;
        }
        let conn = conn % 3;
        req_id = req_id.wrapping_add(1);
        let msg = Message {
            msg_type: u32::from(*ty % 32),
            req_id,
            tx_id: u32::from(*tx % 4),
            payload: payload.to_vec(),
        };
        core.handle(conn, &msg);
        let mut replies = 0;
        for (to, m) in core.out.drain(..) {
            assert!(m.payload.len() <= PAYLOAD_MAX);
            if m.msg_type == MsgType::WatchEvent as u32 && (m.req_id, m.tx_id) == (0, 0) {
                continue;
            }
            replies += 1;
            assert_eq!(to, conn, "reply sent to another connection");
            assert_eq!((m.req_id, m.tx_id), (msg.req_id, msg.tx_id));
            assert!(m.msg_type == msg.msg_type || m.msg_type == MsgType::Error as u32);
        }
        assert_eq!(replies, 1, "request {msg:?}");
        core.effects.clear();
    }
});
