-- The metadata store, version 2: alert state people act on.
--
-- Silences, acknowledgements and alert rules are one ordered, gap-free log, numbered like the
-- change log (each writer takes the next number from `alert_control_counter` under its row
-- lock), which the dataflow follows: a silence's edits and its expiry are new versions of it,
-- and so is each new set of rules (id `rules`). Alert events
-- are recorded by the dispatcher (each once, by id); `alerts` holds each alert's latest state.

CREATE TABLE alert_controls (
    seq          bigint PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('silence', 'acknowledgement', 'rules')),
    -- The silence's id, the alert acknowledged, or `rules`.
    id           text NOT NULL,
    version      bigint NOT NULL,
    -- As the dataflow takes it (`iotpipe::dataflow::alert::AlertControl`).
    body         jsonb NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, id, version)
);

CREATE TABLE alert_control_counter (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    last_seq bigint NOT NULL
);
INSERT INTO alert_control_counter (one, last_seq) VALUES (true, 0);

CREATE TABLE alert_events (
    id          text PRIMARY KEY,
    alert_id    text NOT NULL,
    event       text NOT NULL,
    ts_ms       bigint NOT NULL,
    body        jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_events_of_alert ON alert_events (alert_id, ts_ms);

CREATE TABLE alerts (
    alert_id        text PRIMARY KEY,
    open            boolean NOT NULL,
    opened_ms       bigint NOT NULL,
    last_ms         bigint NOT NULL,
    device_id       text,
    site            text NOT NULL,
    building        text NOT NULL,
    org             text NOT NULL,
    metric          text,
    rule            text NOT NULL,
    severity        text NOT NULL,
    cause           text NOT NULL,
    silenced_by     text,
    overdue         boolean NOT NULL DEFAULT false,
    acknowledged_by text,
    -- The latest event.
    latest          jsonb NOT NULL
);
CREATE INDEX alerts_open ON alerts (open, site, severity);
