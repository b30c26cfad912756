-- shenguan on SQLite: the durable state of every workflow instance.
-- All instants are UTC milliseconds since the Unix epoch.

-- One row per instance: the current state, folded from its history.
CREATE TABLE instances (
    id          TEXT PRIMARY KEY NOT NULL,
    workflow    TEXT NOT NULL,
    version     INTEGER NOT NULL,
    state       TEXT NOT NULL,
    vars        TEXT NOT NULL,   -- JSON object, typed by the definition's [vars]
    timers      TEXT NOT NULL,   -- JSON object: armed timer name -> {due, event}
    seq         INTEGER NOT NULL, -- number of history entries
    shard       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX instances_workflow_state ON instances (workflow, state);

-- Append-only: every command that changed an instance.
CREATE TABLE history (
    instance_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    request_id  TEXT,
    command     TEXT NOT NULL,   -- JSON: the command as received (replayed by admin verify)
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    armed       TEXT NOT NULL,   -- JSON object: timer name -> due
    cancelled   TEXT NOT NULL,   -- JSON object: timer name -> due it had
    messages    INTEGER NOT NULL,
    handled     INTEGER NOT NULL,
    PRIMARY KEY (instance_id, seq)
) WITHOUT ROWID;

-- Durable timers: the source of truth the in-memory wheel is paged from.
-- The key order (due_at, instance_id, name) is the order timers are loaded and fired in.
CREATE TABLE timers (
    instance_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    due_at      INTEGER NOT NULL,
    event       TEXT NOT NULL,
    shard       INTEGER NOT NULL,
    PRIMARY KEY (instance_id, name)
) WITHOUT ROWID;
CREATE INDEX timers_due ON timers (due_at, instance_id, name);

-- Messages to other systems, written in the transaction that caused them.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL UNIQUE, -- instance:seq:index, for receivers to deduplicate on
    instance_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    channel     TEXT NOT NULL,
    recipient   TEXT,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending', -- pending | delivered | dead
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL
);
CREATE INDEX outbox_pending ON outbox (status, next_attempt_at);

-- Callers' idempotency keys: the same request again gets the first answer.
CREATE TABLE idempotency (
    key         TEXT PRIMARY KEY NOT NULL,
    instance_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, -- hash of the request payload: another payload under a used key is refused
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
