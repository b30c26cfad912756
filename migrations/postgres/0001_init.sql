-- shenguan on PostgreSQL: the same state as the SQLite schema (migrations/sqlite, folded into one
-- file at its fifth migration), plus what several nodes on one database need: shard leases and
-- the nodes that hold them.
--
-- All instants are UTC milliseconds since the Unix epoch (BIGINT), as on SQLite, so that rows mean
-- the same on both backends. Every integer is BIGINT: the engine reads each as i64, one type for
-- both backends. Text that is a key or ordered on is COLLATE "C": the timer loader's horizon
-- compares (due, instance, name) byte-wise in Rust, and the SQL order must be that order whatever
-- locale the cluster was initialised with.

CREATE TABLE instances (
    id          TEXT COLLATE "C" PRIMARY KEY,
    workflow    TEXT NOT NULL,
    version     BIGINT NOT NULL,
    state       TEXT NOT NULL,
    vars        JSONB NOT NULL,       -- typed by the definition's [vars]
    timers      TEXT NOT NULL,        -- JSON object: armed timer name -> {due, event, plan}
    seq         BIGINT NOT NULL,      -- number of history entries
    shard       BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX instances_workflow_state ON instances (workflow, state);

-- Append-only. Its key (instance_id, seq) is also the optimistic-concurrency check: two nodes
-- that decided on the same instance version both write entry seq + 1, and only one can.
CREATE TABLE history (
    instance_id TEXT COLLATE "C" NOT NULL,
    seq         BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    request_id  TEXT,
    command     TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    armed       TEXT NOT NULL,
    cancelled   TEXT NOT NULL,
    messages    BIGINT NOT NULL,
    handled     BOOLEAN NOT NULL,
    calendar    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, seq)
);

CREATE TABLE timers (
    instance_id TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    due_at      BIGINT NOT NULL,
    event       TEXT NOT NULL,
    shard       BIGINT NOT NULL,
    plan_first  TEXT,
    plan_last   TEXT,
    provisional BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (instance_id, name)
);
CREATE INDEX timers_due ON timers (due_at, instance_id, name);
-- A node pages in only the timers of the shards it holds.
CREATE INDEX timers_shard_due ON timers (shard, due_at, instance_id, name);
CREATE INDEX timers_provisional ON timers (instance_id) WHERE provisional;

CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key             TEXT COLLATE "C" NOT NULL UNIQUE,
    instance_id     TEXT COLLATE "C" NOT NULL,
    seq             BIGINT NOT NULL,
    channel         TEXT NOT NULL,
    recipient       TEXT,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    destination     TEXT,
    last_error      TEXT,
    receipt         TEXT,
    delivered_at    BIGINT,
    first_failed_at BIGINT,
    template        TEXT
);
CREATE INDEX outbox_instance ON outbox (instance_id, seq);
CREATE INDEX outbox_push ON outbox (destination, id) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (id) WHERE status = 'dead';
CREATE INDEX outbox_retired ON outbox (id) WHERE status IN ('delivered', 'stream');

CREATE TABLE idempotency (
    key         TEXT COLLATE "C" PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    seq         BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX idempotency_created ON idempotency (created_at);

CREATE TABLE calendar_files (
    generation  BIGINT PRIMARY KEY,
    key         TEXT NOT NULL,
    version     BIGINT NOT NULL,
    name        TEXT NOT NULL,
    text        TEXT NOT NULL,
    source      TEXT NOT NULL,
    loaded_by   TEXT NOT NULL,
    loaded_at   BIGINT NOT NULL
);

CREATE TABLE replans (
    generation      BIGINT PRIMARY KEY,
    first           TEXT NOT NULL,
    last            TEXT NOT NULL,
    label           TEXT NOT NULL,
    after_instance  TEXT COLLATE "C",
    after_name      TEXT COLLATE "C",
    moved           BIGINT NOT NULL DEFAULT 0,
    done            BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE consumers (
    name       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    acked      BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

-- Several nodes: the shard count is fixed when the database is created (every node must use
-- it: a node started with another count is refused), and each shard has one lease.
CREATE TABLE cluster (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    shards  BIGINT NOT NULL
);

-- owner NULL: free. epoch grows by one at every change of owner; a transaction that fires a
-- timer of the shard checks, under a share lock on this row, that the epoch is still the one its
-- node took the lease at (fencing). expires_at is the database's clock, in ms.
CREATE TABLE shard_leases (
    shard       BIGINT PRIMARY KEY,
    owner       TEXT,
    epoch       BIGINT NOT NULL DEFAULT 0,
    expires_at  BIGINT NOT NULL DEFAULT 0
);

-- Live nodes, by heartbeat: the fair share of shards is the count divided by the live nodes.
CREATE TABLE nodes (
    name         TEXT PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL,
    started_at   BIGINT NOT NULL
);
