-- What a stream consumer wants (issue 22): the channels of its last Subscribe, written
-- ",a,b," (channel names are letters, digits and '_'), or '' for every channel. Retention
-- removes a message only once every consumer that wants its channel has acknowledged it.
ALTER TABLE consumers ADD COLUMN channels TEXT NOT NULL DEFAULT '';

-- Typed records (issue 22): what every receiver gets beside the text — the record's type, the
-- version of its schema and its fields as JSON text. NULL on messages written before.
ALTER TABLE outbox ADD COLUMN kind TEXT;
ALTER TABLE outbox ADD COLUMN schema_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN data TEXT;
