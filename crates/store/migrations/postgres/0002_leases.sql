-- Leader election and instance liveness for several kuma-cp instances on one database.
-- A lease is held by one instance until `expires_at` (the database's clock decides, so instances'
-- clocks never have to agree); `term` grows each time the lease changes hands (or is taken again
-- after it lapsed), so work done under an older term can be told apart.
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    term bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Every running instance writes its heartbeat here; an instance whose heartbeat is old is dead,
-- and the proxy and zone subscriptions it recorded can be closed.
-- `inter_cp_url` and `inter_cp_certificate` (PEM) are where and how other instances reach it
-- (global instances forward inspect requests to the one holding a zone's stream).
CREATE TABLE instances (
    id text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL,
    inter_cp_url text NOT NULL DEFAULT '',
    inter_cp_certificate text NOT NULL DEFAULT ''
);

-- Secrets the instances share and nobody else reads (not resources: never served by the API or
-- sent over KDS), e.g. the token instances present to each other.
CREATE TABLE instance_secrets (
    name text PRIMARY KEY,
    value text NOT NULL
);
