-- Expired request ids are pruned by age (oldest first, a bounded number at a time) from the
-- writer: without this index each prune would scan the whole table while commits wait.
CREATE INDEX idempotency_created ON idempotency (created_at);
