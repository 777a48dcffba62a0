-- A read-only login for dashboards (Grafana's PostgreSQL datasource in deploy/grafana) on the
-- metadata store. Run once as the store's owner, after `iotpipe registry serve` or `iotpipe
-- run` has applied the migrations:
--
--   psql -d iotpipe -f deploy/postgres/grafana-reader.sql
--   psql -d iotpipe -c "ALTER ROLE grafana PASSWORD '...'"   -- then IOTPIPE_GRAFANA_DB_PASSWORD
--
-- The role can read every table of the store (places, models, devices, history, change_log)
-- and nothing else: no writes, no DDL. Tables a later migration adds are readable too.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotpipe_reader') THEN
        CREATE ROLE iotpipe_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'grafana') THEN
        CREATE ROLE grafana LOGIN IN ROLE iotpipe_reader;
    END IF;
END
$$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO iotpipe_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO iotpipe_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO iotpipe_reader;
-- A dashboard query that runs away is stopped, not left to load the store.
ALTER ROLE grafana SET statement_timeout = '10s';
ALTER ROLE grafana SET default_transaction_read_only = on;
