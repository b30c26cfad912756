-- Data lifecycle (issue 25): closed cases written to an archive file and removed, one row each.
-- A case asked for after that is answered "archived, in FILE" instead of "not found", and a
-- new case may not take its id. The statistics counters (figure_counts) are not touched: the
-- figures of archived years stay as they were.
CREATE TABLE archived (
    id          TEXT COLLATE "C" PRIMARY KEY,
    state       TEXT NOT NULL,
    instances   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    closed_at   BIGINT NOT NULL,
    archive     TEXT NOT NULL,
    archived_at BIGINT NOT NULL
);

-- What the archived cases counted in the statistics, per day they started, group and figure:
-- the counters keep counting them, and `admin verify` (which counts the rows) adds these to
-- what it finds, so that counters and rows still reconcile.
CREATE TABLE archived_counts (
    period      TEXT NOT NULL,     -- 'YYYY-MM-DD'
    side        TEXT NOT NULL,
    region      TEXT NOT NULL,
    department  TEXT NOT NULL,
    office      TEXT NOT NULL,
    figure      TEXT NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (period, side, region, department, office, figure)
);
