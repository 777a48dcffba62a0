-- The metadata store, version 1: places (org > site > building, open to more levels), the
-- equipment catalogue (models), devices, every version of every entity (history), and the
-- ordered, gap-free log of committed changes the dataflow follows.

-- A place in the hierarchy. `kind` names the level (org, site, building; a zone or floor is
-- one more kind, no code change); `parent_id` is the level above (none for an org).
CREATE TABLE places (
    id           text PRIMARY KEY,
    kind         text NOT NULL,
    parent_id    text REFERENCES places (id),
    name         text NOT NULL,
    time_zone    text,
    latitude     double precision,
    longitude    double precision,
    attributes   jsonb NOT NULL DEFAULT '{}',
    version      bigint NOT NULL,
    effective_ms bigint NOT NULL
);
CREATE INDEX places_parent ON places (parent_id);

-- An equipment model: what it is, which schema variants its firmware speaks, its metrics and
-- their default thresholds (`{"metric": {"min": .., "max": ..}}`).
CREATE TABLE models (
    id                 text PRIMARY KEY,
    manufacturer       text,
    device_type        text NOT NULL,
    schemas            text[] NOT NULL DEFAULT '{}',
    metrics            jsonb NOT NULL DEFAULT '{}',
    default_thresholds jsonb NOT NULL DEFAULT '{}',
    version            bigint NOT NULL,
    effective_ms       bigint NOT NULL
);

-- A device: its model, its place (the lowest level it is in), firmware, the schema variant it
-- speaks, its own threshold overrides (laid over the model's defaults), free attributes.
CREATE TABLE devices (
    id                  text PRIMARY KEY,
    model_id            text NOT NULL REFERENCES models (id),
    place_id            text NOT NULL REFERENCES places (id),
    firmware            text NOT NULL,
    schema              text NOT NULL,
    threshold_overrides jsonb NOT NULL DEFAULT '{}',
    attributes          jsonb NOT NULL DEFAULT '{}',
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'decommissioned')),
    version             bigint NOT NULL,
    effective_ms        bigint NOT NULL
);
CREATE INDEX devices_place ON devices (place_id);
CREATE INDEX devices_model ON devices (model_id);

-- Every version of every entity, with the event time from which it holds: "what did we know
-- about device X at time t" is one query on (kind, id, effective_ms).
CREATE TABLE history (
    kind         text NOT NULL CHECK (kind IN ('place', 'model', 'device')),
    id           text NOT NULL,
    version      bigint NOT NULL,
    effective_ms bigint NOT NULL,
    deleted      boolean NOT NULL,
    body         jsonb NOT NULL,
    change_seq   bigint NOT NULL,
    PRIMARY KEY (kind, id, version)
);
CREATE INDEX history_as_of ON history (kind, id, effective_ms);

-- The change log: one entry per committed change, numbered without gaps in commit order.
-- A sequence would hand numbers out before commit, so a reader polling "after n" could pass a
-- number whose transaction commits later; instead every writer takes the next number from
-- `change_counter` in its own transaction, which holds the counter's row lock until it
-- commits: writers of changes serialise there, and numbers become visible in order.
CREATE TABLE change_log (
    seq          bigint PRIMARY KEY,
    kind         text NOT NULL,
    id           text NOT NULL,
    version      bigint NOT NULL,
    effective_ms bigint NOT NULL,
    deleted      boolean NOT NULL,
    body         jsonb NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE change_counter (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    last_seq bigint NOT NULL
);
INSERT INTO change_counter (one, last_seq) VALUES (true, 0);
