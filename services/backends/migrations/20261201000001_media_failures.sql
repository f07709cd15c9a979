-- How many times ffmpeg ran out of time or was killed on this video. A second time makes
-- the failure permanent: one crafted upload must not hold a worker for every retry.
ALTER TABLE videos ADD COLUMN media_failures integer NOT NULL DEFAULT 0;
