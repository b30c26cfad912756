-- A period's instances without reading every other (issue 24): GetStatistics with ids (a
-- figure clicked through to its cases) reads one workflow's instances started in the period.
CREATE INDEX instances_workflow_created ON instances (workflow, created_at);
