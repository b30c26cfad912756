-- A batch commits in one statement (issue 23): its data-modifying CTEs run in the statement's
-- own transaction, so a batch whose timer fires depend on leases that moved on must fail the
-- statement itself. The statement hands this the shards it no longer holds; any, and the
-- whole batch rolls back with SQLSTATE SG001 (the shards, comma-separated, in DETAIL).
CREATE FUNCTION shenguan_fenced(lost BIGINT[]) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(lost) > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'SG001', MESSAGE = 'shard leases moved on',
            DETAIL = array_to_string(lost, ',');
    END IF;
    RETURN true;
END
$$;
