//! The event envelope decoder every consumer runs on what a broker hands it, and the payload
//! decoders of City Events' catalogue: bytes in, an envelope and a typed event or an error out,
//! never a panic. A decoded envelope encodes and decodes again to the same attributes.

#![no_main]

use cityevents_common::catalogue as c;
use keel::events::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::from_bytes(data) else { return };
    assert!(!env.id.is_empty() && !env.ty.is_empty(), "decoded without id or type");
    let bytes = env.to_bytes().expect("a decoded envelope encodes");
    let again = Envelope::from_bytes(&bytes).expect("an encoded envelope decodes");
    // Every attribute as it was; `data` read back may differ in a float's last digit.
    let attributes = |e: &Envelope| Envelope { data: serde_json::Value::Null, ..e.clone() };
    assert_eq!(attributes(&again), attributes(&env));
    // Every payload type of the catalogue: an event or an error, never a panic.
    macro_rules! decode_as {
        ($($ty:ty),*) => { $(let _ = env.decode::<$ty>();)* };
    }
    decode_as!(
        c::EventPublished,
        c::EventUpdated,
        c::EventCanceled,
        c::EventUnpublished,
        c::JoinConfirmed,
        c::JoinKicked,
        c::AccountContact,
        c::AccountBanned,
        c::AccountUnbanned,
        c::ModerationRecorded,
        c::MailRequested,
        c::SessionRevoked,
        c::SessionSyncRequested
    );
});
