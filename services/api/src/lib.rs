//! City Events' public API contract: the types the services take and answer on the wire, the
//! limits and patterns their checks enforce ([`limits`]) and the OpenAPI schemas built from both
//! ([`schemas`]), so a change to a type or a limit changes what the document states.
//!
//! The crate sits below every service: it knows nothing of HTTP, databases or Keel.

pub mod auth;
pub mod events;
pub mod fields;
pub mod gateway;
pub mod joins;
pub mod json;
pub mod limits;
pub mod notifications;
pub mod oidc;
pub mod params;
pub mod reports;

use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

#[derive(OpenApi)]
#[openapi(components(schemas(
    gateway::Problem,
    auth::RegisterRequest,
    auth::LoginRequest,
    auth::RefreshRequest,
    auth::TokenPair,
    auth::PasswordReset,
    auth::Registration,
    auth::User,
    reports::NewReport,
    reports::Report,
    reports::Kind,
    reports::Reason,
    reports::Queue,
    reports::QueueItem,
    reports::QueuedReport,
    reports::EventContext,
    reports::Outcome,
    reports::Resolve,
    reports::Resolved,
    events::Event,
    events::NewEvent,
    events::EventPatch,
    gateway::EventPage,
    gateway::EventFeed,
    events::BatchRequest,
    events::BatchResponse,
    joins::Join,
    joins::MyJoin,
    joins::JoinPage,
    joins::Participant,
    joins::ParticipantPage,
    joins::Stats,
    joins::Counts,
    joins::BanRequest,
    joins::Ban,
    notifications::Notification,
    notifications::NotificationPage,
    notifications::UnreadCount,
    notifications::Marked,
    gateway::Unavailable,
    gateway::EventView,
    auth::RoleRequest,
    auth::TokenRequest,
    notifications::MailPreferences,
    notifications::MailPreferencesPatch,
    auth::EmailRequest,
    auth::PasswordResetRequest,
    auth::PasswordChangeRequest,
    auth::Session,
    auth::SessionList,
    events::CityList,
    joins::BanPage,
    joins::CalendarFeed,
    joins::NewCalendarFeed,
    notifications::Follow,
    notifications::FollowPage,
    notifications::Followers,
    gateway::Seats,
    gateway::ListedEvent,
    events::ReasonBody,
    events::OnlineLink,
    events::Cover,
    events::EventList,
    auth::AccountBan,
    auth::Profile,
    auth::Avatar,
    auth::ProfilePatch,
    auth::ManagedUser,
    auth::ManagedUserPage,
    auth::AccountBanRequest,
    gateway::ApiIndex,
)))]
struct Schemas;

/// Every schema of the API's document, by name (`components/schemas`).
pub fn schemas() -> std::collections::BTreeMap<String, RefOr<Schema>> {
    Schemas::openapi().components.map(|c| c.schemas.into_iter().collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn schemas() -> Value {
        serde_json::to_value(super::schemas()).unwrap()
    }

    /// Every `$ref` names a schema of the set (types a schema refers to are registered too).
    #[test]
    fn every_reference_resolves_within_the_schemas() {
        fn walk(v: &Value, all: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let name = r.strip_prefix("#/components/schemas/").unwrap();
                        assert!(all.get(name).is_some(), "{r} is not a schema of the set");
                    }
                    m.values().for_each(|v| walk(v, all));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, all)),
                _ => {}
            }
        }
        let all = schemas();
        walk(&all, &all);
    }

    /// A limit changed in [`crate::limits`] is what the document states.
    #[test]
    fn limits_reach_the_schemas() {
        use crate::limits::*;
        let all = schemas();
        let input = &all["EventInput"]["properties"];
        assert_eq!(input["title"]["maxLength"], MAX_TITLE);
        assert_eq!(input["title"]["pattern"], REQUIRED_TEXT);
        assert_eq!(input["description"]["pattern"], TEXT);
        assert_eq!(input["capacity"]["maximum"], MAX_CAPACITY);
        assert_eq!(all["RegisterRequest"]["properties"]["name"]["pattern"], LINE);
        assert_eq!(all["RegisterRequest"]["properties"]["password"]["minLength"], MIN_PASSWORD);
        assert_eq!(all["BatchRequest"]["properties"]["ids"]["maxItems"], MAX_BATCH);
        assert_eq!(all["Event"]["properties"]["status"]["enum"], serde_json::json!(["draft", "published", "canceled"]));
        for (name, schema) in all.as_object().unwrap() {
            if name.ends_with("Request") || name == "EventInput" || name.ends_with("Patch") {
                assert_eq!(schema["additionalProperties"], false, "{name}: unknown fields are refused");
            }
        }
    }

    /// What the services answer reads back as the schema's type: an `Option` field answered
    /// `null` is required and nullable, one left out is neither.
    #[test]
    fn optional_fields_are_stated_as_they_are_answered() {
        let all = schemas();
        let required = |s: &str| {
            all[s]["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect::<Vec<_>>()
        };
        assert!(required("Event").contains(&"status_reason".to_owned()));
        assert_eq!(all["Event"]["properties"]["status_reason"]["type"], serde_json::json!(["string", "null"]));
        assert!(!required("Join").contains(&"position".to_owned()));
        assert_eq!(all["Join"]["properties"]["position"]["type"], "integer");
        for page in ["EventPage", "JoinPage", "ParticipantPage", "NotificationPage", "BanPage", "ManagedUserPage"] {
            assert!(required(page).contains(&"next_cursor".to_owned()), "{page}");
        }
    }
}
