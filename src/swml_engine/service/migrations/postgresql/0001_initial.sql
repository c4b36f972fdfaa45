-- Plain CREATE (no IF NOT EXISTS): a second node applying this again would fail, which the advisory
-- lock taken around migrations prevents. meta and info are the JSON text as written (key order kept).
CREATE TABLE recordings (
    recording_id TEXT PRIMARY KEY,
    call_id TEXT,
    state TEXT,
    start_time DOUBLE PRECISION,
    meta TEXT NOT NULL,
    end_time DOUBLE PRECISION,
    node TEXT
);
CREATE INDEX recordings_call ON recordings (call_id);
CREATE INDEX recordings_start ON recordings (start_time DESC, recording_id);
CREATE INDEX recordings_end ON recordings (end_time) WHERE end_time IS NOT NULL;
CREATE TABLE calls (
    call_id TEXT PRIMARY KEY,
    state TEXT,
    start_time DOUBLE PRECISION,
    worker TEXT,
    info TEXT NOT NULL,
    node TEXT
);
CREATE INDEX calls_start ON calls (start_time DESC, call_id);
CREATE INDEX calls_node_live ON calls (node) WHERE state <> 'ended';
