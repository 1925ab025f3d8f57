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
//! Failures are RFC 9457 problems (Keel's [`Problem`](keel::http::Problem)) whose `code` says which: 400
//! `invalid_input` (with `errors[]` naming each field), 404 `not_found`, 409 `name_taken` or
//! `version_mismatch`, 503 `unavailable` (with `Retry-After`), 415 for a body that is not JSON.
//! A body's unknown, repeated or mistyped field is a 400 naming it, and so is a repeated key
//! anywhere inside `data`; bodies and query strings are read by Keel's extractors
//! (`keel::http::extract`).

use std::fmt;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};
use keel::http::extract::{Json, Query};
use keel::security::jwt::{Jwt, RequireRole, Role};
use serde::de::{MapAccess, SeqAccess, Visitor};
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
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, SymbolError> {
    let expected = integer("expected_version", q.expected_version.as_deref())?;
    symbols.delete(&project_id, &id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list(
    State(symbols): State<Symbols>,
    Path(project_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, SymbolError> {
    let page =
        PageRequest { offset: integer("offset", q.offset.as_deref())?, limit: integer("limit", q.limit.as_deref())? };
    let page = symbols.list(&project_id, page).await?;
    Ok(axum::Json(PageView::from(&page)).into_response())
}

/// An optional integer query parameter.
fn integer(field: &str, raw: Option<&str>) -> Result<Option<i64>, SymbolError> {
    raw.map(|v| v.parse::<i64>().map_err(|_| SymbolError::invalid(field, "must be an integer"))).transpose()
}

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
                let shown: String = key.chars().take(64).collect();
                // serde's own wording for a repeated field, so Keel's extractor names it.
                return Err(serde::de::Error::custom(format_args!("duplicate field `{shown}`")));
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
    use keel::http::extract::json::parse;
    use keel::http::problem::FieldError;
    use serde::de::DeserializeOwned;

    fn refusal<T: DeserializeOwned + fmt::Debug>(body: &str) -> FieldError {
        match parse::<T>(body.as_bytes()) {
            Err(p) => p.field_errors()[0].clone(),
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
