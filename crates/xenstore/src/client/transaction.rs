//! XenStore transactions.
//!
//! A transaction is a `tx_id` from `TRANSACTION_START`; every request that
//! carries it sees a snapshot and its writes stay invisible until
//! `TRANSACTION_END` with `T`. A commit that conflicts with another writer
//! fails with `EAGAIN` and has changed nothing, so the whole body is simply
//! run again ([`Client::transaction`]). An unfinished [`Transaction`] is
//! aborted (`F`) when dropped, without waiting for the reply.

use crate::errno::XsErrno;
use crate::perms::Perms;
use crate::wire::MsgType;

use super::conn::Request;
use super::node::Scope;
use super::{Client, Error, XenStore};

/// Commits tried by [`Client::transaction`] before `EAGAIN` is returned.
pub const TRANSACTION_ATTEMPTS: u32 = 100;

/// An open transaction on a [`Client`]. Node operations go through the
/// [`XenStore`] trait, as on the client itself.
#[derive(Debug)]
pub struct Transaction<'a> {
    client: &'a Client,
    id: u32,
    finished: bool,
}

impl<'a> Transaction<'a> {
    pub(crate) fn start(client: &'a Client) -> Result<Transaction<'a>, Error> {
        let reply = client.request(Request {
            op: MsgType::TransactionStart,
            tx_id: 0,
            path: "",
            payload: vec![0],
        })?;
        let id = parse_tx_id(&reply)?;
        Ok(Transaction {
            client,
            id,
            finished: false,
        })
    }

    /// The `tx_id` the server assigned.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `TRANSACTION_END T`. `EAGAIN` means a conflict: nothing was written
    /// and the caller should run the transaction again.
    pub fn commit(mut self) -> Result<(), Error> {
        self.finished = true;
        self.end(b"T\0")
    }

    /// `TRANSACTION_END F`: discard every change.
    pub fn abort(mut self) -> Result<(), Error> {
        self.finished = true;
        self.end(b"F\0")
    }

    fn end(&self, verdict: &[u8]) -> Result<(), Error> {
        self.client.request(self.end_request(verdict)).map(drop)
    }

    fn end_request(&self, verdict: &[u8]) -> Request<'static> {
        Request {
            op: MsgType::TransactionEnd,
            tx_id: self.id,
            path: "",
            payload: verdict.to_vec(),
        }
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            client: self.client,
            tx_id: self.id,
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.client.conn.send_only(&self.end_request(b"F\0"));
        }
    }
}

fn parse_tx_id(reply: &[u8]) -> Result<u32, Error> {
    let text = reply.strip_suffix(&[0]).unwrap_or(reply);
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<u32>().ok())
        .filter(|&id| id != 0)
        .ok_or_else(|| Error::Protocol(format!("TRANSACTION_START answered {reply:?}")))
}

xenstore_via_scope!(Transaction<'_>);

impl Client {
    /// Starts a transaction; see [`Transaction`].
    pub fn transaction_start(&self) -> Result<Transaction<'_>, Error> {
        Transaction::start(self)
    }

    /// Runs `body` in a fresh transaction and commits it, running the whole
    /// body again while the commit answers `EAGAIN` (at most
    /// [`TRANSACTION_ATTEMPTS`] times, then that `EAGAIN` is returned). An
    /// error from `body` aborts the transaction and is returned as is.
    pub fn transaction<T, E, F>(&self, mut body: F) -> Result<T, E>
    where
        F: FnMut(&Transaction<'_>) -> Result<T, E>,
        E: From<Error>,
    {
        let mut attempt = 1;
        loop {
            let tx = self.transaction_start()?;
            let value = body(&tx)?;
            match tx.commit() {
                Ok(()) => return Ok(value),
                Err(e) if e.errno() == Some(XsErrno::Again) && attempt < TRANSACTION_ATTEMPTS => {
                    tracing::debug!(attempt, "transaction conflict, retrying");
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_id_is_a_nonzero_decimal_string() {
        assert_eq!(parse_tx_id(b"17\0").unwrap(), 17);
        assert_eq!(parse_tx_id(b"4294967295").unwrap(), u32::MAX);
        for bad in [&b"0\0"[..], b"", b"x\0", b"-1\0", b"4294967296\0"] {
            assert!(
                matches!(parse_tx_id(bad), Err(Error::Protocol(_))),
                "{bad:?}"
            );
        }
    }
}
