-- The organisation and the catalogs (issue 13): one row per version of each kind, with who
-- imported it, when, the comment, what changed and the rows themselves (JSON). The newest
-- version of each kind is in force.
CREATE TABLE catalog_versions (
    kind        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    at          INTEGER NOT NULL,
    comment     TEXT NOT NULL,
    changes     TEXT NOT NULL,   -- JSON: {added, removed, changed}
    rows        TEXT NOT NULL,   -- JSON array of objects, in key order
    PRIMARY KEY (kind, version)
) WITHOUT ROWID;

-- Which instances concern which enterprise (or person): written by the writer when an instance
-- of a workflow that declares an `index` starts. The enterprise profile and the spot checks'
-- populations read this, not the instances' JSON variables.
CREATE TABLE subjects (
    code        TEXT NOT NULL,   -- Unified Social Credit Code or citizen ID number
    instance_id TEXT NOT NULL,
    workflow    TEXT NOT NULL,
    item        TEXT NOT NULL,   -- the handling item, or ''
    grade       TEXT NOT NULL,   -- the credit grade when the instance started, or ''
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (code, instance_id)
) WITHOUT ROWID;
CREATE INDEX subjects_by_item ON subjects (workflow, item);

-- Instances started before this migration.
INSERT INTO subjects (code, instance_id, workflow, item, grade, created_at)
SELECT json_extract(vars, '$.applicant_code'), id, workflow,
       coalesce(json_extract(vars, '$.handling_item'), ''), coalesce(json_extract(vars, '$.credit_grade'), ''),
       created_at
FROM instances
WHERE workflow IN ('approval_case', 'supervision_task') AND json_extract(vars, '$.applicant_code') IS NOT NULL;
