-- A timeline lists the messages each step wrote: find them by instance without scanning the
-- outbox (which holds every message until it is pruned).
CREATE INDEX outbox_instance ON outbox (instance_id, seq);
