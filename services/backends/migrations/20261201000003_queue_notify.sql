-- Wakes a waiting PgQueue receiver as soon as a message becomes visible (sent, released or
-- redriven), instead of at its next poll. The payload is the queue's name. Extending a
-- message's visibility (the worker does it while a job runs) sends nothing.
CREATE FUNCTION queue_messages_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('queue_messages', NEW.queue);
    RETURN NULL;
END
$$;

CREATE TRIGGER queue_messages_notify
    AFTER INSERT OR UPDATE OF visible_at, queue ON queue_messages
    FOR EACH ROW WHEN (NEW.visible_at <= now())
    EXECUTE FUNCTION queue_messages_notify();
