-- A write that must change exactly one row is checked by the server, in the statement
-- itself (store/postgres_messages.py): this raises the error that aborts its transaction,
-- with the code DSP01 and, as its detail, the number the statement was given. A lost race
-- (another writer changed the row first) is the usual cause.
CREATE OR REPLACE FUNCTION dispatchd_expect(ok boolean, what text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'DSP01',
            MESSAGE = 'dispatchd: a write found its row changed meanwhile',
            DETAIL = what;
    END IF;
    RETURN true;
END
$$;
