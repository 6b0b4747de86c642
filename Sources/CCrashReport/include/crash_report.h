#ifndef LEASEHOLD_CRASH_REPORT_H
#define LEASEHOLD_CRASH_REPORT_H

#include <stddef.h>

/// What a replica process knows at the moment it dies of a fault: which handlers had a step
/// running. Swift cannot catch a trap, so this lives in C: a fixed table of slots filled and
/// emptied around every step run, and a signal handler that writes the table to a pipe (the
/// crash watcher's, a child process that outlives this one) with async-signal-safe calls only.

/// Installs the handler for SIGILL, SIGTRAP, SIGABRT, SIGSEGV, SIGBUS and SIGFPE. On such a
/// signal it writes "crash <signal>\n" then "step <handler id>\n" per occupied slot (or
/// "all\n" when a step could not get a slot) to `report_fd`, closes every descriptor from 3 up
/// (the listening socket and the database sessions go at once, and nothing the runtime's
/// backtracer spawns next inherits them), and hands the signal to the handler that was
/// installed before (the Swift backtracer, or the default action). A later call only changes
/// `report_fd` (a new watcher). Ignores SIGPIPE. Returns 0, or -1 with errno.
int lh_crash_report_install(int report_fd);

/// Marks a step of `handler_id` (at most 128 bytes are kept) as running; returns the slot to
/// pass to `lh_step_ended`, or -1 when every slot is taken (the report then says "all").
int lh_step_began(const char *handler_id, size_t length);

/// Marks the step in `slot` as ended (a no-op for -1).
void lh_step_ended(int slot);

/// How many slots are occupied right now (tests).
int lh_steps_running(void);

#endif
