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
CREATE TABLE instances (
    id text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL
);
