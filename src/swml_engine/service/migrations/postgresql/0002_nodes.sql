-- When each node last said it is alive: the calls a node that went away for good left "live" are ended
-- by the others.
CREATE TABLE nodes (
    node TEXT PRIMARY KEY,
    seen_at DOUBLE PRECISION NOT NULL
);
