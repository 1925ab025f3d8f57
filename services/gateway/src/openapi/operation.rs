//! [`Spec`]: what the document says of one operation beyond the route table (its name, summary,
//! parameters, body and answers), written against the wire types of [`cityevents_api`] so the
//! document names the types the services read and write.

use std::borrow::Cow;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder, Schema};
use utoipa::{IntoParams, ToSchema};

use super::answers;
use crate::routes::{Access, Route, Upstream, Verb};

/// One operation's description; [`op`] starts one, [`Spec::build`] makes the OpenAPI operation.
pub(crate) struct Spec {
    /// Method.
    pub(crate) verb: Verb,
    /// Path template.
    pub(crate) path: &'static str,
    id: &'static str,
    summary: &'static str,
    description: Option<&'static str>,
    query: Vec<Parameter>,
    idempotency_key: bool,
    body: Option<(Cow<'static, str>, bool)>,
    /// A `multipart/form-data` body with one picture in its `file` field, instead of JSON.
    upload: bool,
    answers: Vec<Answer>,
    errors: Vec<(u16, Option<&'static str>)>,
}

/// A success answer.
struct Answer {
    status: u16,
    description: &'static str,
    schema: Option<RefOr<Schema>>,
    /// The body's media type when a schema is given.
    media: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

/// Starts the description of `verb path`, named `id` (`operationId`).
pub(crate) fn op(verb: Verb, path: &'static str, id: &'static str, summary: &'static str) -> Spec {
    Spec {
        verb,
        path,
        id,
        summary,
        description: None,
        query: Vec::new(),
        idempotency_key: false,
        body: None,
        upload: false,
        answers: Vec::new(),
        errors: Vec::new(),
    }
}

impl Spec {
    /// What a client should know beyond the summary.
    pub(crate) fn describe(mut self, description: &'static str) -> Self {
        self.description = Some(description);
        self
    }

    /// The query string: the fields of `T`, the type the answering service reads it into.
    pub(crate) fn query<T: IntoParams>(mut self) -> Self {
        self.query = cityevents_api::params::parameters::<T>();
        self
    }

    /// A required `Idempotency-Key` header.
    pub(crate) fn idempotency_key(mut self) -> Self {
        self.idempotency_key = true;
        self
    }

    /// A required JSON body of type `T`.
    pub(crate) fn body<T: ToSchema>(mut self) -> Self {
        self.body = Some((T::name(), true));
        self
    }

    /// A JSON body of type `T` that may be left out.
    pub(crate) fn optional_body<T: ToSchema>(mut self) -> Self {
        self.body = Some((T::name(), false));
        self
    }

    /// A required `multipart/form-data` body: a picture (JPEG, PNG or WebP) in the field `file`.
    pub(crate) fn upload(mut self) -> Self {
        self.upload = true;
        self
    }

    /// A success answer `status` whose body is a JPEG picture.
    pub(crate) fn jpeg(mut self, status: u16, description: &'static str) -> Self {
        let schema = ObjectBuilder::new().schema_type(Type::String).content_media_type("image/jpeg").into();
        self.answers.push(Answer {
            status,
            description,
            schema: Some(schema),
            media: "image/jpeg",
            headers: Vec::new(),
        });
        self
    }

    /// A success answer `status` with a JSON body of type `T`.
    pub(crate) fn answer<T: ToSchema>(self, status: u16, description: &'static str) -> Self {
        self.answer_with(status, description, Some(Ref::from_schema_name(T::name()).into()))
    }

    /// A success answer `status` whose body is any JSON object.
    pub(crate) fn answer_object(self, status: u16, description: &'static str) -> Self {
        self.answer_with(status, description, Some(ObjectBuilder::new().schema_type(Type::Object).into()))
    }

    /// A success answer `status` without a body.
    pub(crate) fn empty(self, status: u16, description: &'static str) -> Self {
        self.answer_with(status, description, None)
    }

    /// A success answer `status` whose body is an iCalendar file (RFC 5545).
    pub(crate) fn calendar(mut self, status: u16, description: &'static str) -> Self {
        let schema = ObjectBuilder::new().schema_type(Type::String).pattern(Some("^BEGIN:VCALENDAR\r\n")).into();
        self.answers.push(Answer {
            status,
            description,
            schema: Some(schema),
            media: "text/calendar",
            headers: Vec::new(),
        });
        self
    }

    fn answer_with(mut self, status: u16, description: &'static str, schema: Option<RefOr<Schema>>) -> Self {
        self.answers.push(Answer { status, description, schema, media: "application/json", headers: Vec::new() });
        self
    }

    /// A header of the last success answer.
    pub(crate) fn header(mut self, name: &'static str, description: &'static str) -> Self {
        if let Some(a) = self.answers.last_mut() {
            a.headers.push((name, description));
        }
        self
    }

    /// The errors of this operation beyond those the gateway itself can send on its route
    /// ([`answers::inherent`]), e.g. 403 and 409 from the service.
    pub(crate) fn errors(mut self, statuses: &[u16]) -> Self {
        self.errors.extend(statuses.iter().map(|&s| (s, None)));
        self
    }

    /// An error of this operation, as [`Spec::errors`], with what it means here.
    pub(crate) fn error(mut self, status: u16, description: &'static str) -> Self {
        self.errors.push((status, Some(description)));
        self
    }

    /// The OpenAPI operation for `route` (the route this describes).
    pub(crate) fn build(self, route: &Route) -> Result<Operation, String> {
        let at = format!("{:?} {}", route.verb, route.path);
        if self.answers.is_empty() {
            return Err(format!("{at}: no success answer"));
        }
        let mut b = OperationBuilder::new()
            .tag(tag(route.upstream))
            .summary(Some(self.summary))
            .description(self.description)
            .operation_id(Some(self.id));
        for name in path_names(route.path) {
            let description =
                path_parameter(route.path, name).ok_or_else(|| format!("{at}: `{{{name}}}` is not described"))?;
            b = b.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .description(Some(description))
                    .schema(Some(path_schema(route.path, name))),
            );
        }
        for p in self.query {
            b = b.parameter(p);
        }
        if self.idempotency_key {
            b = b.parameter(idempotency_key());
        }
        let takes_body = self.body.is_some() || self.upload;
        if self.upload {
            let file = ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("application/octet-stream")
                .description(Some(
                    "A JPEG, PNG or WebP picture, at most 5 MiB and 16 megapixels (8000 pixels a side).",
                ));
            let form = ObjectBuilder::new().schema_type(Type::Object).property("file", file).required("file");
            let content = ContentBuilder::new().schema(Some(form)).build();
            b = b.request_body(Some(
                RequestBodyBuilder::new()
                    .content("multipart/form-data", content)
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        if let Some((schema, required)) = self.body {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(schema))).build();
            let required = if required { Required::True } else { Required::False };
            b = b.request_body(Some(
                RequestBodyBuilder::new().content("application/json", content).required(Some(required)).build(),
            ));
        }
        for a in self.answers {
            let mut r = ResponseBuilder::new().description(a.description);
            if let Some(schema) = a.schema {
                r = r.content(a.media, ContentBuilder::new().schema(Some(schema)).build());
            }
            for (name, description) in a.headers {
                let header =
                    HeaderBuilder::new().schema(Some(cityevents_api::fields::string())).description(Some(description));
                r = r.header(name, header.build());
            }
            b = b.response(a.status.to_string(), r.build());
        }
        let inherent = answers::inherent(route, takes_body).into_iter().map(|s| (s, None));
        for (status, description) in inherent.chain(self.errors) {
            let failure = answers::failure(status).ok_or_else(|| format!("{at}: no shared answer for {status}"))?;
            let mut reference = failure.reference();
            if let Some(d) = description {
                d.clone_into(&mut reference.description);
            }
            b = b.response(status.to_string(), reference);
        }
        let bearer = SecurityRequirement::new("bearer", Vec::<String>::new());
        let security = match route.access {
            Access::User => vec![bearer],
            Access::Public | Access::Anonymous => vec![SecurityRequirement::default(), bearer],
        };
        Ok(b.securities(Some(security)).build())
    }
}

/// The document's tag of each upstream, in the document's order.
pub(crate) const TAGS: [(Upstream, &str); 5] = [
    (Upstream::Auth, "auth"),
    (Upstream::Events, "events"),
    (Upstream::Joins, "joins"),
    (Upstream::Notifier, "notifications"),
    (Upstream::Gateway, "gateway"),
];

fn tag(upstream: Upstream) -> &'static str {
    TAGS.iter().find(|(u, _)| *u == upstream).map_or("gateway", |(_, t)| t)
}

/// The OpenAPI method of a verb.
pub(crate) fn method(verb: Verb) -> HttpMethod {
    match verb {
        Verb::Get => HttpMethod::Get,
        Verb::Post => HttpMethod::Post,
        Verb::Put => HttpMethod::Put,
        Verb::Patch => HttpMethod::Patch,
        Verb::Delete => HttpMethod::Delete,
    }
}

/// The `{name}`s of a path template, in order.
fn path_names(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
}

/// What a path id names; every one is a UUID.
fn path_parameter(path: &str, name: &str) -> Option<&'static str> {
    Some(match name {
        "id" if path.starts_with("/api/v1/events/") => "Event id.",
        "id" if path.starts_with("/api/v1/auth/sessions/") => "The session's id.",
        "id" if path.starts_with("/api/v1/admin/users/") => "The user.",
        "id" if path.starts_with("/api/v1/me/notifications/") => "Notification id.",
        "user_id" if path.contains("/participants/") => "The participant.",
        "id" if path.starts_with("/api/v1/profiles/") => "The person (a user id).",
        "id" if path.starts_with("/api/v1/organizers/") => "The organizer (a user id).",
        "user_id" if path.contains("/bans/") => "The banned user.",
        "token" if path.starts_with("/api/v1/calendars/") => "The feed's secret, from `POST /api/v1/me/calendar-feed`.",
        "hash" if path.contains("/cover/") => "The cover's content hash, as the event's `cover` names it.",
        "file" if path.contains("/cover/") => "`card.jpg` (640×360) or `wide.jpg` (1280×720).",
        "hash" if path.contains("/avatar/") => "The picture's content hash, as the profile's `avatar` names it.",
        "file" if path.contains("/avatar/") => "`small.jpg` (96×96) or `large.jpg` (400×400).",
        _ => return None,
    })
}

/// A path parameter's schema: ids are UUIDs; a feed's secret is 43 base64url characters; a
/// picture's hash 16 hex digits and its file one of its sizes.
fn path_schema(path: &str, name: &str) -> RefOr<Schema> {
    if name == "hash" {
        ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[0-9a-f]{16}$")).into()
    } else if name == "file" {
        let files = if path.contains("/avatar/") { ["small.jpg", "large.jpg"] } else { ["card.jpg", "wide.jpg"] };
        ObjectBuilder::new().schema_type(Type::String).enum_values(Some(files)).into()
    } else if name == "token" {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(43))
            .max_length(Some(43))
            .pattern(Some("^[A-Za-z0-9_-]{43}$"))
            .into()
    } else {
        cityevents_api::fields::uuid().into()
    }
}

fn idempotency_key() -> ParameterBuilder {
    use cityevents_api::limits;
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::True)
        .description(Some(
            "A unique key per intended join; a retry with the same key returns the first answer instead of joining \
             twice.",
        ))
        .schema(Some(
            cityevents_api::fields::bounded(limits::MAX_IDEMPOTENCY_KEY)
                .min_length(Some(1))
                .pattern(Some(limits::IDEMPOTENCY_KEY)),
        ))
}
