-- The assessment figures' counters (issue 21). See migrations/sqlite/0007_figure_counts.sql for
-- the meaning of each column. With several nodes each adds to its own stripe, so that two
-- nodes' batches never wait on one counter row.
CREATE TABLE figure_counts (
    grain       TEXT COLLATE "C" NOT NULL,
    period      TEXT COLLATE "C" NOT NULL,
    side        TEXT COLLATE "C" NOT NULL,
    region      TEXT COLLATE "C" NOT NULL,
    department  TEXT COLLATE "C" NOT NULL,
    office      TEXT COLLATE "C" NOT NULL,
    figure      TEXT COLLATE "C" NOT NULL,
    stripe      BIGINT NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (grain, period, side, region, department, office, figure, stripe)
);

CREATE TABLE figure_counts_built (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    at          BIGINT NOT NULL,
    instances   BIGINT NOT NULL
);
