-- Every resource in one table, keyed like the other backends: (type, mesh, name); global-scoped
-- types have mesh ''. `version` is the optimistic-lock counter the API shows; `revision` is a
-- database-wide counter that changes on every write, so an instance that missed notifications
-- can tell which rows changed even when a resource was deleted and created again at version 1.
CREATE SEQUENCE resource_revisions;

CREATE TABLE resources (
    type text NOT NULL,
    mesh text NOT NULL,
    name text NOT NULL,
    version bigint NOT NULL,
    revision bigint NOT NULL DEFAULT nextval('resource_revisions'),
    spec text NOT NULL,
    labels jsonb NOT NULL DEFAULT '{}',
    owner_type text,
    owner_mesh text,
    owner_name text,
    -- A mesh-scoped row points at its Mesh (type 'Mesh', mesh ''); global rows point nowhere.
    mesh_type text GENERATED ALWAYS AS (CASE WHEN mesh <> '' THEN 'Mesh' END) STORED,
    mesh_mesh text GENERATED ALWAYS AS (CASE WHEN mesh <> '' THEN '' END) STORED,
    creation_time timestamptz NOT NULL,
    modification_time timestamptz NOT NULL,
    PRIMARY KEY (type, mesh, name),
    CONSTRAINT resources_owner_fk FOREIGN KEY (owner_type, owner_mesh, owner_name)
        REFERENCES resources (type, mesh, name) ON DELETE CASCADE,
    CONSTRAINT resources_mesh_fk FOREIGN KEY (mesh_type, mesh_mesh, mesh)
        REFERENCES resources (type, mesh, name) ON DELETE CASCADE
);

CREATE INDEX resources_owner ON resources (owner_type, owner_mesh, owner_name);
CREATE INDEX resources_mesh ON resources (mesh_type, mesh_mesh, mesh);

-- Every write tells the other instances which resource changed, in the writing transaction (so
-- only committed changes are announced). The payload is the key only: Postgres limits a payload
-- to 8000 bytes (Kuma #1403), and a listener reads the row anyway.
CREATE FUNCTION meshzone_notify_resource() RETURNS trigger AS $$
DECLARE
    row resources;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row := OLD;
    ELSE
        row := NEW;
    END IF;
    PERFORM pg_notify('meshzone_resources',
        json_build_object('type', row.type, 'mesh', row.mesh, 'name', row.name)::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER resources_notify AFTER INSERT OR UPDATE OR DELETE ON resources
    FOR EACH ROW EXECUTE FUNCTION meshzone_notify_resource();
