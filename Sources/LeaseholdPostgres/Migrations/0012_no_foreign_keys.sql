-- The child tables (event_log, inbox, lease_history) lose their foreign keys to handlers. Every
-- row of them is written by a statement that updates or locks its handler row first (a fenced
-- checkpoint, a claim, an inbox append under FOR SHARE, a cancel under FOR UPDATE), so a row
-- without its handler cannot be written; the keys only re-checked that, one SPI query per
-- inserted row: six per echo `run` (of 14.7 statements counted per run).
--
-- What ON DELETE CASCADE did is kept by a trigger on handlers, which costs nothing on the hot
-- path (handlers are deleted only by a purge or the retention sweep) and keeps a replica that
-- still runs the previous version correct during a rolling upgrade. Like the cascade, its
-- statements take a fresh snapshot each, so they also delete a child row committed while the
-- delete waited for the handler row's lock; a new run of the same id cannot insert before the
-- delete commits (its INSERT waits on the deleted key).
ALTER TABLE event_log DROP CONSTRAINT event_log_handler_id_fkey;
-- split
ALTER TABLE inbox DROP CONSTRAINT inbox_handler_id_fkey;
-- split
ALTER TABLE lease_history DROP CONSTRAINT lease_history_handler_id_fkey;
-- split
CREATE FUNCTION leasehold_delete_children() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_log WHERE handler_id = OLD.id;
    DELETE FROM inbox WHERE handler_id = OLD.id;
    DELETE FROM lease_history WHERE handler_id = OLD.id;
    RETURN NULL;
END
$$;
-- split
CREATE TRIGGER handlers_delete_children AFTER DELETE ON handlers
    FOR EACH ROW EXECUTE FUNCTION leasehold_delete_children();
