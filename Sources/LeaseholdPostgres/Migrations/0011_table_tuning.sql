-- Storage and autovacuum settings per table, chosen from the soak (bench/soak; figures in
-- bench/results/soak.md and soak-untuned.md, and the README's "Running for weeks").
--
-- handlers: a running handler's row is updated at every checkpoint (snapshot, last sequence,
-- updated_at) without changing an indexed column, so each such update can be HOT (no index
-- writes, no index bloat) if its page has room. Rows are inserted into the table's last pages,
-- which a plain heap fills to 100 %: the first checkpoints of a new handler then find no room and
-- go to another page. A fillfactor of 70 leaves room on every page for those updates. The table
-- is small (bounded by the retention) and every row churns (created, checkpointed, finished,
-- deleted): it is vacuumed when 200 + 2 % of its rows are dead, without cost-based sleeps.
--
-- event_log, inbox, lease_history: appended, then deleted with their handler after the retention
-- (the inbox row is also marked consumed). Vacuumed at 5 % dead rather than 20 %, and after
-- inserts, so that index-only scans and the free space map keep up with the churn.
--
-- These are storage parameters only (SHARE UPDATE EXCLUSIVE, no rewrite): existing pages keep
-- their fill until rows move; a cluster that wants them at once may VACUUM FULL in a quiet hour.
ALTER TABLE handlers SET (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 200,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);
-- split
ALTER TABLE event_log SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
-- split
ALTER TABLE inbox SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
-- split
ALTER TABLE lease_history SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
