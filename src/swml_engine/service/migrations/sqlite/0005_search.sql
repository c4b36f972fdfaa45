-- The console's recording search: format and duration of a recording, caller and callee of a call, as
-- columns (filled from the JSON of the rows already there; a row whose JSON SQLite cannot read keeps NULL).
ALTER TABLE recordings ADD COLUMN format TEXT;
ALTER TABLE recordings ADD COLUMN duration REAL;
ALTER TABLE calls ADD COLUMN caller TEXT;
ALTER TABLE calls ADD COLUMN callee TEXT;
UPDATE recordings SET format = json_extract(meta, '$.format'), duration = json_extract(meta, '$.duration')
    WHERE json_valid(meta);
UPDATE calls SET caller = json_extract(info, '$.from'), callee = json_extract(info, '$.to') WHERE json_valid(info);
