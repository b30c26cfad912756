-- Outbound delivery: each message is routed, when written, to the push destination its channel
-- is configured for (`destination`; `status = 'stream'` when none: the message is only served to
-- EventsService subscribers). The dispatcher of a destination walks its pending messages in id
-- order through `outbox_push`; what it learns is written back by the writer.
ALTER TABLE outbox ADD COLUMN destination TEXT;
ALTER TABLE outbox ADD COLUMN last_error TEXT;    -- the last failed attempt's reason
ALTER TABLE outbox ADD COLUMN receipt TEXT;       -- the receiver's answer to the delivery (an SMS gateway's message id)
ALTER TABLE outbox ADD COLUMN delivered_at INTEGER; -- wall-clock ms of delivery, or of the dead letter
ALTER TABLE outbox ADD COLUMN first_failed_at INTEGER; -- wall-clock ms of the first failed attempt: the age a dead letter is judged by
ALTER TABLE outbox ADD COLUMN template TEXT;      -- the name configured templates know the message by
-- Messages written before routing existed had no destination: they stay readable by the stream.
UPDATE outbox SET status = 'stream' WHERE status = 'pending';
DROP INDEX outbox_pending;
CREATE INDEX outbox_push ON outbox (destination, id) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (id) WHERE status = 'dead';

-- Stream consumers (EventsService.Subscribe): a durable cursor per named consumer. `acked` is
-- the outbox id up to which the consumer has acknowledged; it resumes after it.
CREATE TABLE consumers (
    name       TEXT PRIMARY KEY NOT NULL,
    owner      TEXT NOT NULL, -- the subject that created it; no one else may use or move it
    acked      INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
