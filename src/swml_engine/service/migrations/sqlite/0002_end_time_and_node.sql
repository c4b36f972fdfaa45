-- Retention finds recordings by end time; a shared index tells each node's rows apart.
ALTER TABLE recordings ADD COLUMN end_time REAL;
ALTER TABLE recordings ADD COLUMN node TEXT;
ALTER TABLE calls ADD COLUMN node TEXT;
UPDATE recordings SET end_time = json_extract(meta, '$.end_time');
CREATE INDEX recordings_end ON recordings (end_time) WHERE end_time IS NOT NULL;
