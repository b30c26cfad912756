-- The assessment figures' counters (issue 21): GetStatistics sums these instead of reading
-- every case and task of the period. The writer adds to them in the transaction of each
-- transition (engine/src/domain/figures.rs says which figures a row counts in); a row per
-- figure of a group (side, region, department, office) per day and per month of the day the
-- instance started, in China Standard Time. `stripe` spreads one counter over the nodes that
-- write it (always 0 on SQLite); a reader sums the stripes.
CREATE TABLE figure_counts (
    grain       TEXT NOT NULL,     -- 'day' | 'month'
    period      TEXT NOT NULL,     -- 'YYYY-MM-DD' | 'YYYY-MM'
    side        TEXT NOT NULL,     -- 'supervision' | 'approval'
    region      TEXT NOT NULL,
    department  TEXT NOT NULL,
    office      TEXT NOT NULL,     -- '' for approval figures
    figure      TEXT NOT NULL,
    stripe      INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (grain, period, side, region, department, office, figure, stripe)
) WITHOUT ROWID;

-- One row once the counters hold every instance: the engine counts the instances that were
-- there before this migration at its next start (the rule is Rust, not SQL), and writes this
-- row in the same transaction.
CREATE TABLE figure_counts_built (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    at          INTEGER NOT NULL,
    instances   INTEGER NOT NULL
);
