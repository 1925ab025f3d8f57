//! Schemas of fields whose limits come from [`crate::limits`]: utoipa's `max_length = …`
//! attributes take literals only, so such a field names one of these builders with
//! `#[schema(schema_with = …)]` (which also takes its description, as utoipa drops the field's
//! doc comment then).

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};

use crate::limits;

/// A string.
pub fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// A string of at most `max` characters.
pub fn bounded(max: usize) -> ObjectBuilder {
    string().max_length(Some(max))
}

/// Text that must not be blank: 1 to `max` characters, [`limits::REQUIRED_TEXT`].
pub fn required_text(max: usize) -> ObjectBuilder {
    bounded(max).min_length(Some(1)).pattern(Some(limits::REQUIRED_TEXT))
}

/// Text that may be empty: at most `max` characters, [`limits::TEXT`].
pub fn optional_text(max: usize) -> ObjectBuilder {
    bounded(max).pattern(Some(limits::TEXT))
}

/// A string in `format`.
pub fn formatted(format: KnownFormat) -> ObjectBuilder {
    string().format(Some(SchemaFormat::KnownFormat(format)))
}

/// A UUID.
pub fn uuid() -> ObjectBuilder {
    formatted(KnownFormat::Uuid)
}

/// An RFC 3339 date and time.
pub fn date_time() -> ObjectBuilder {
    formatted(KnownFormat::DateTime)
}

/// An integer of at least `min`.
pub fn integer(min: i64) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(min))
}

/// `type` made nullable (`["…", "null"]`).
pub fn nullable(b: ObjectBuilder, t: Type) -> ObjectBuilder {
    b.schema_type(utoipa::openapi::schema::SchemaType::from_iter([t, Type::Null]))
}

/// An e-mail address as a client sends it.
pub fn email() -> ObjectBuilder {
    formatted(KnownFormat::Email).max_length(Some(limits::MAX_EMAIL))
}

/// A new password under the default policy.
pub fn new_password() -> ObjectBuilder {
    formatted(KnownFormat::Password).min_length(Some(limits::MIN_PASSWORD)).max_length(Some(limits::MAX_PASSWORD))
}

/// A password being checked (any length the policy could have allowed).
pub fn password() -> ObjectBuilder {
    formatted(KnownFormat::Password).min_length(Some(1)).max_length(Some(limits::MAX_PASSWORD))
}

/// A token the service issued (a refresh token, a token from a mail).
pub fn token() -> ObjectBuilder {
    string().min_length(Some(1)).max_length(Some(limits::MAX_TOKEN))
}

/// A token from a mail.
pub fn mail_token() -> ObjectBuilder {
    token().description(Some("The token from the mail."))
}

/// A `next_cursor`.
pub fn next_cursor() -> ObjectBuilder {
    nullable(string(), Type::String).description(Some("Pass as `cursor` for the next page; `null` on the last page."))
}

/// A display name as another service completes it.
pub fn completed_name() -> ObjectBuilder {
    nullable(string(), Type::String).description(Some(
        "The user's display name; `null` when it cannot be told (the account is gone, or the auth service did not answer).",
    ))
}
