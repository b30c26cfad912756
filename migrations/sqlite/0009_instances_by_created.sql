-- A period's instances without reading every other (issue 24): GetStatistics with ids (a
-- figure clicked through to its cases) reads one workflow's instances started in the period.
-- created_at only grows, so new entries land at the end of the index.
CREATE INDEX instances_workflow_created ON instances (workflow, created_at);
