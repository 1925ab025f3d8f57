//! The query strings the services read, as the types they deserialize them into.
//!
//! Every value is read as text (`Option<String>`), so a bad one is the service's 400 naming the
//! parameter rather than a framework's rejection, and a parameter that is not a field is refused
//! (`deny_unknown_fields`). The document states what each value must be: its schema comes from
//! the same [`crate::limits`] the services check it against, built by a function named with
//! `#[param(schema_with = …)]` that also holds the parameter's description (utoipa drops a
//! field's doc comment then; [`parameters`] moves it onto the parameter). Each list type names
//! `limit` and `cursor` itself: serde cannot refuse unknown fields of a flattened struct.

use serde::Deserialize;
use utoipa::IntoParams;
use utoipa::openapi::RefOr;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::fields;
use crate::limits;

/// `?limit=&cursor=` of a list that takes nothing else.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page.
    #[param(schema_with = limit)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = cursor)]
    pub cursor: Option<String>,
}

/// `GET /api/v1/events`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Full-text search over title, city, venue and description.
    #[param(schema_with = search)]
    pub q: Option<String>,
    /// Exact city, case-insensitive.
    #[param(schema_with = city)]
    pub city: Option<String>,
    /// Exact category, case-insensitive.
    #[param(schema_with = category)]
    pub category: Option<String>,
    /// Only this organizer's events.
    #[param(schema_with = organizer)]
    pub organizer: Option<String>,
    /// Starting at or after.
    #[param(schema_with = from)]
    pub from: Option<String>,
    /// Starting before.
    #[param(schema_with = to)]
    pub to: Option<String>,
    /// `true`: only events that have not ended yet.
    #[param(schema_with = exclude_expired)]
    pub exclude_expired: Option<String>,
    /// `relevance` needs `q` (and is its default); otherwise the default is `starts_at`.
    #[param(schema_with = sort)]
    pub sort: Option<String>,
    /// Items per page.
    #[param(schema_with = limit)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = cursor)]
    pub cursor: Option<String>,
}

/// `GET /api/v1/me/events`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MyEventsParams {
    /// Only events in this status; every status when absent.
    #[param(schema_with = status)]
    pub status: Option<String>,
    /// Items per page.
    #[param(schema_with = limit)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = cursor)]
    pub cursor: Option<String>,
}

/// `GET /api/v1/meta/cities`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CitiesParams {
    /// The start of the city's name, case-insensitive; empty or absent: every city.
    #[param(schema_with = city_prefix)]
    pub q: Option<String>,
    /// Cities to answer.
    #[param(schema_with = cities)]
    pub limit: Option<String>,
}

/// `GET /api/v1/events/trending`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrendingParams {
    /// Events to answer.
    #[param(schema_with = feed_limit)]
    pub limit: Option<String>,
    /// Only this city's (case-insensitive).
    #[param(schema_with = city)]
    pub city: Option<String>,
}

/// `GET /api/v1/me/feed`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// Events to answer.
    #[param(schema_with = feed_limit)]
    pub limit: Option<String>,
}

/// `GET /api/v1/admin/users`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsersParams {
    /// An e-mail address, or part of a name.
    #[param(schema_with = user_search)]
    pub q: Option<String>,
    /// Only this role.
    #[param(schema_with = role)]
    pub role: Option<String>,
    /// Only banned (`true`) or not banned (`false`) accounts.
    #[param(schema_with = banned)]
    pub banned: Option<String>,
    /// Items per page.
    #[param(schema_with = limit)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = cursor)]
    pub cursor: Option<String>,
}

/// `GET /api/v1/me/notifications`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NotificationsParams {
    /// Only unread ones.
    #[param(schema_with = unread)]
    pub unread: Option<String>,
    /// Items per page.
    #[param(schema_with = limit)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = cursor)]
    pub cursor: Option<String>,
}

/// The parameters of `T` in the query string, each with its description.
pub fn parameters<T: IntoParams>() -> Vec<Parameter> {
    T::into_params(|| Some(ParameterIn::Query)).into_iter().map(described).collect()
}

/// Moves the description of a parameter's schema onto the parameter.
fn described(mut p: Parameter) -> Parameter {
    if p.description.is_none()
        && let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut()
    {
        p.description = o.description.take();
    }
    p
}

fn limit() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(limits::MAX_LIMIT))
        .default(Some(limits::DEFAULT_LIMIT.into()))
        .description(Some("Items per page."))
}

fn cursor() -> ObjectBuilder {
    fields::bounded(limits::MAX_CURSOR).description(Some("`next_cursor` of the previous page."))
}

fn search() -> ObjectBuilder {
    fields::optional_text(limits::MAX_Q).min_length(Some(1)).description(Some(
        "Full-text search over title, city, venue and description: every word of at least 3 letters or digits must start \
         a word of the event (`jazz` finds `jazzy`); at most 8 words are used. With `q` the default order is \
         `relevance` (best match first), which ranks at most the 1,000 latest-starting matches (filters apply \
         first; order by a date to list every match). A search that takes too long answers 503 `query-timeout`, \
         and one past the service's searches at once 503 `search-busy`, both with `Retry-After`.",
    ))
}

fn organizer() -> ObjectBuilder {
    fields::uuid().description(Some("Only the events of this organizer (a user id)."))
}

fn city() -> ObjectBuilder {
    fields::optional_text(limits::MAX_CITY).description(Some("Exact city, case-insensitive."))
}

fn city_prefix() -> ObjectBuilder {
    fields::optional_text(limits::MAX_CITY)
        .description(Some("The start of the city's name, case-insensitive; empty or absent: every city."))
}

fn category() -> ObjectBuilder {
    fields::optional_text(limits::MAX_CATEGORY).description(Some("Exact category, case-insensitive."))
}

fn from() -> ObjectBuilder {
    fields::date_time().description(Some("Starting at or after."))
}

fn to() -> ObjectBuilder {
    fields::date_time().description(Some("Starting before."))
}

fn flag() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Boolean).default(Some(false.into()))
}

fn exclude_expired() -> ObjectBuilder {
    flag().description(Some("`true`: only events that have not ended yet."))
}

fn unread() -> ObjectBuilder {
    flag().description(Some("Only unread ones."))
}

fn sort() -> ObjectBuilder {
    fields::string()
        .enum_values(Some(limits::SORTS))
        .description(Some("`relevance` needs `q` (and is its default); otherwise the default is `starts_at`."))
}

fn status() -> ObjectBuilder {
    fields::string()
        .enum_values(Some(crate::events::EventStatus::ALL.map(crate::events::EventStatus::as_str)))
        .description(Some("Only events in this status; every status when absent."))
}

fn feed_limit() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(limits::MAX_FEED))
        .default(Some(limits::DEFAULT_LIMIT.into()))
        .description(Some("Events to answer."))
}

fn cities() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(limits::MAX_CITIES))
        .default(Some(limits::DEFAULT_CITIES.into()))
        .description(Some("Cities to answer."))
}

fn user_search() -> ObjectBuilder {
    fields::bounded(limits::MAX_EMAIL).description(Some("An e-mail address, or part of a name."))
}

fn role() -> ObjectBuilder {
    fields::string().enum_values(Some(crate::auth::ROLES)).description(Some("Only this role."))
}

fn banned() -> ObjectBuilder {
    fields::string()
        .enum_values(Some(["true", "false"]))
        .description(Some("Only banned (`true`) or not banned (`false`) accounts."))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use utoipa::IntoParams;

    use super::*;

    fn params<T: IntoParams>() -> Vec<Value> {
        parameters::<T>().into_iter().map(|p| serde_json::to_value(p).unwrap()).collect()
    }

    fn all() -> Vec<(&'static str, Vec<Value>)> {
        vec![
            ("PageParams", params::<PageParams>()),
            ("EventsParams", params::<EventsParams>()),
            ("MyEventsParams", params::<MyEventsParams>()),
            ("CitiesParams", params::<CitiesParams>()),
            ("UsersParams", params::<UsersParams>()),
            ("NotificationsParams", params::<NotificationsParams>()),
        ]
    }

    /// Every parameter is an optional query parameter described on the parameter itself.
    #[test]
    fn every_parameter_is_described_and_optional() {
        for (ty, ps) in all() {
            assert!(!ps.is_empty(), "{ty}");
            for p in ps {
                assert_eq!((p["in"].as_str(), p["required"].as_bool()), (Some("query"), Some(false)), "{ty}: {p}");
                assert!(p["description"].as_str().is_some_and(|d| d.ends_with('.')), "{ty}: {p}");
                assert!(p["schema"].get("description").is_none(), "{ty}: {p}");
            }
        }
    }

    /// A limit changed in [`crate::limits`] is what the document states.
    #[test]
    fn limits_reach_the_parameters() {
        let find = |ps: &[Value], name: &str| ps.iter().find(|p| p["name"] == name).unwrap()["schema"].clone();
        for (ty, ps) in all() {
            if ty != "CitiesParams" {
                assert_eq!(find(&ps, "limit")["maximum"], limits::MAX_LIMIT, "{ty}");
                assert_eq!(find(&ps, "limit")["default"], limits::DEFAULT_LIMIT, "{ty}");
                assert_eq!(find(&ps, "cursor")["maxLength"], limits::MAX_CURSOR, "{ty}");
            }
        }
        let events = params::<EventsParams>();
        assert_eq!(find(&events, "q")["maxLength"], limits::MAX_Q);
        assert_eq!(find(&events, "city")["maxLength"], limits::MAX_CITY);
        assert_eq!(find(&events, "category")["pattern"], limits::TEXT);
        assert_eq!(find(&events, "sort")["enum"], serde_json::json!(limits::SORTS));
        assert_eq!(find(&events, "from")["format"], "date-time");
        assert_eq!(find(&events, "exclude_expired")["type"], "boolean");
        let cities = params::<CitiesParams>();
        assert_eq!(find(&cities, "limit")["maximum"], limits::MAX_CITIES);
        assert_eq!(find(&cities, "limit")["default"], limits::DEFAULT_CITIES);
        assert_eq!(find(&params::<UsersParams>(), "role")["enum"], serde_json::json!(crate::auth::ROLES));
        assert_eq!(
            find(&params::<MyEventsParams>(), "status")["enum"],
            serde_json::json!(["draft", "published", "canceled"])
        );
    }

    /// What is read is what is documented: every documented name is a field, and any other
    /// name is refused.
    #[test]
    fn the_fields_are_the_parameters_and_nothing_else() {
        fn check<T: IntoParams + serde::de::DeserializeOwned>(ty: &str) {
            for p in params::<T>() {
                let name = p["name"].as_str().unwrap();
                let one = serde_json::json!({ name: "x" });
                assert!(serde_json::from_value::<T>(one).is_ok(), "{ty}.{name}");
            }
            assert!(serde_json::from_value::<T>(serde_json::json!({"nope": "x"})).is_err(), "{ty}");
        }
        check::<PageParams>("PageParams");
        check::<EventsParams>("EventsParams");
        check::<MyEventsParams>("MyEventsParams");
        check::<CitiesParams>("CitiesParams");
        check::<UsersParams>("UsersParams");
        check::<NotificationsParams>("NotificationsParams");
    }
}
