-- Calendar lifecycle: calendars live in the database, versioned, and working-day timers carry
-- what a new calendar needs to re-plan them.

-- Every calendar file ever loaded, in load order. The calendar set of generation g is every
-- file up to g, a later file replacing an earlier one with the same key. A new database is
-- seeded with the files compiled into the binary; after that only what is loaded here counts.
CREATE TABLE calendar_files (
    generation  INTEGER PRIMARY KEY NOT NULL,
    key         TEXT NOT NULL,      -- 'year:2027' or 'region:320700'
    version     INTEGER NOT NULL,   -- 1, 2, … per key
    name        TEXT NOT NULL,      -- the file name it was loaded under
    text        TEXT NOT NULL,      -- the TOML as loaded
    source      TEXT NOT NULL,      -- the notice it was transcribed from
    loaded_by   TEXT NOT NULL,
    loaded_at   INTEGER NOT NULL
);

-- A re-plan in progress: working-day timers depending on a day in [first, last] are recomputed
-- in batches, in (instance_id, name) order; `after_*` is how far it got. A re-plan whose row
-- says done = 0 resumes at start.
CREATE TABLE replans (
    generation      INTEGER PRIMARY KEY NOT NULL,
    first           TEXT NOT NULL,
    last            TEXT NOT NULL,
    label           TEXT NOT NULL,
    after_instance  TEXT,
    after_name      TEXT,
    moved           INTEGER NOT NULL DEFAULT 0,
    done            INTEGER NOT NULL DEFAULT 0
);

-- The calendar generation each history entry was computed with (0: before this migration,
-- meaning the seed).
ALTER TABLE history ADD COLUMN calendar INTEGER NOT NULL DEFAULT 0;

-- The working-day dates a timer's due depends on (NULL: it counted no working days), and
-- whether one of them is in a provisional year.
ALTER TABLE timers ADD COLUMN plan_first TEXT;
ALTER TABLE timers ADD COLUMN plan_last TEXT;
ALTER TABLE timers ADD COLUMN provisional INTEGER NOT NULL DEFAULT 0;
CREATE INDEX timers_provisional ON timers (instance_id) WHERE provisional = 1;
