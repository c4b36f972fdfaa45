-- The index as it was before numbered migrations (IF NOT EXISTS: a file an older version made has it).
CREATE TABLE IF NOT EXISTS recordings (
    recording_id TEXT PRIMARY KEY,
    call_id TEXT,
    state TEXT,
    start_time REAL,
    meta TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_call ON recordings (call_id);
CREATE INDEX IF NOT EXISTS recordings_start ON recordings (start_time);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    state TEXT,
    start_time REAL,
    worker TEXT,
    info TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_start ON calls (start_time);
