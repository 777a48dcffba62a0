//! The API described as OpenAPI 3.1, built from the same kinds the router serves.

use serde_json::{Value, json};

use super::handlers::plural;
use crate::io::connect::store::entities::Kind;
use crate::io::connect::store::read::filter_fields;

fn limits() -> Value {
    json!({"type": "object", "required": ["min", "max"], "additionalProperties": false,
           "properties": {"min": {"type": "number"}, "max": {"type": "number"}}})
}

/// The JSON Schema of a kind's body (what PUT and POST take, and GET shows with `id`,
/// `version` and `effective_ms`).
fn schema(kind: Kind) -> Value {
    let attributes = json!({"type": "object", "description": "Free attributes."});
    let thresholds = json!({"type": "object", "additionalProperties": limits(),
                            "description": "By metric name (the schema catalog's)."});
    let write_only = json!({
        "id": {"type": "string"},
        "version": {"type": "integer", "readOnly": true},
        "effective_ms": {"type": "integer",
                         "description": "Event time from which the change holds (default: now)."}
    });
    let mut schema = match kind {
        Kind::Place => json!({
            "type": "object", "required": ["kind", "name"],
            "properties": {
                "kind": {"type": "string", "description": "org, site, building, or a level between (zone, floor)."},
                "parent_id": {"type": ["string", "null"], "description": "The place above; none only for an org."},
                "name": {"type": "string"},
                "time_zone": {"type": "string", "description": "IANA name (Europe/Berlin)."},
                "latitude": {"type": "number", "minimum": -90, "maximum": 90},
                "longitude": {"type": "number", "minimum": -180, "maximum": 180},
                "attributes": attributes,
            }
        }),
        Kind::Model => json!({
            "type": "object", "required": ["device_type"],
            "properties": {
                "manufacturer": {"type": "string"},
                "device_type": {"type": "string"},
                "schemas": {"type": "array", "items": {"type": "string"},
                            "description": "Schema variants its firmware speaks."},
                "metrics": {"type": "object", "additionalProperties": {
                    "type": "object", "additionalProperties": false,
                    "properties": {"unit": {"type": "string"}, "description": {"type": "string"}}}},
                "default_thresholds": thresholds,
            }
        }),
        Kind::Device => json!({
            "type": "object", "required": ["model_id", "place_id", "firmware", "schema"],
            "properties": {
                "model_id": {"type": "string"},
                "place_id": {"type": "string"},
                "firmware": {"type": "string"},
                "schema": {"type": "string"},
                "threshold_overrides": thresholds,
                "attributes": attributes,
                "status": {"enum": ["active", "decommissioned"], "default": "active"},
            }
        }),
    };
    for (name, property) in write_only.as_object().expect("an object") {
        schema["properties"][name] = property.clone();
    }
    schema["additionalProperties"] = json!(false);
    schema
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description,
           "schema": {"type": if name == "after" || filter_name(name) { "string" } else { "integer" }}})
}

fn filter_name(name: &str) -> bool {
    Kind::ALL.iter().any(|k| filter_fields(*k).contains(&name))
}

/// The document `GET /openapi.json` serves.
pub fn openapi_document() -> Value {
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"},
                    "description": "Percent-encoded when it holds / (place ids)."});
    let if_match = json!({"name": "If-Match", "in": "header", "required": false,
                          "schema": {"type": "string"}, "description": "An ETag from a GET, or *."});
    let if_none_match = json!({"name": "If-None-Match", "in": "header", "required": false,
                               "schema": {"const": "*"}, "description": "Create only."});
    let common = json!({
        "401": error_response("No bearer token, or an unknown one."),
        "403": error_response("The token may only read."),
        "503": error_response("The store is unreachable."),
    });
    let with = |extra: Value| {
        let mut responses = common.clone();
        for (k, v) in extra.as_object().expect("an object") {
            responses[k] = v.clone();
        }
        responses
    };
    let mut paths = serde_json::Map::new();
    for kind in Kind::ALL {
        let name = kind.name();
        let plural = plural(kind);
        let entity = json!({"$ref": format!("#/components/schemas/{name}")});
        let one = json!({"description": format!("The {name}."), "headers": {"ETag": {"schema": {"type": "string"}}},
                         "content": {"application/json": {"schema": entity}}});
        let mut list_params = vec![
            query("after", "Cursor: the `next` of the previous page."),
            query("limit", "Entities per page (1-1000, default 100)."),
            query("as_of", "Event time (ms): the versions in force then."),
        ];
        for field in filter_fields(kind) {
            list_params.push(query(field, "Only those whose field equals this."));
        }
        paths.insert(
            format!("/v1/{plural}"),
            json!({
                "get": {"summary": format!("List {plural}"), "parameters": list_params,
                        "responses": with(json!({"200": {"description": "A page.", "content": {"application/json": {"schema": {
                            "type": "object", "properties": {"items": {"type": "array", "items": entity},
                                                             "next": {"type": ["string", "null"]}}}}}},
                                                 "400": error_response("A parameter is wrong; `field` names it.")}))},
                "post": {"summary": format!("Create a {name} (id in the body)"),
                         "requestBody": {"required": true, "content": {"application/json": {"schema": entity}}},
                         "responses": with(json!({"201": one, "400": error_response("A field is wrong; `field` names it."),
                                                  "409": error_response("It exists.")}))},
            }),
        );
        paths.insert(
            format!("/v1/{plural}/{{id}}"),
            json!({
                "parameters": [id],
                "get": {"summary": format!("Read a {name}"), "parameters": [query("as_of", "Event time (ms).")],
                        "responses": with(json!({"200": one, "404": error_response("No such entity.")}))},
                "put": {"summary": format!("Create or replace a {name}"), "parameters": [if_match, if_none_match],
                        "requestBody": {"required": true, "content": {"application/json": {"schema": entity}}},
                        "responses": with(json!({"200": one, "201": one,
                                                 "400": error_response("A field is wrong; `field` names it."),
                                                 "412": error_response("If-Match or If-None-Match does not hold.")}))},
                "delete": {"summary": format!("Remove a {name}"),
                           "parameters": [if_match, query("effective_ms", "Event time (ms) from which it is gone (default now).")],
                           "responses": with(json!({"204": {"description": "Removed."}, "404": error_response("No such entity."),
                                                    "409": error_response("Others still name it."),
                                                    "412": error_response("If-Match does not hold.")}))},
            }),
        );
        paths.insert(
            format!("/v1/{plural}/{{id}}/history"),
            json!({"parameters": [id], "get": {"summary": format!("Every version of a {name}"),
                   "responses": with(json!({"200": {"description": "Oldest first; removals have `deleted`."},
                                            "404": error_response("No such entity.")}))}}),
        );
    }
    paths.insert(
        "/v1/places/{id}/tree".into(),
        json!({"parameters": [id], "get": {"summary": "A place, the places below it and their devices",
               "responses": with(json!({"200": {"description": "The tree."}, "404": error_response("No such place.")}))}}),
    );
    paths.insert(
        "/v1/devices/{id}/resolved".into(),
        json!({"parameters": [id], "get": {"summary": "A device as enrichment sees it",
               "parameters": [query("as_of", "Event time (ms), default now.")],
               "responses": with(json!({"200": {"description": "Org, site, building, model, type, thresholds."},
                                        "404": error_response("Not registered then.")}))}}),
    );
    paths.insert(
        "/v1/changes".into(),
        json!({"get": {"summary": "The change log, in commit order, without gaps",
               "parameters": [query("after", "The last seq read (default 0)."), query("limit", "Entries (1-1000).")],
               "responses": with(json!({"200": {"description": "Entries and the `next` seq."}}))}}),
    );
    alert_paths(&mut paths, &with, &id);
    let mut schemas = serde_json::Map::new();
    for kind in Kind::ALL {
        schemas.insert(kind.name().into(), schema(kind));
    }
    schemas.insert("Silence".into(), silence_schema());
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error", "message"], "properties": {
            "error": {"type": "string"}, "message": {"type": "string"},
            "field": {"type": "string", "description": "The field that is wrong (400)."}}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "iotpipe registry", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Places, equipment models and devices, with their history and change log; alerts, acknowledgements and silences."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

fn silence_schema() -> Value {
    let list =
        |what: &str| json!({"type": "array", "items": {"type": "string"}, "description": what});
    json!({
        "type": "object", "required": ["matchers", "ends_ms", "created_by"], "additionalProperties": false,
        "properties": {
            "id": {"type": "string", "readOnly": true},
            "version": {"type": "integer", "readOnly": true},
            "state": {"enum": ["pending", "active", "expired"], "readOnly": true},
            "matchers": {"type": "object", "additionalProperties": false,
                         "description": "Every list given must hold the alert's value; at least one list.",
                         "properties": {
                             "devices": list("Device ids."), "sites": list("Sites."),
                             "buildings": list("Buildings."), "metrics": list("Metric names (the catalog's)."),
                             "rules": list("Rule names."),
                             "severities": {"type": "array", "items": {"enum": ["warning", "minor", "major", "critical"]}},
                             "causes": {"type": "array", "items": {"enum": ["anomaly", "threshold", "silence", "site", "building", "clock"]}}}},
            "starts_ms": {"type": "integer", "description": "From (ms since the epoch; default and at the earliest: now)."},
            "ends_ms": {"type": "integer", "description": "Until, exclusive."},
            "created_by": {"type": "string"},
            "comment": {"type": "string"},
        }
    })
}

/// The alert routes (see [`super::alerts`]).
fn alert_paths(
    paths: &mut serde_json::Map<String, Value>,
    with: &dyn Fn(Value) -> Value,
    id: &Value,
) {
    let text = |name: &str, description: &str| {
        json!({"name": name, "in": "query", "required": false, "description": description,
               "schema": {"type": "string"}})
    };
    let mut list_params = vec![
        text("state", "open (default), resolved or all."),
        query("after", "Cursor: the `next` of the previous page."),
        query("limit", "Alerts per page (1-1000, default 100)."),
    ];
    for field in crate::io::connect::store::alert_state::ALERT_FILTER_FIELDS {
        list_params.push(text(field, "Only those whose field equals this."));
    }
    let silence = json!({"$ref": "#/components/schemas/Silence"});
    let one_silence = json!({"description": "The silence.", "content": {"application/json": {"schema": silence}}});
    paths.insert(
        "/v1/alerts".into(),
        json!({"get": {"summary": "Alerts and their latest state", "parameters": list_params,
               "responses": with(json!({"200": {"description": "A page: `items`, `next`."},
                                        "400": error_response("A parameter is wrong; `field` names it.")}))}}),
    );
    paths.insert(
        "/v1/alerts/{id}/history".into(),
        json!({"parameters": [id], "get": {"summary": "An alert's events, in event-time order",
               "responses": with(json!({"200": {"description": "`items`."}, "404": error_response("No such alert.")}))}}),
    );
    paths.insert(
        "/v1/alerts/{id}/ack".into(),
        json!({"parameters": [id], "post": {"summary": "Acknowledge an alert: no more reminders, no escalation",
               "requestBody": {"required": true, "content": {"application/json": {"schema": {
                   "type": "object", "required": ["by"], "additionalProperties": false,
                   "properties": {"by": {"type": "string"}, "note": {"type": "string"}}}}}},
               "responses": with(json!({"201": {"description": "Acknowledged."},
                                        "200": {"description": "It was already: the first acknowledgement."},
                                        "400": error_response("A field is wrong; `field` names it.")}))}}),
    );
    paths.insert(
        "/v1/silences".into(),
        json!({
            "get": {"summary": "Silences", "parameters": [text("state", "pending, active, expired, current (default: pending and active) or all.")],
                    "responses": with(json!({"200": {"description": "`items`."}}))},
            "post": {"summary": "Create a silence",
                     "requestBody": {"required": true, "content": {"application/json": {"schema": silence}}},
                     "responses": with(json!({"201": one_silence, "400": error_response("A field is wrong; `field` names it.")}))},
        }),
    );
    paths.insert(
        "/v1/silences/{id}".into(),
        json!({
            "parameters": [id],
            "get": {"summary": "A silence", "responses": with(json!({"200": one_silence, "404": error_response("No such silence.")}))},
            "delete": {"summary": "Expire a silence now", "responses": with(json!({"200": one_silence, "404": error_response("No such silence.")}))},
        }),
    );
    paths.insert(
        "/v1/alert-rules".into(),
        json!({
            "get": {"summary": "The alert rules put last", "responses": with(json!({"200": {"description": "`version`, `effective_ms`, `rules`."},
                                                                                 "404": error_response("None was put: runs use their own file.")}))},
            "put": {"summary": "New alert rules, in force from `effective_ms` without a restart",
                    "parameters": [query("effective_ms", "Event time (ms) from which they hold (default and at the earliest: now).")],
                    "requestBody": {"required": true, "content": {"application/toml": {"schema": {"type": "string",
                        "description": "A rules file, as datasets/alert_rules.toml."}}}},
                    "responses": with(json!({"201": {"description": "The change: `version`, `effective_ms`, `rules`."},
                                             "400": error_response("A rule cannot be used; `field` names it (rules.NAME).")}))},
        }),
    );
    paths.insert(
        "/v1/alert-controls".into(),
        json!({"get": {"summary": "Every silence version and acknowledgement, JSON Lines, in commit order",
               "responses": with(json!({"200": {"description": "What `iotpipe replay --alert-controls` reads.",
                                                "content": {"application/x-ndjson": {}}}}))}}),
    );
}
