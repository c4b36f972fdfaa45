-- When each node last said it is alive (the same table as PostgreSQL's; one node uses it alone here).
CREATE TABLE nodes (
    node TEXT PRIMARY KEY,
    seen_at DOUBLE PRECISION NOT NULL
);
