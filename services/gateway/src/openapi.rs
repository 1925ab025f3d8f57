//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the whole public API; and
//! `GET /api/v1/`, the API's index pointing at it and at the main collections.
//!
//! The document is [`OPERATIONS`] (its paths, parameters and responses, tested against the route
//! table [`crate::routes::ROUTES`]) with `components/schemas` built from the wire types of
//! [`cityevents_api`], whose limits and patterns are the ones the services check.

use std::collections::{BTreeSet, HashMap};

use axum::body::Bytes;
use axum::response::IntoResponse;
use http::header;

use crate::routes::ROUTES;

/// The document without its schemas.
pub const OPERATIONS: &str = include_str!("operations.json");

/// The whole document: [`OPERATIONS`] and the schemas of [`cityevents_api::schemas`].
pub fn document() -> Result<serde_json::Value, String> {
    let mut doc: serde_json::Value =
        serde_json::from_str(OPERATIONS).map_err(|e| format!("the embedded OpenAPI operations are not JSON: {e}"))?;
    let schemas = serde_json::to_value(cityevents_api::schemas())
        .map_err(|e| format!("the OpenAPI schemas do not serialize: {e}"))?;
    let components = doc
        .get_mut("components")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or("the embedded OpenAPI operations have no components")?;
    components.insert("schemas".to_owned(), schemas);
    Ok(doc)
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
pub(crate) async fn serve(document: Bytes, req: axum::extract::Request) -> axum::response::Response {
    // Public, but a token that is sent must verify, as on every route.
    let (mut parts, _) = req.into_parts();
    if let Err(refused) = crate::edge::authorize(&mut parts, crate::routes::Access::Public).await {
        return refused;
    }
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

/// `GET /api/v1/`: where to start: the document, the interactive parts and the main collections.
pub(crate) async fn index(req: axum::extract::Request) -> axum::response::Response {
    let (mut parts, _) = req.into_parts();
    if let Err(refused) = crate::edge::authorize(&mut parts, crate::routes::Access::Public).await {
        return refused;
    }
    axum::Json(serde_json::json!({
        "name": "City Events API",
        "version": env!("CARGO_PKG_VERSION"),
        "openapi": crate::routes::OPENAPI_PATH,
        "reference": crate::reference::PATH,
        "links": {
            "events": "/api/v1/events",
            "cities": "/api/v1/meta/cities",
            "register": "/api/v1/auth/register",
            "login": "/api/v1/auth/login",
            "me": "/api/v1/me",
            "my_events": "/api/v1/me/events",
            "my_joins": "/api/v1/me/joins",
            "notifications": "/api/v1/me/notifications",
        },
    }))
    .into_response()
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

    #[test]
    fn lists_take_limit_and_cursor_and_join_takes_an_idempotency_key() {
        let doc = doc();
        let params = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| p["$ref"].as_str().unwrap_or(p["name"].as_str().unwrap_or("")).to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        for path in [
            "/api/v1/events",
            "/api/v1/me/events",
            "/api/v1/me/joins",
            "/api/v1/events/{id}/participants",
            "/api/v1/events/{id}/waitlist",
            "/api/v1/me/notifications",
        ] {
            let p = params(path, "get");
            assert!(p.contains(&"#/components/parameters/Limit".to_owned()), "{path}: {p:?}");
            assert!(p.contains(&"#/components/parameters/Cursor".to_owned()), "{path}: {p:?}");
        }
        assert!(
            params("/api/v1/events/{id}/join", "post").contains(&"#/components/parameters/IdempotencyKey".to_owned())
        );
        let key = &doc["components"]["parameters"]["IdempotencyKey"];
        assert_eq!(
            (key["in"].as_str(), key["name"].as_str(), key["required"].as_bool()),
            (Some("header"), Some("Idempotency-Key"), Some(true))
        );
        assert_eq!(doc["components"]["schemas"]["Problem"]["properties"]["status"]["type"], "integer");
        let query = query_parameters(&doc);
        let names = |m: http::Method, p: &'static str| query[&(m, p)].iter().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(http::Method::GET, "/api/v1/events"),
            ["category", "city", "cursor", "exclude_expired", "from", "limit", "q", "sort", "to"]
        );
        assert_eq!(names(http::Method::GET, "/api/v1/me/events"), ["cursor", "limit", "status"]);
        assert!(names(http::Method::POST, "/api/v1/events").is_empty());
        assert!(doc["components"]["responses"]["TooManyRequests"]["headers"]["Retry-After"].is_object());
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
        let key = &doc["components"]["parameters"]["IdempotencyKey"]["schema"];
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
            for f in ["title", "city", "category"] {
                assert_eq!(p[f]["minLength"], 1, "{s}.{f}: blank is refused");
                assert!(p[f]["pattern"].is_string(), "{s}.{f}: control characters are refused");
            }
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
