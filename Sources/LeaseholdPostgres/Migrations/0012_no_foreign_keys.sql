-- The child tables (event_log, inbox, lease_history) lose their foreign keys to handlers. Every
-- row of them is written by a statement that updates or locks its handler row first (a fenced
-- checkpoint, a claim, an inbox append under FOR SHARE, a cancel under FOR UPDATE), so a row
-- without its handler cannot be written; the keys only re-checked that, one SPI query per
-- inserted row: six per echo `run` of the 14.7 statements counted per run. Deletes (purge,
-- retention) now remove the children themselves, in the same transaction as the handler row:
-- see `Statements.delete` and `Statements.purgeFinished`.
ALTER TABLE event_log DROP CONSTRAINT event_log_handler_id_fkey;
-- split
ALTER TABLE inbox DROP CONSTRAINT inbox_handler_id_fkey;
-- split
ALTER TABLE lease_history DROP CONSTRAINT lease_history_handler_id_fkey;
