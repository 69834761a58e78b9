-- Pull sync: one row per source. `watermark` is where the next incremental run starts
-- (minus the look-back window): the start time of the last run that reached the end of
-- the listing. While a run is under way (or after it crashed or failed), `run_*` hold its
-- starting point and `cursor` the page after the last one whose records were queued, so
-- the next run resumes there instead of starting over.
CREATE TABLE sync_state (
    source_id        TEXT        PRIMARY KEY,
    watermark        TIMESTAMPTZ,
    run_started_at   TIMESTAMPTZ,
    -- The run's lower bound; NULL = the whole listing.
    run_since        TIMESTAMPTZ,
    cursor           TEXT,
    run_pages        BIGINT      NOT NULL DEFAULT 0,
    run_records      BIGINT      NOT NULL DEFAULT 0,
    run_changed      BIGINT      NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_finished_at TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
