//! Getting a server connection for the message at the head of the client's input: a
//! busy one to send behind (`server_pipelining`), a free one at once, or a wait in the
//! pool's queue, which ends with a connection, a cancel, or the error the client sees.

use bytes::Buf;

use crate::pool::follow::Joined;
use crate::pool::{Checkout, Lent, PoolError};
use crate::protocol::build::{self, PgError};
use crate::protocol::{complete_frame, fe, SqlState};

use super::frontend::message_limit;
use super::{Blocked, End, Session};

impl Session {
    /// Reloaded timeouts and limits reach connected clients too: each transaction
    /// starts with the current ones (the pool mode stays what the client logged in
    /// with).
    pub(super) fn refresh_limits(&mut self) {
        let cfg = self.shared.config();
        let proxy = &cfg.proxy;
        self.limits.max_message_size = message_limit(proxy.max_message_size);
        self.limits.query_wait_timeout = proxy.query_wait_timeout.into();
        self.limits.query_timeout = proxy.query_timeout.into();
        self.limits.idle_transaction_timeout = proxy.idle_transaction_timeout.into();
        self.limits.pipeline = proxy.server_pipelining;
        self.limits.pipeline_threshold_us = super::micros(proxy.server_pipelining_threshold);
    }

    /// Makes sure a server connection is held, without waiting: `Blocked::Checkout`
    /// when none is free.
    pub(super) fn ensure_server(&mut self) -> Result<(), Blocked> {
        if self.server.is_some() {
            return Ok(());
        }
        self.refresh_limits();
        if self.limits.pipeline && self.renames() && self.pinned.is_none() {
            while let Some(baton) = self.pool.take_offer() {
                match baton.join() {
                    Joined::Following(co) => {
                        self.cancel.slot.follow(true);
                        self.follow_on(co, baton);
                        return Ok(());
                    }
                    Joined::Free(mut co, leftover) => {
                        co.conn().rbuf = leftover;
                        self.take_server(co);
                        return Ok(());
                    }
                    Joined::Lost => {}
                }
            }
        }
        match self.pool.try_checkout() {
            Some(co) => {
                self.take_server(co);
                Ok(())
            }
            None => Err(Blocked::Checkout),
        }
    }

    fn take_server(&mut self, mut co: Checkout) {
        self.cancel.slot.attach(co.conn().cancel_target());
        self.hold_server(co);
    }

    /// Makes `co` the held connection, its settings the client's; the caller points the
    /// client's cancel key at it (at once, or once it may read it: see `follow_on`).
    pub(super) fn hold_server(&mut self, mut co: Checkout) {
        let conn = co.conn();
        conn.set_holder(self.cancel.pid);
        if let Some(sql) = self.settings.sync_sql(&conn.settings) {
            build::query(&mut self.swbuf, &sql);
            self.hidden_units += 1;
        }
        conn.settings = self.settings.clone();
        self.server = Some(co);
        if let Some(u) = &mut self.unnamed {
            u.now.held = false;
        }
    }

    /// Waits in the pool's queue for the message at the head of `crbuf`. If no
    /// connection comes, the client is told why and that message is dropped.
    pub(super) async fn wait_for_server(&mut self) -> Result<(), End> {
        // A cancel while the client waits in the queue abandons the wait: the
        // statement has not run anywhere, so it is simply not run.
        let slot = self.cancel.slot.clone();
        let queued = slot.enter_queue();
        // Anything the client was already sent must go before the wait.
        self.flush().await?;
        let may_follow = self.limits.pipeline && self.renames() && self.pinned.is_none();
        let err = loop {
            let checkout = self
                .pool
                .checkout_or_follow(self.limits.query_wait_timeout.get(), may_follow);
            let waited = tokio::select! {
                r = checkout => Some(r),
                _ = queued.cancelled() => None,
            };
            match waited {
                Some(Ok(Lent::Conn(co))) => {
                    drop(queued);
                    self.take_server(co);
                    return Ok(());
                }
                Some(Ok(Lent::Follow(baton))) => match baton.join() {
                    Joined::Following(co) => {
                        // Before leaving the queue: a cancel from now on is kept.
                        slot.follow(false);
                        drop(queued);
                        self.follow_on(co, baton);
                        return Ok(());
                    }
                    Joined::Free(mut co, leftover) => {
                        drop(queued);
                        co.conn().rbuf = leftover;
                        self.take_server(co);
                        return Ok(());
                    }
                    // The connection was lost under its holder: wait for another.
                    Joined::Lost => continue,
                },
                None => break PgError::error(SqlState::QUERY_CANCELED, "canceling statement due to user request")
                    .with_hint("the statement was cancelled while it waited for a server connection; it did not run"),
                Some(Err(e)) => {
                    tracing::warn!(database = %self.database, error = %e, "checkout failed");
                    break match &e {
                        PoolError::Timeout(wait) => PgError::error(
                            SqlState::TOO_MANY_CONNECTIONS,
                            format!(
                                "no server connection for database \"{}\" became free within query_wait_timeout ({wait:?})",
                                self.database
                            ),
                        )
                        .with_hint("raise pool_size for this database or query_wait_timeout, or shorten transactions"),
                        PoolError::Connect { .. } => PgError::error(SqlState::CONNECTION_FAILURE, e.to_string())
                            .with_hint("check that the server is running and reachable; the statement was not run"),
                        PoolError::ServerFull { .. } => PgError::error(SqlState::TOO_MANY_CONNECTIONS, e.to_string())
                            .with_hint("set pool_size below the server's max_connections (and the role's or database's connection limit), or raise that limit; the statement was not run"),
                    };
                }
            }
        };
        drop(queued);
        err.encode(&mut self.cwbuf);
        self.head_is_plain = false;
        if let Ok(Some((tag, len))) = complete_frame(&self.crbuf, usize::MAX) {
            self.crbuf.advance(len);
            self.end_unit_unrun(tag);
        }
        Ok(())
    }

    /// After an error instead of a server: a Query or FunctionCall ends here; the
    /// rest of an extended-protocol unit is dropped until its Sync.
    fn end_unit_unrun(&mut self, tag: u8) {
        if matches!(tag, fe::QUERY | fe::FUNCTION_CALL) {
            build::ready_for_query(&mut self.cwbuf, self.tx);
        } else {
            self.discard_until_sync = true;
        }
    }
}
