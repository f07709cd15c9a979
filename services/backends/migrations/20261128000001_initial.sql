-- Users, videos, votes, and the PostgreSQL-backed job queue.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    password_hash text NOT NULL,
    first_name    text NOT NULL,
    last_name     text NOT NULL,
    city          text NOT NULL,
    country       text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Emails are compared case-insensitively: "Ana@x.com" and "ana@x.com" are one account.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE videos (
    id           uuid PRIMARY KEY,
    owner_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title        text NOT NULL,
    status       text NOT NULL DEFAULT 'uploaded'
                 CHECK (status IN ('uploaded', 'processing', 'processed', 'failed')),
    error        text,
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    -- Kept in step with the votes table by the same transaction that inserts a vote, so the
    -- public list never has to count votes.
    vote_count   bigint NOT NULL DEFAULT 0
);
CREATE INDEX videos_owner_idx ON videos (owner_id, uploaded_at DESC);
CREATE INDEX videos_public_idx ON videos (processed_at DESC, id) WHERE status = 'processed';

CREATE TABLE votes (
    video_id   uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- One vote per user per video, enforced here rather than by a read-then-write.
    PRIMARY KEY (video_id, user_id)
);

-- The local job queue, with SQS semantics: a received message is invisible until
-- `visible_at`; every receive bumps `receive_count` and issues a fresh receipt; a message
-- received more than the queue's max_receives times moves to `<queue>-dlq`.
CREATE TABLE queue_messages (
    id            bigserial PRIMARY KEY,
    queue         text NOT NULL,
    body          text NOT NULL,
    sent_at       timestamptz NOT NULL DEFAULT now(),
    visible_at    timestamptz NOT NULL DEFAULT now(),
    receive_count integer NOT NULL DEFAULT 0,
    receipt       uuid
);
CREATE INDEX queue_messages_ready_idx ON queue_messages (queue, visible_at, id);
