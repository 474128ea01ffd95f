//! The shells' half of the revocation exchange (`/jarvis/revocations/1`), written once for every
//! peer that speaks it (the node and the relay): a set that arrives (a peer's request, or its
//! answer to ours) goes through the admission core, which verifies and merges it and says whom
//! to tell; a request is answered with our set, merged.

use libp2p::request_response::{self, Message};

use crate::admission::{Admission, Context};
use crate::wire::Frames;

/// Handles one event of the revocations behaviour. What admission decided comes out of
/// [`Admission::poll`] as usual (the shell drives it next).
pub fn on_revocations_event(
    event: request_response::Event<Vec<u8>, Vec<u8>>,
    behaviour: &mut request_response::Behaviour<Frames>,
    admission: &mut Admission,
    context: Context<'_>,
) {
    let request_response::Event::Message { peer, message, .. } = event else {
        return;
    };
    let (bytes, channel) = match message {
        Message::Request {
            request, channel, ..
        } => (request, Some(channel)),
        Message::Response { response, .. } => (response, None),
    };
    let Context {
        root,
        revocations,
        unix,
        policy,
    } = context;
    let merged = Context {
        root,
        revocations: &mut *revocations,
        unix,
        policy,
    };
    if let Err(e) = admission.on_revocations(peer, &bytes, merged) {
        tracing::debug!(%peer, error = %e, "revocations not taken");
    }
    if let Some(channel) = channel {
        let _ = behaviour.send_response(channel, revocations.encode());
    }
}
