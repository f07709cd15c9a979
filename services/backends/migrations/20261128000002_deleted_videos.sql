-- Ids of videos their owners deleted, so a worker that later receives the job of one can
-- tell "deleted on purpose" (nothing to do) from "never existed" (a bad message).
CREATE TABLE deleted_videos (
    id         uuid PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
