-- The identity of the storage (bucket or folder) this database's video files were last
-- checked against. A worker that finds another one (the database restored onto a new
-- bucket) marks the videos whose files are gone failed, once, then records it.
CREATE TABLE storage_mark (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    storage_id uuid NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT now()
);
