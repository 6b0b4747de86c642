-- Crash containment (docs/design.md, "A step that ends its process"). When a replica dies of a
-- fault (a trap in a step: an overflow, a failed precondition), its crash watcher — a child
-- process that outlives it — records here each handler that had a step running in it and that
-- the dead replica still owned. Such a handler is a suspect: claims answer so, and its next owner
-- runs its steps each in a process of its own until it has got past them; one that ends that
-- process too is quarantined (failed to clients, its state kept for an operator's release).
--
-- A row per crash and handler, for operators (which replica, which signal, under which token);
-- deleted with the handler (the trigger below), so the table holds only live handlers' crashes.
CREATE TABLE handler_crashes (
    handler_id text NOT NULL,
    run_id     text NOT NULL,
    replica    text NOT NULL,
    token      bigint NOT NULL,
    signal     integer NOT NULL,
    crashed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (handler_id, token)
);
-- split
CREATE OR REPLACE FUNCTION leasehold_delete_children() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_log WHERE handler_id = OLD.id;
    DELETE FROM inbox WHERE handler_id = OLD.id;
    DELETE FROM lease_history WHERE handler_id = OLD.id;
    DELETE FROM handler_crashes WHERE handler_id = OLD.id;
    RETURN NULL;
END
$$;
