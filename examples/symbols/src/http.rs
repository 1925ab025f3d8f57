//! The HTTP/JSON API: the same operations, checks and error classes as the gRPC service, over
//! [`crate::store::Symbols`].
//!
//! | route | does | answers |
//! |---|---|---|
//! | `POST /v1/projects/{project_id}/symbols` | create `{name, kind, data?}` | 201 + `Location`, the symbol |
//! | `GET /v1/projects/{project_id}/symbols?offset=&limit=` | list, oldest first | `{items, total_count, offset, limit, has_next}` |
//! | `GET /v1/projects/{project_id}/symbols/{id}` | read | the symbol |
//! | `PATCH /v1/projects/{project_id}/symbols/{id}` | change `{name?, kind?, data?, expected_version?}` | the symbol |
//! | `DELETE /v1/projects/{project_id}/symbols/{id}?expected_version=` | soft delete | 204 |
//!
//! Reads are open; writes need `Authorization: Bearer <token>` whose claims carry the role
//! [`WRITE_ROLE`](crate::WRITE_ROLE) (401 without a valid token, 403 without the role, both
//! problems, the 401 with `WWW-Authenticate: Bearer`).
//!
//! Failures are RFC 9457 problems (Keel's [`Problem`]) whose `code` says which: 400
//! `invalid_input` (with `errors[]` naming each field), 404 `not_found`, 409 `name_taken` or
//! `version_mismatch`, 503 `unavailable` (with `Retry-After`), 415 for a body that is not JSON.
//! A body's unknown, repeated or mistyped field is a 400 naming it, and so is a repeated key
//! anywhere inside `data`.

use std::fmt;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};
use keel::http::Problem;
use keel::http::problems::{BodyLimit, body_too_large};
use keel::security::jwt::{Jwt, RequireRole, Role};
use serde::de::{DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::SymbolError;
use crate::model::{NewSymbol, PageRequest, Symbol, SymbolPage, SymbolPatch, rfc3339};
use crate::store::Symbols;

/// The routes, on `symbols`; `jwt` verifies the writers' tokens.
pub fn router(symbols: Symbols, jwt: &Jwt) -> Router {
    Router::new()
        .route("/v1/projects/{project_id}/symbols", get(list).post(create))
        .route("/v1/projects/{project_id}/symbols/{id}", get(show).patch(update).delete(remove))
        .with_state(symbols)
        .layer(jwt.extension())
}

/// The role a token needs to create, change or delete symbols.
#[derive(Debug)]
struct Writer;

impl Role for Writer {
    const NAME: &'static str = crate::WRITE_ROLE;
}

/// A symbol as the HTTP API shows it.
#[derive(Debug, Serialize)]
struct SymbolView<'a> {
    id: String,
    project_id: &'a str,
    name: &'a str,
    kind: &'a str,
    data: &'a Map<String, Value>,
    version: i64,
    created_at: String,
    updated_at: String,
}

impl<'a> From<&'a Symbol> for SymbolView<'a> {
    fn from(s: &'a Symbol) -> Self {
        Self {
            id: s.id.to_string(),
            project_id: &s.project_id,
            name: &s.name,
            kind: &s.kind,
            data: &s.data,
            version: s.version,
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(s.updated_at),
        }
    }
}

#[derive(Debug, Serialize)]
struct PageView<'a> {
    items: Vec<SymbolView<'a>>,
    total_count: i64,
    offset: u32,
    limit: u32,
    has_next: bool,
}

impl<'a> From<&'a SymbolPage> for PageView<'a> {
    fn from(p: &'a SymbolPage) -> Self {
        Self {
            items: p.items.iter().map(SymbolView::from).collect(),
            total_count: p.total_count,
            offset: p.page.offset,
            limit: p.page.limit,
            has_next: p.has_next,
        }
    }
}

/// `POST` body. Absent fields are empty, so the one check in the store reports them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    data: Option<JsonObject>,
}

/// `PATCH` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    data: Option<JsonObject>,
    #[serde(default)]
    expected_version: Option<i64>,
}

/// Query parameters, as text: each is parsed (and refused by name) below.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    offset: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    expected_version: Option<String>,
}

async fn create(
    _: RequireRole<Writer>,
    State(symbols): State<Symbols>,
    Path(project_id): Path<String>,
    Json(body): Json<CreateBody>,
) -> Result<Response, SymbolError> {
    let input = NewSymbol { name: body.name, kind: body.kind, data: body.data.map(|d| d.0) };
    let symbol = symbols.create(&project_id, input).await?;
    let location = format!("/v1/projects/{}/symbols/{}", symbol.project_id, symbol.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], axum::Json(SymbolView::from(&symbol))).into_response())
}

async fn show(
    State(symbols): State<Symbols>,
    Path((project_id, id)): Path<(String, String)>,
) -> Result<Response, SymbolError> {
    let symbol = symbols.get(&project_id, &id).await?;
    Ok(axum::Json(SymbolView::from(&symbol)).into_response())
}

async fn update(
    _: RequireRole<Writer>,
    State(symbols): State<Symbols>,
    Path((project_id, id)): Path<(String, String)>,
    Json(body): Json<UpdateBody>,
) -> Result<Response, SymbolError> {
    let patch = SymbolPatch {
        name: body.name,
        kind: body.kind,
        data: body.data.map(|d| d.0),
        expected_version: body.expected_version,
    };
    let symbol = symbols.update(&project_id, &id, patch).await?;
    Ok(axum::Json(SymbolView::from(&symbol)).into_response())
}

async fn remove(
    _: RequireRole<Writer>,
    State(symbols): State<Symbols>,
    Path((project_id, id)): Path<(String, String)>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<StatusCode, SymbolError> {
    let q = query.map_err(|_| SymbolError::invalid("query", "may hold only expected_version"))?.0;
    let expected = integer("expected_version", q.expected_version.as_deref())?;
    symbols.delete(&project_id, &id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list(
    State(symbols): State<Symbols>,
    Path(project_id): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, SymbolError> {
    let q = query.map_err(|_| SymbolError::invalid("query", "may hold only offset and limit, each once"))?.0;
    let page =
        PageRequest { offset: integer("offset", q.offset.as_deref())?, limit: integer("limit", q.limit.as_deref())? };
    let page = symbols.list(&project_id, page).await?;
    Ok(axum::Json(PageView::from(&page)).into_response())
}

/// An optional integer query parameter.
fn integer(field: &str, raw: Option<&str>) -> Result<Option<i64>, SymbolError> {
    raw.map(|v| v.parse::<i64>().map_err(|_| SymbolError::invalid(field, "must be an integer"))).transpose()
}

/// A JSON request body of type `T` whose every refusal is a problem naming the field: 415
/// without a JSON content type, 413 over `http.body_limit`, 400 `invalid_input` for a body that
/// is not a JSON object or has an unknown, repeated, missing or mistyped field. axum's own
/// extractor answers 422 and plain text, and its messages may echo the client's value.
#[derive(Debug)]
struct Json<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        if !is_json(req.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .code("unsupported_media_type")
            .detail("send the body as JSON with `Content-Type: application/json`"));
        }
        let limit = req.extensions().get::<BodyLimit>().copied();
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                body_too_large(limit)
            } else {
                SymbolError::invalid("body", "could not be read").to_problem()
            }
        })?;
        parse(&bytes).map(Json).map_err(|e| e.to_problem())
    }
}

fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Longest unknown field name repeated back to a client.
const MAX_FIELD_NAME: usize = 64;

/// Parses one JSON object as `T`, or the invalid-input error naming what is wrong.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SymbolError> {
    // Derived structs also accept arrays; every body here is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(SymbolError::invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| rejection(&e))?;
    de.end().map_err(|_| SymbolError::invalid("body", "is not valid JSON"))?;
    Ok(value)
}

/// The error for a body serde refused, without the client's value.
fn rejection(e: &serde_path_to_error::Error<serde_json::Error>) -> SymbolError {
    let inner = e.inner();
    if !matches!(inner.classify(), serde_json::error::Category::Data) {
        return SymbolError::invalid("body", "is not valid JSON");
    }
    let text = inner.to_string();
    let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(m, _)| m);
    let path = e.path().to_string();
    let within = |name: &str| {
        if path == "." {
            name.to_owned()
        } else if path == name || path.ends_with(&format!(".{name}")) {
            path.clone()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(name) = quoted_after(message, "unknown field `") {
        if name.len() > MAX_FIELD_NAME {
            return SymbolError::invalid("body", "has an unknown field");
        }
        return SymbolError::invalid(&within(name), "is not a known field");
    }
    if let Some(name) = quoted_after(message, "duplicate field `") {
        return SymbolError::invalid(&within(name), "is given twice");
    }
    if let Some(name) = quoted_after(message, DUPLICATE_KEY) {
        return SymbolError::invalid(&within(name), "is given twice");
    }
    if path == "." {
        return SymbolError::invalid("body", "must be a JSON object with the documented fields");
    }
    match message.rsplit_once(", expected ") {
        Some((_, expected)) => SymbolError::invalid(&path, format!("must be {}", in_json_terms(expected))),
        None => SymbolError::invalid(&path, "is not valid"),
    }
}

fn in_json_terms(expected: &str) -> &str {
    match expected {
        "i64" => "an integer",
        "a string" => "a string",
        "a map" | "a JSON object" => "an object",
        other => other,
    }
}

fn quoted_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let start = text.find(prefix)? + prefix.len();
    let len = text[start..].find('`')?;
    Some(&text[start..start + len])
}

/// How [`JsonObject`] reports a repeated key (picked out again by [`rejection`]).
const DUPLICATE_KEY: &str = "duplicate key `";

/// A JSON object in which no object, at any depth, repeats a key: serde_json would keep the
/// last silently, so what is stored could differ from what the client meant.
#[derive(Debug)]
struct JsonObject(Map<String, Value>);

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ObjectVisitor).map(JsonObject)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value = access.next_value::<StrictValue>()?.0;
            if map.contains_key(&key) {
                let shown: String = key.chars().take(MAX_FIELD_NAME).collect();
                return Err(serde::de::Error::custom(format!("{DUPLICATE_KEY}{shown}`")));
            }
            map.insert(key, value);
        }
        Ok(map)
    }
}

/// Any JSON value, objects checked by [`ObjectVisitor`].
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(StrictValue)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = access.next_element::<StrictValue>()? {
            items.push(v.0);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<Value, A::Error> {
        ObjectVisitor.visit_map(access).map(Value::Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FieldError;

    fn refusal<T: DeserializeOwned + fmt::Debug>(body: &str) -> FieldError {
        match parse::<T>(body.as_bytes()) {
            Err(SymbolError::Invalid(mut errors)) => errors.remove(0),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn bodies_parse() {
        let b: CreateBody =
            parse(br##"{"name":"Blue","kind":"color","data":{"hex":"#00f","n":[1,{"a":2}]}}"##).unwrap();
        assert_eq!(b.name, "Blue");
        assert_eq!(b.data.unwrap().0["n"][1]["a"], 2);
        let b: UpdateBody = parse(br#"{"expected_version": 2, "data": null}"#).unwrap();
        assert_eq!(b.expected_version, Some(2));
        assert!(b.data.is_none());
    }

    #[test]
    fn refusals_name_the_field_and_never_echo_the_value() {
        let e = refusal::<CreateBody>(r#"{"name":"a","colour":"x"}"#);
        assert_eq!((e.field.as_str(), e.message.as_str()), ("colour", "is not a known field"));
        let e = refusal::<CreateBody>(r#"{"name":"a","name":"b"}"#);
        assert_eq!((e.field.as_str(), e.message.as_str()), ("name", "is given twice"));
        let e = refusal::<CreateBody>(r#"{"name":"a","data":{"x":{"k":1,"k":2}}}"#);
        assert_eq!((e.field.as_str(), e.message.as_str()), ("data.x.k", "is given twice"));
        let e = refusal::<CreateBody>(r#"{"name":"secret-value","kind":12345}"#);
        assert_eq!((e.field.as_str(), e.message.as_str()), ("kind", "must be a string"));
        let e = refusal::<CreateBody>(r#"{"data":[1,2]}"#);
        assert_eq!((e.field.as_str(), e.message.as_str()), ("data", "must be an object"));
        let e = refusal::<UpdateBody>(r#"{"expected_version":"x"}"#);
        assert_eq!((e.field.as_str(), e.message.as_str()), ("expected_version", "must be an integer"));
        assert_eq!(refusal::<CreateBody>("[1]").field, "body");
        assert_eq!(refusal::<CreateBody>("{").field, "body");
        assert_eq!(refusal::<CreateBody>(r#"{"name":"a"} x"#).field, "body");
    }
}
