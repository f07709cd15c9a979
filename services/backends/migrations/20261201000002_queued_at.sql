-- When the upload's job was queued. An upload records its video first (queued_at NULL),
-- then stores the file and queues the job, then sets this; a video still without it long
-- after was cut off by a crash, and its row and file are swept away. Rows written any
-- other way (and every row before this column) count as queued.
ALTER TABLE videos ADD COLUMN queued_at timestamptz DEFAULT now();
CREATE INDEX videos_pending_idx ON videos (uploaded_at) WHERE queued_at IS NULL;
