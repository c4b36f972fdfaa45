-- The console's recording search: format and duration of a recording, caller and callee of a call, as
-- columns, filled from the JSON of the rows already there. Python's json.dumps may have written NaN,
-- Infinity or \u0000, which jsonb refuses: those rows keep NULL rather than fail the migration.
ALTER TABLE recordings ADD COLUMN format TEXT;
ALTER TABLE recordings ADD COLUMN duration DOUBLE PRECISION;
ALTER TABLE calls ADD COLUMN caller TEXT;
ALTER TABLE calls ADD COLUMN callee TEXT;
UPDATE recordings SET format = meta::jsonb ->> 'format',
    duration = CASE WHEN jsonb_typeof(meta::jsonb -> 'duration') = 'number'
        THEN (meta::jsonb ->> 'duration')::double precision END
    WHERE meta NOT LIKE '%NaN%' AND meta NOT LIKE '%Infinity%' AND meta NOT LIKE '%\\u0000%';
UPDATE calls SET caller = info::jsonb ->> 'from', callee = info::jsonb ->> 'to'
    WHERE info NOT LIKE '%NaN%' AND info NOT LIKE '%Infinity%' AND info NOT LIKE '%\\u0000%';
CREATE INDEX recordings_format ON recordings (format);
