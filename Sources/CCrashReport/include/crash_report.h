#ifndef LEASEHOLD_CRASH_REPORT_H
#define LEASEHOLD_CRASH_REPORT_H

#include <stddef.h>

/// What a replica process knows at the moment it dies of a fault: which handlers had a step
/// running. Swift cannot catch a trap, so this lives in C: a fixed table of slots filled and
/// emptied around every step run, and a signal handler that writes the table to a pipe (the
/// crash watcher's, a child process that outlives this one) with async-signal-safe calls only.

/// Installs the handler for SIGILL, SIGTRAP, SIGABRT, SIGSEGV, SIGBUS and SIGFPE. On such a
/// signal it writes "crash <signal>\n" then "step <handler id>\n" per occupied slot (or "all\n"
/// when a step could not get a slot) and "end\n" to `report_fd`; releases every descriptor from 3
/// up but `acknowledgement_fd` (pointed at /dev/null: the listening socket and the database
/// sessions go at once, the numbers stay taken, and
/// nothing the runtime's backtracer spawns next inherits them); waits, at most 10 s, until the
/// watcher answers on `acknowledgement_fd` (or closes it) that the report is recorded — a process
/// that is a container's PID 1 takes the watcher with it when it ends; then hands the signal to
/// the handler installed before (the Swift backtracer, or the default action). A thread that
/// faults while another reports waits for that report. A later call only changes the two
/// descriptors (a new watcher). Ignores SIGPIPE. Returns 0, or -1 with errno.
int lh_crash_report_install(int report_fd, int acknowledgement_fd);

/// Marks a step of `handler_id` (at most 128 bytes are kept) as running; returns the slot to
/// pass to `lh_step_ended`, or -1 when every slot is taken (the report then says "all"). Gives
/// the calling thread an alternate signal stack the first time (a stack overflow's SIGSEGV can
/// only be handled on one).
int lh_step_began(const char *handler_id, size_t length);

/// Marks the step in `slot` as ended (a no-op for -1).
void lh_step_ended(int slot);

/// How many slots are occupied right now (tests).
int lh_steps_running(void);

/// This process gets SIGKILL when the thread that started it ends (an isolated step dies with its
/// replica). Returns -1 when its parent is no longer `parent` (gone already), else 0.
int lh_die_with_parent(int parent);

#endif
