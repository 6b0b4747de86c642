-- Retention: finished handlers (completed, failed, cancelled) are deleted with their log and
-- inbox (ON DELETE CASCADE) once older than the replicas' --retention. The sweep reads this
-- index, oldest first, in small batches.
CREATE INDEX handlers_finished ON handlers (completed_at) WHERE status <> 'running';
