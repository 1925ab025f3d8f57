//! What runs a message ([`Handler`]) and what it gets ([`Message`]).

use super::*;

/// What a handler gets: the envelope, the attempt, and (with an inbox) the transaction its
/// writes must use to be applied exactly once.
pub struct Message {
    pub(super) envelope: Envelope,
    pub(super) attempt: u32,
    #[cfg(feature = "sql")]
    pub(super) tx: Option<sqlx::Transaction<'static, sqlx::Any>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message").field("id", &self.envelope.id).field("attempt", &self.attempt).finish_non_exhaustive()
    }
}

impl Message {
    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The payload as `E`; a wrong type, version or shape is a permanent failure.
    pub fn decode<E: Event>(&self) -> Result<E, Failure> {
        self.envelope.decode().map_err(Failure::permanent)
    }

    /// Which delivery this is (1 the first time).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The inbox transaction: writes made with it commit together with the "processed" mark.
    /// `None` when the consumer has no inbox.
    #[cfg(feature = "sql")]
    pub fn tx(&mut self) -> Option<&mut sqlx::Transaction<'static, sqlx::Any>> {
        self.tx.as_mut()
    }
}

/// Handles messages of one topic for one group.
///
/// Implement it with `async fn handle(&self, msg: &mut Message) -> Result<(), Failure>`; for a
/// closure over the envelope use [`handler_fn`].
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    fn handle(&self, msg: &mut Message) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// A handler from a closure taking the envelope (no access to the inbox transaction).
///
/// ```
/// let h = keel_events::consumer::handler_fn(|env: keel_events::Envelope| async move {
///     tracing::info!(ty = %env.ty, "got");
///     Ok(())
/// });
/// # let _ = h;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send,
{
    FnHandler(f)
}

/// See [`handler_fn`].
#[derive(Debug, Clone)]
pub struct FnHandler<F>(F);

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send,
{
    fn handle(&self, msg: &mut Message) -> impl Future<Output = Result<(), Failure>> + Send {
        (self.0)(msg.envelope.clone())
    }
}
