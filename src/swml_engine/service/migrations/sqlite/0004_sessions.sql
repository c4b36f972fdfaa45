-- Console sign-ins (service/sessions.py), shared by every worker: a session is kept only as the SHA-256
-- of its cookie's value, so the index never holds a cookie that would sign anyone in.
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    csrf TEXT NOT NULL,
    expires_at REAL NOT NULL
);
