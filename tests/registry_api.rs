//! `iotpipe registry serve` against a PostgreSQL 15 the test starts: round trips of every
//! entity, ETags (412 on a stale one), 401 and 403, 400 naming the field, cursor pages,
//! `as_of`, the tree, history, the change log under concurrent writers, and the OpenAPI
//! document naming only routes that exist.

mod common;

use std::collections::BTreeMap;

use common::api::{Api, READ, WRITE, expect, expect_field};
use serde_json::{Value, json};

#[test]
fn every_entity_round_trips_with_etags_roles_field_errors_pages_as_of_and_a_tree() {
    let api = Api::start();

    // 401 without a token or with an unknown one; 403 for a reader writing.
    let anonymous = api.call("GET", "/v1/places", None, &[], None);
    expect(&anonymous, 401);
    assert!(
        anonymous
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );
    expect(
        &api.call("GET", "/v1/places", Some("guess"), &[], None),
        401,
    );
    // Places hold from the beginning (effective_ms 0), so the device resolves at any time.
    let org = json!({"kind": "org", "name": "Acme", "effective_ms": 0});
    expect(
        &api.call(
            "POST",
            "/v1/places",
            Some(READ),
            &[],
            Some(json!({"id": "acme", "kind": "org", "name": "Acme"})),
        ),
        403,
    );

    // Create by POST (201, ETag, Location); again: 409.
    let mut with_id = org.clone();
    with_id["id"] = json!("acme");
    let created = api.write("POST", "/v1/places", with_id.clone());
    let body = expect(&created, 201);
    assert_eq!(
        (created.header("etag"), body["version"].as_i64()),
        (Some("\"1\""), Some(1))
    );
    assert_eq!(created.header("location"), Some("/v1/places/acme"));
    expect(&api.write("POST", "/v1/places", with_id), 409);

    // A site: PUT creates; If-Match replaces; a stale If-Match is 412 with the current ETag.
    let site = json!({"kind": "site", "parent_id": "acme", "name": "Plant 1", "time_zone": "Europe/Berlin",
                      "latitude": 52.5, "longitude": 13.4, "effective_ms": 0});
    expect(
        &api.write("PUT", "/v1/places/acme%2Fplant-1", site.clone()),
        201,
    );
    let mut renamed = site.clone();
    renamed["name"] = json!("Plant One");
    let replaced = api.call(
        "PUT",
        "/v1/places/acme%2Fplant-1",
        Some(WRITE),
        &[("If-Match", "\"1\"")],
        Some(renamed.clone()),
    );
    expect(&replaced, 200);
    assert_eq!(replaced.header("etag"), Some("\"2\""));
    let stale = api.call(
        "PUT",
        "/v1/places/acme%2Fplant-1",
        Some(WRITE),
        &[("If-Match", "\"1\"")],
        Some(site.clone()),
    );
    expect(&stale, 412);
    assert_eq!(stale.header("etag"), Some("\"2\""));
    let create_only = api.call(
        "PUT",
        "/v1/places/acme%2Fplant-1",
        Some(WRITE),
        &[("If-None-Match", "*")],
        Some(site),
    );
    expect(&create_only, 412);
    // The same body again changes nothing.
    let same = api.write("PUT", "/v1/places/acme%2Fplant-1", renamed);
    assert_eq!((same.status, same.header("etag")), (200, Some("\"2\"")));

    // A building, and a zone within it: a level the readings do not carry.
    expect(&api.write("PUT", "/v1/places/hall-a", json!({"kind": "building", "parent_id": "acme/plant-1", "name": "Hall A", "effective_ms": 0})), 201);
    expect(
        &api.write(
            "PUT",
            "/v1/places/hall-a-z1",
            json!({"kind": "zone", "parent_id": "hall-a", "name": "Zone 1", "effective_ms": 0}),
        ),
        201,
    );

    // 400 naming the field.
    expect_field(
        &api.write("PUT", "/v1/places/x", json!({"kind": "site", "name": "x"})),
        "parent_id",
    );
    expect_field(
        &api.write(
            "PUT",
            "/v1/places/x",
            json!({"kind": "org", "name": "x", "colour": "red"}),
        ),
        "colour",
    );
    expect_field(
        &api.write(
            "PUT",
            "/v1/places/x",
            json!({"kind": "site", "name": "x", "parent_id": "nowhere"}),
        ),
        "parent_id",
    );
    expect_field(
        &api.write(
            "PUT",
            "/v1/places/x",
            json!({"kind": "site", "name": "x", "parent_id": "acme", "time_zone": "Mars/Olympus"}),
        ),
        "time_zone",
    );
    expect_field(
        &api.write(
            "PUT",
            "/v1/places/acme",
            json!({"kind": "org", "name": "Acme", "parent_id": "hall-a"}),
        ),
        "parent_id",
    );
    expect_field(
        &api.write(
            "PUT",
            "/v1/places/hall-a",
            json!({"kind": "building", "name": "Hall A", "parent_id": "hall-a-z1"}),
        ),
        "parent_id",
    );
    expect_field(
        &api.write(
            "PUT",
            "/v1/models/m",
            json!({"device_type": "pump", "default_thresholds": {"flux": {"min": 0, "max": 1}}}),
        ),
        "default_thresholds.flux",
    );
    expect_field(&api.write("PUT", "/v1/models/m", json!({"device_type": "pump", "default_thresholds": {"temperature": {"min": 9, "max": 1}}})), "default_thresholds.temperature");
    expect_field(
        &api.write(
            "PUT",
            "/v1/devices/d",
            json!({"model_id": "nope", "place_id": "hall-a", "firmware": "1", "schema": "v1"}),
        ),
        "model_id",
    );
    expect_field(
        &api.write(
            "PUT",
            "/v1/devices/d",
            json!({"place_id": "hall-a", "firmware": "1", "schema": "v1"}),
        ),
        "model_id",
    );
    expect_field(
        &api.call("PUT", "/v1/models/m", Some(WRITE), &[], None),
        "body",
    );
    expect_field(
        &api.write(
            "PUT",
            "/v1/models/m",
            json!({"id": "other", "device_type": "pump"}),
        ),
        "id",
    );
    expect_field(&api.read("/v1/devices?colour=red"), "colour");
    expect_field(&api.read("/v1/devices?limit=0"), "limit");

    // A model with default thresholds from 1000 ms, changed from 2000 ms; a device in the zone
    // with an override of its own.
    let model = json!({"manufacturer": "Pumpen AG", "device_type": "pump", "schemas": ["v1"],
                       "metrics": {"temperature": {"unit": "C"}, "pressure": {"unit": "bar"}},
                       "default_thresholds": {"temperature": {"min": 0, "max": 80}, "pressure": {"min": 1, "max": 6}},
                       "effective_ms": 1000});
    expect(&api.write("PUT", "/v1/models/P-100", model.clone()), 201);
    let mut hotter = model.clone();
    hotter["default_thresholds"]["temperature"]["max"] = json!(90);
    hotter["effective_ms"] = json!(2000);
    expect(&api.write("PUT", "/v1/models/P-100", hotter), 200);
    let device = json!({"model_id": "P-100", "place_id": "hall-a-z1", "firmware": "2.1", "schema": "v1",
                        "threshold_overrides": {"pressure": {"min": 2, "max": 5}}, "attributes": {"serial": "X1"},
                        "effective_ms": 1000});
    // Not from before its model exists: the history must resolve at every time after a change.
    let mut too_early = device.clone();
    too_early["effective_ms"] = json!(0);
    expect_field(
        &api.write("PUT", "/v1/devices/pump-1", too_early),
        "model_id",
    );
    expect(&api.write("PUT", "/v1/devices/pump-1", device), 201);
    let read = api.read("/v1/devices/pump-1");
    let body = expect(&read, 200);
    assert_eq!(
        (
            body["status"].as_str(),
            body["attributes"]["serial"].as_str()
        ),
        (Some("active"), Some("X1"))
    );
    assert_eq!(read.header("etag"), Some("\"1\""));

    // As of a time: the model before and after its change, and the device resolved through
    // its zone, building, site and org.
    assert_eq!(
        expect(&api.read("/v1/models/P-100?as_of=1500"), 200)["default_thresholds"]["temperature"]
            ["max"],
        80.0
    );
    assert_eq!(
        expect(&api.read("/v1/models/P-100?as_of=2500"), 200)["default_thresholds"]["temperature"]
            ["max"],
        90.0
    );
    expect(&api.read("/v1/models/P-100?as_of=500"), 404);
    let resolved = expect(&api.read("/v1/devices/pump-1/resolved?as_of=2500"), 200);
    assert_eq!(
        (
            resolved["org"].as_str(),
            resolved["site"].as_str(),
            resolved["building"].as_str(),
            resolved["model"].as_str(),
            resolved["device_type"].as_str()
        ),
        (
            Some("Acme"),
            Some("Plant One"),
            Some("Hall A"),
            Some("P-100"),
            Some("pump")
        )
    );
    assert_eq!(
        resolved["thresholds"],
        json!({"temperature": {"min": 0.0, "max": 90.0}, "pressure": {"min": 2.0, "max": 5.0}})
    );
    let before = expect(&api.read("/v1/devices/pump-1/resolved?as_of=1500"), 200);
    assert_eq!(before["thresholds"]["temperature"]["max"], 80.0);
    // Before it existed the device resolves to nothing.
    expect(&api.read("/v1/devices/pump-1/resolved?as_of=500"), 404);

    // 25 more devices, paged 10 at a time by cursor, filtered by model.
    for i in 0..25 {
        let body =
            json!({"model_id": "P-100", "place_id": "hall-a", "firmware": "2.1", "schema": "v1"});
        expect(
            &api.write("PUT", &format!("/v1/devices/pump-{:03}", i), body),
            201,
        );
    }
    let mut ids = Vec::new();
    let mut path = "/v1/devices?model_id=P-100&limit=10".to_owned();
    let mut pages = 0;
    loop {
        let page = expect(&api.read(&path), 200);
        pages += 1;
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => {
                path = format!(
                    "/v1/devices?model_id=P-100&limit=10&after={}",
                    common::url_encode(next)
                )
            }
            None => break,
        }
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((ids.len(), pages), (26, 3));
    assert_eq!(ids, sorted);
    assert_eq!(
        expect(&api.read("/v1/devices?place_id=hall-a-z1"), 200)["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The tree of the org: site > building > zone, each with its devices.
    let tree = expect(&api.read("/v1/places/acme/tree"), 200);
    let plant = &tree["children"][0];
    let hall = &plant["children"][0];
    assert_eq!(
        (plant["id"].as_str(), hall["id"].as_str()),
        (Some("acme/plant-1"), Some("hall-a"))
    );
    assert_eq!(hall["devices"].as_array().unwrap().len(), 25);
    assert_eq!(hall["children"][0]["devices"][0]["id"], "pump-1");

    // History; deletes: refused while named (409), with a stale ETag (412), then done.
    let history = expect(&api.read("/v1/models/P-100/history"), 200);
    assert_eq!(history["items"].as_array().unwrap().len(), 2);
    expect(
        &api.call("DELETE", "/v1/models/P-100", Some(WRITE), &[], None),
        409,
    );
    expect(
        &api.call(
            "DELETE",
            "/v1/devices/pump-1",
            Some(WRITE),
            &[("If-Match", "\"7\"")],
            None,
        ),
        412,
    );
    expect(
        &api.call(
            "DELETE",
            "/v1/devices/pump-1?effective_ms=5000",
            Some(WRITE),
            &[("If-Match", "\"1\"")],
            None,
        ),
        204,
    );
    expect(&api.read("/v1/devices/pump-1"), 404);
    expect(&api.read("/v1/devices/pump-1?as_of=4000"), 200);
    expect(&api.read("/v1/devices/pump-1?as_of=6000"), 404);
    let history = expect(&api.read("/v1/devices/pump-1/history"), 200);
    assert_eq!(history["items"][1]["deleted"], true);

    // Concurrent writers: 4 connections, 50 changes each; the log has every change once, in
    // commit order (each device's versions ascending), without a gap.
    let last = expect(&api.read("/v1/changes?limit=1000"), 200)["next"]
        .as_i64()
        .unwrap();
    std::thread::scope(|scope| {
        for writer in 0..4 {
            let api = &api;
            scope.spawn(move || {
                for round in 0..10 {
                    for d in 0..5 {
                        let body = json!({"model_id": "P-100", "place_id": "hall-a",
                                          "firmware": format!("3.{round}"), "schema": "v1"});
                        let answer = api.write("PUT", &format!("/v1/devices/w{writer}-{d}"), body);
                        assert!(
                            answer.status == 200 || answer.status == 201,
                            "{}",
                            answer.body
                        );
                    }
                }
            });
        }
    });
    let mut log = Vec::new();
    let mut after = last;
    loop {
        let page = expect(
            &api.read(&format!("/v1/changes?after={after}&limit=37")),
            200,
        );
        let items = page["items"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        after = page["next"].as_i64().unwrap();
        log.extend(items);
    }
    let seqs: Vec<i64> = log.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, ((last + 1)..=(last + 200)).collect::<Vec<_>>());
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for change in &log {
        versions
            .entry(change["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(change["version"].as_i64().unwrap());
    }
    assert_eq!(versions.len(), 20);
    assert!(
        versions
            .values()
            .all(|v| *v == (1..=10).collect::<Vec<_>>()),
        "{versions:?}"
    );

    // The OpenAPI document names only routes the API has: each answers with its own JSON
    // (not the router's bare 404 or 405).
    let doc = expect(&api.call("GET", "/openapi.json", None, &[], None), 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{}", paths.len());
    for (path, operations) in paths {
        let concrete = path.replace("{id}", "no-such-id");
        for method in ["get", "put", "post", "delete"] {
            if operations.get(method).is_none() {
                continue;
            }
            let body = (method == "put" || method == "post").then(|| json!({}));
            let answer = api.call(&method.to_uppercase(), &concrete, Some(WRITE), &[], body);
            assert_ne!(answer.status, 405, "{method} {path}");
            if answer.header("content-type") == Some("application/x-ndjson") {
                // The control log is JSON Lines (here: none).
                assert_eq!(answer.status, 200, "{method} {path}");
                continue;
            }
            let json: Value = serde_json::from_str(&answer.body)
                .unwrap_or_else(|_| panic!("{method} {path}: {} {}", answer.status, answer.body));
            assert!(json.is_object(), "{method} {path}");
        }
    }
}
