-- The organisation and the catalogs (issue 13): one row per version of each kind. See
-- migrations/sqlite/0006_catalogs_and_subjects.sql for the meaning of each column.
CREATE TABLE catalog_versions (
    kind        TEXT COLLATE "C" NOT NULL,
    version     BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    at          BIGINT NOT NULL,
    comment     TEXT NOT NULL,
    changes     TEXT NOT NULL,
    rows        TEXT NOT NULL,
    PRIMARY KEY (kind, version)
);

CREATE TABLE subjects (
    code        TEXT COLLATE "C" NOT NULL,
    instance_id TEXT COLLATE "C" NOT NULL,
    workflow    TEXT COLLATE "C" NOT NULL,
    item        TEXT COLLATE "C" NOT NULL,
    grade       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (code, instance_id)
);
CREATE INDEX subjects_by_item ON subjects (workflow, item);

INSERT INTO subjects (code, instance_id, workflow, item, grade, created_at)
SELECT vars->>'applicant_code', id, workflow, coalesce(vars->>'handling_item', ''), coalesce(vars->>'credit_grade', ''),
       created_at
FROM instances
WHERE workflow IN ('approval_case', 'supervision_task') AND vars ? 'applicant_code';
