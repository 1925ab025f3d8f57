//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the whole public API; and
//! `GET /api/v1/`, the API's index pointing at it and at the main collections.
//!
//! The document is built at start-up from the code: one operation per route of the route table
//! [`crate::routes::ROUTES`] (its security from the route's access), described in
//! [`operations`] against the wire types of [`cityevents_api`] (bodies, answers, query strings),
//! with the error answers the route can give ([`answers`]) and `components/schemas` from
//! [`cityevents_api::schemas`], whose limits and patterns are the ones the services check.

mod answers;
mod operation;
mod operations;

use std::collections::{BTreeSet, HashMap};

use axum::body::Bytes;
use axum::response::IntoResponse;
use http::header;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApiBuilder, Paths, Server};

use crate::routes::{ROUTES, Route};

/// The API's version, as the document states it (the paths carry its major, `/api/v1/`).
const API_VERSION: &str = "1.0.0";

const DESCRIPTION: &str = "The public API of City Events, served by the gateway (the only public entry); an \
     interactive reference over this document is served at `/api/v1/docs/`. Errors are RFC 9457 problems. Lists \
     take `limit` (1-100, default 20) and `cursor` and answer `{items, next_cursor}`. A query parameter sent empty \
     (`?city=`) is the same as leaving it out (`allowEmptyValue`). A query parameter an operation does not declare \
     is refused with 400 `invalid_input` naming it. Requests are rate limited per user (per client IP without a \
     token). A method a path does not declare is answered 405 with `Allow` (`#/components/responses/\
     MethodNotAllowed`); a body that is not `application/json` is answered 415.";

/// The whole document, built from the route table, [`operations`] and the wire types; an error
/// names a route that is not described, or a description with no route.
pub fn document() -> Result<serde_json::Value, String> {
    let paths = paths(ROUTES, operations::all())?;
    let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
    let components = ComponentsBuilder::new()
        .schemas_from_iter(cityevents_api::schemas())
        .responses_from_iter(answers::FAILURES.iter().map(|f| (f.name, f.response())))
        .security_scheme("bearer", SecurityScheme::Http(bearer))
        .build();
    let api = OpenApiBuilder::new()
        .info(InfoBuilder::new().title("City Events API").version(API_VERSION).description(Some(DESCRIPTION)))
        .servers(Some([Server::new("/")]))
        .tags(Some(operation::TAGS.map(|(_, name)| TagBuilder::new().name(name).build())))
        .paths(paths)
        .components(Some(components))
        .build();
    let mut doc = serde_json::to_value(api).map_err(|e| format!("the OpenAPI document does not serialize: {e}"))?;
    allow_empty_query_values(&mut doc);
    Ok(doc)
}

/// One operation per route, each from its description; every route must have exactly one and
/// every description a route.
fn paths(routes: &[Route], mut specs: Vec<operation::Spec>) -> Result<Paths, String> {
    let mut paths = Paths::new();
    for route in routes {
        let at = specs
            .iter()
            .position(|s| s.verb == route.verb && s.path == route.path)
            .ok_or_else(|| format!("{:?} {} has no OpenAPI description", route.verb, route.path))?;
        let operation = specs.swap_remove(at).build(route)?;
        paths.add_path_operation(route.path, vec![operation::method(route.verb)], operation);
    }
    match specs.first() {
        Some(stray) => Err(format!("{:?} {} is described but not a route", stray.verb, stray.path)),
        None => Ok(paths),
    }
}

/// Marks every query parameter `allowEmptyValue` (utoipa has no field for it): every service
/// reads `?name=` as the parameter left out.
fn allow_empty_query_values(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(serde_json::Value::as_object_mut) else { return };
    for item in paths.values_mut().filter_map(serde_json::Value::as_object_mut) {
        for op in item.values_mut() {
            let Some(params) = op.get_mut("parameters").and_then(serde_json::Value::as_array_mut) else { continue };
            for p in params.iter_mut().filter(|p| p["in"] == "query") {
                if let Some(p) = p.as_object_mut() {
                    p.insert("allowEmptyValue".to_owned(), serde_json::Value::Bool(true));
                }
            }
        }
    }
}

/// The operations a document describes, as `(METHOD, path)`.
pub fn operations(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    let mut out = BTreeSet::new();
    if let Some(paths) = doc.get("paths").and_then(serde_json::Value::as_object) {
        for (path, item) in paths {
            for m in METHODS {
                if item.get(m).is_some() {
                    out.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
    }
    out
}

/// The query parameters of each operation of the route table, as the document declares them
/// (`in: query`, on the operation or its path, `$ref`s resolved): the gateway refuses any other.
pub fn query_parameters(doc: &serde_json::Value) -> HashMap<(http::Method, &'static str), BTreeSet<String>> {
    let resolve = |p: &serde_json::Value| -> Option<serde_json::Value> {
        match p.get("$ref").and_then(serde_json::Value::as_str) {
            Some(r) => doc.pointer(r.strip_prefix('#')?).cloned(),
            None => Some(p.clone()),
        }
    };
    let list = |v: &serde_json::Value| v.get("parameters").and_then(serde_json::Value::as_array).cloned();
    ROUTES
        .iter()
        .map(|r| {
            let item = &doc["paths"][r.path];
            let params = list(item).into_iter().chain(list(&item[r.verb.openapi_key()])).flatten();
            let names = params
                .filter_map(|p| resolve(&p))
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect();
            ((r.verb.method(), r.path), names)
        })
        .collect()
}

/// Answers with `document`, [`document`] serialized once at start-up.
pub(crate) async fn serve(
    document: Bytes,
    req: axum::extract::Request,
) -> Result<axum::response::Response, keel::Problem> {
    // Public, but a token that is sent must verify, as on every route.
    let (mut parts, _) = req.into_parts();
    crate::edge::authorize(&mut parts, crate::routes::Access::Public).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], document).into_response())
}

/// `GET /api/v1/`: where to start: the document, the interactive parts and the main collections.
pub(crate) async fn index(req: axum::extract::Request) -> Result<axum::response::Response, keel::Problem> {
    let (mut parts, _) = req.into_parts();
    crate::edge::authorize(&mut parts, crate::routes::Access::Public).await?;
    let links = [
        ("events", "/api/v1/events"),
        ("cities", "/api/v1/meta/cities"),
        ("register", "/api/v1/auth/register"),
        ("login", "/api/v1/auth/login"),
        ("me", "/api/v1/me"),
        ("my_events", "/api/v1/me/events"),
        ("my_joins", "/api/v1/me/joins"),
        ("notifications", "/api/v1/me/notifications"),
    ];
    Ok(axum::Json(cityevents_api::gateway::ApiIndex {
        name: "City Events API".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        openapi: crate::routes::OPENAPI_PATH.to_owned(),
        reference: crate::reference::PATH.to_owned(),
        links: links.into_iter().map(|(name, path)| (name.to_owned(), path.to_owned())).collect(),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::routes::Access;

    fn doc() -> Value {
        document().unwrap()
    }

    #[test]
    fn is_openapi_3_1_and_lists_exactly_the_route_table() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
        let table: BTreeSet<(String, String)> =
            ROUTES.iter().map(|r| (r.verb.method().to_string(), r.path.to_owned())).collect();
        assert_eq!(operations(&doc), table);
    }

    #[test]
    fn security_matches_each_routes_access() {
        let doc = doc();
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.verb.openapi_key()];
            let security = op["security"].as_array().unwrap();
            let anonymous = security.iter().any(|s| s.as_object().is_some_and(serde_json::Map::is_empty));
            assert_eq!(anonymous, r.access != Access::User, "{r:?}");
            assert!(security.iter().any(|s| s.get("bearer").is_some()), "{r:?}");
            assert!(op["responses"].as_object().unwrap().keys().any(|k| k.starts_with('2')), "{r:?}: a success answer");
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(v: &Value, doc: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let pointer = r.strip_prefix('#').unwrap();
                        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
                    }
                    m.values().for_each(|v| walk(v, doc));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, doc)),
                _ => {}
            }
        }
        let doc = doc();
        walk(&doc, &doc);
    }

    /// The parameter named `name` of an operation.
    fn parameter<'d>(doc: &'d Value, path: &str, method: &str, name: &str) -> &'d Value {
        let params = doc["paths"][path][method]["parameters"].as_array().unwrap();
        params.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{method} {path}: no {name}"))
    }

    #[test]
    fn lists_take_limit_and_cursor_and_join_takes_an_idempotency_key() {
        use cityevents_api::limits;
        let doc = doc();
        for path in [
            "/api/v1/events",
            "/api/v1/me/events",
            "/api/v1/me/joins",
            "/api/v1/events/{id}/participants",
            "/api/v1/events/{id}/waitlist",
            "/api/v1/events/{id}/bans",
            "/api/v1/me/notifications",
            "/api/v1/admin/users",
        ] {
            let limit = parameter(&doc, path, "get", "limit");
            assert_eq!((limit["in"].as_str(), limit["required"].as_bool()), (Some("query"), Some(false)), "{path}");
            assert_eq!(limit["schema"]["maximum"], limits::MAX_LIMIT, "{path}");
            assert_eq!(limit["schema"]["default"], limits::DEFAULT_LIMIT, "{path}");
            assert_eq!(limit["allowEmptyValue"], true, "{path}");
            assert_eq!(limit["description"], "Items per page.", "{path}: the description is the parameter's");
            assert!(limit["schema"].get("description").is_none(), "{path}");
            let cursor = parameter(&doc, path, "get", "cursor");
            assert_eq!(cursor["schema"]["maxLength"], limits::MAX_CURSOR, "{path}");
        }
        let key = parameter(&doc, "/api/v1/events/{id}/join", "post", "Idempotency-Key");
        assert_eq!((key["in"].as_str(), key["required"].as_bool()), (Some("header"), Some(true)));
        assert_eq!(doc["components"]["schemas"]["Problem"]["properties"]["status"]["type"], "integer");
        let query = query_parameters(&doc);
        let names = |m: http::Method, p: &'static str| query[&(m, p)].iter().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(http::Method::GET, "/api/v1/events"),
            ["category", "city", "cursor", "exclude_expired", "from", "limit", "organizer", "q", "sort", "to"]
        );
        assert_eq!(names(http::Method::GET, "/api/v1/me/events"), ["cursor", "limit", "status"]);
        assert!(names(http::Method::POST, "/api/v1/events").is_empty());
        assert!(doc["components"]["responses"]["TooManyRequests"]["headers"]["Retry-After"].is_object());
    }

    /// Every path id is a required UUID (a feed's secret, a picture's hash and file name
    /// strings) with a description, in the template's order.
    #[test]
    fn path_ids_follow_the_templates() {
        let doc = doc();
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.verb.openapi_key()];
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|a| a.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            let template: Vec<&str> =
                r.path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
            assert_eq!(declared, template, "{r:?}");
            for name in template {
                let p = parameter(&doc, r.path, r.verb.openapi_key(), name);
                let format = if ["token", "hash", "file"].contains(&name) { None } else { Some("uuid") };
                assert_eq!((p["required"].as_bool(), p["schema"]["format"].as_str()), (Some(true), format), "{r:?}");
                assert!(p["description"].is_string(), "{r:?} {name}");
            }
        }
    }

    #[test]
    fn every_route_is_described_once_and_every_description_routed() {
        use crate::routes::{Upstream, Verb};
        use operation::op;
        let route = Route { verb: Verb::Get, path: "/api/v1/x/{id}", upstream: Upstream::Events, access: Access::User };
        let err = paths(&[route], vec![]).err().unwrap();
        assert!(err.contains("/api/v1/x/{id} has no OpenAPI description"), "{err}");
        let err = paths(&[], vec![op(Verb::Get, "/api/v1/x", "x", "X").empty(204, "Done.")]).err().unwrap();
        assert!(err.contains("/api/v1/x is described but not a route"), "{err}");
        let err = paths(&[route], vec![op(Verb::Get, route.path, "x", "X").empty(204, "Done.")]).err().unwrap();
        assert!(err.contains("`{id}` is not described"), "{err}");
        let events = Route { path: "/api/v1/events/{id}/x", ..route };
        let err = paths(&[events], vec![op(Verb::Get, events.path, "x", "X")]).err().unwrap();
        assert!(err.contains("no success answer"), "{err}");
        let err = paths(&[events], vec![op(Verb::Get, events.path, "x", "X").empty(204, "Done.").errors(&[418])])
            .err()
            .unwrap();
        assert!(err.contains("no shared answer for 418"), "{err}");
        assert!(paths(&[events], vec![op(Verb::Get, events.path, "x", "X").empty(204, "Done.")]).is_ok());
    }

    /// The errors the gateway itself sends are stated on every route they can happen on.
    #[test]
    fn each_route_states_the_gateways_own_errors() {
        let doc = doc();
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.verb.openapi_key()];
            let answers = op["responses"].as_object().unwrap();
            let has = |s: &str| answers.contains_key(s);
            assert!(has("400") && has("429"), "{r:?}: unknown query parameters and rate limits");
            if r.access != Access::Anonymous {
                assert!(has("401"), "{r:?}: a token that is sent must verify");
            }
            if r.path.contains('{') {
                assert!(has("404"), "{r:?}");
            }
            if op.get("requestBody").is_some() {
                assert!(has("413") && has("415"), "{r:?}");
            }
            if r.upstream != crate::routes::Upstream::Gateway {
                assert!(has("502") && has("503") && has("504"), "{r:?}");
            }
            for answer in answers.values() {
                if let Some(Value::String(to)) = answer.get("$ref") {
                    assert!(to.starts_with("#/components/responses/"), "{r:?}: {to}");
                }
            }
            let tag = op["tags"][0].as_str().unwrap();
            assert!(doc["tags"].as_array().unwrap().iter().any(|t| t["name"] == tag), "{r:?}: {tag}");
        }
        let login = &doc["paths"]["/api/v1/auth/login"]["post"]["responses"]["403"];
        assert_eq!(login["$ref"], "#/components/responses/Forbidden");
        assert!(login["description"].as_str().unwrap().contains("account_banned"), "the operation's own reading");
    }

    /// What Keel's problems carry is what the document's `Problem` states (Keel does not depend on
    /// utoipa, so the contract has its own type): every member, with its JSON type.
    #[test]
    fn keels_problems_read_as_the_documented_problem() {
        let doc = doc();
        let schema = &doc["components"]["schemas"]["Problem"];
        let problem = keel::Problem::bad_request("invalid input").detail("d").code("invalid_input").field("title", "m");
        let resp = axum::response::IntoResponse::into_response(problem.clone());
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/problem+json");
        let mut body = serde_json::to_value(&problem).unwrap();
        body["request_id"] = Value::from("req-1");
        for (name, value) in body.as_object().unwrap() {
            let property = &schema["properties"][name];
            assert!(property.is_object(), "`{name}` is not in the document's Problem");
            let ty = match value {
                Value::String(_) => "string",
                Value::Number(_) => "integer",
                Value::Array(_) => "array",
                other => panic!("`{name}`: {other}"),
            };
            assert_eq!(property["type"], ty, "{name}");
        }
        let read: cityevents_api::gateway::Problem = serde_json::from_value(body).unwrap();
        assert_eq!((read.status, read.errors.unwrap()[0].field.as_str()), (400, "title"));
    }

    /// The mismatches a schemathesis run against the document found, each pinned: the limits,
    /// patterns and values the services enforce (their own tests prove the enforcing side; CI's
    /// contract run proves both together).
    #[test]
    fn states_what_the_services_enforce() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        for s in ["Join", "MyJoin"] {
            let statuses = &schemas[s]["properties"]["status"]["enum"];
            assert_eq!(statuses, &serde_json::json!(["confirmed", "waitlisted", "canceled", "kicked"]), "{s}");
        }
        let list = &doc["paths"]["/api/v1/events"]["get"]["parameters"];
        for name in ["city", "category"] {
            let p = list.as_array().unwrap().iter().find(|p| p["name"] == name).unwrap();
            assert_eq!(p["schema"]["maxLength"], 80, "{name}");
        }
        let key = &parameter(&doc, "/api/v1/events/{id}/join", "post", "Idempotency-Key")["schema"];
        use cityevents_common::idempotency;
        assert_eq!(
            (key["maxLength"].as_u64(), key["pattern"].as_str()),
            (u64::try_from(idempotency::MAX_LEN).ok(), Some(idempotency::PATTERN))
        );
        assert_eq!(schemas["BatchRequest"]["properties"]["ids"]["minItems"], 1);
        for (name, schema) in schemas.as_object().unwrap() {
            if name.ends_with("Request") || name == "EventInput" || name.ends_with("Patch") {
                assert_eq!(schema["additionalProperties"], false, "{name}: unknown fields are refused");
            }
        }
        for s in ["EventInput", "EventPatch"] {
            let p = &schemas[s]["properties"];
            assert_eq!(
                (p["capacity"]["minimum"].as_u64(), p["capacity"]["maximum"].as_u64()),
                (Some(0), Some(100_000))
            );
            assert_eq!(p["city"]["maxLength"], 80, "{s}");
            for f in ["title", "city"] {
                assert_eq!(p[f]["minLength"], 1, "{s}.{f}: blank is refused");
                assert!(p[f]["pattern"].is_string(), "{s}.{f}: control characters are refused");
            }
            let names: Vec<&str> =
                p["category"]["enum"].as_array().unwrap().iter().filter_map(serde_json::Value::as_str).collect();
            let fixed: Vec<&str> = cityevents_api::events::CATEGORIES.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, fixed, "{s}.category: the fixed set");
        }
        assert_eq!(schemas["EventPatch"]["minProperties"], 1);
        // 415 wherever a JSON body is taken; 405 described once, for any undeclared method.
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.verb.openapi_key()];
            if op.get("requestBody").is_some() {
                assert_eq!(op["responses"]["415"]["$ref"], "#/components/responses/UnsupportedMediaType", "{r:?}");
            }
        }
        assert!(doc["components"]["responses"]["MethodNotAllowed"]["headers"]["Allow"].is_object());
    }

    /// The text patterns accept what the services' text checks accept and refuse what they
    /// refuse (`cityevents_common::validate::text`: not blank, no control characters but tab and
    /// newline).
    #[test]
    fn text_patterns_match_the_services_checks() {
        let doc = doc();
        let pattern = doc["components"]["schemas"]["EventInput"]["properties"]["title"]["pattern"].as_str().unwrap();
        assert_eq!(pattern, REQUIRED_TEXT, "the pattern matches_text_pattern evaluates");
        for (value, ok) in [
            ("Jazz", true),
            ("  Jazz\tnight\n", true),
            ("   ", false),
            ("a\u{0}b", false),
            ("a\u{85}b", false),
            ("\u{3000}", false),
        ] {
            let by_service = cityevents_common::validate::text("title", value, 120).is_ok();
            assert_eq!(by_service, ok, "{value:?}");
            assert_eq!(matches_text_pattern(value), ok, "{value:?}");
        }
    }

    const REQUIRED_TEXT: &str = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$";

    /// [`REQUIRED_TEXT`] evaluated without a regex engine.
    fn matches_text_pattern(v: &str) -> bool {
        let control = |c: char| matches!(c, '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}');
        let blank = |c: char| {
            matches!(c, '\u{0}'..='\u{20}' | '\u{7f}'..='\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}')
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}')
        };
        !v.chars().any(control) && v.chars().any(|c| !blank(c))
    }
}
