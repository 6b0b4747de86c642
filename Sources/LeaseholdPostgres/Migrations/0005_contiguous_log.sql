-- The event log of a handler has no gaps: the database itself refuses a row whose predecessor is
-- missing, so no writer (a stale one, a bug, a hand-made repair) can leave a hole that a stream
-- reader would skip over. Checked after each statement (a checkpoint inserts several rows in one
-- statement), one primary-key probe per row.

CREATE FUNCTION leasehold_log_contiguous() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.sequence > 0 AND NOT EXISTS (
        SELECT 1 FROM event_log WHERE handler_id = NEW.handler_id AND sequence = NEW.sequence - 1)
    THEN
        RAISE EXCEPTION 'event log of handler % would skip sequence %', NEW.handler_id, NEW.sequence - 1
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
-- split
CREATE CONSTRAINT TRIGGER event_log_contiguous AFTER INSERT ON event_log
    FOR EACH ROW EXECUTE FUNCTION leasehold_log_contiguous();
