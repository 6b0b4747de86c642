#define _GNU_SOURCE
#include "crash_report.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// 16,384 slots: the most step runs one replica has in flight at once (handlers × each one's
// concurrent steps) is far below that in every benchmark and drill; past it the report says
// "all" and the watcher suspects every handler the dead replica owned.
#define SLOTS 16384
#define ID_BYTES 128
// How long the dying process waits for the watcher to say the report is recorded. The watcher
// must record it before this process ends: where this process is a container's PID 1 (or a
// systemd unit's main process), its end kills the watcher too.
#define ACK_WAIT_MS 10000
// Each thread that runs a step gets an alternate signal stack, so that a stack overflow in a
// step (the likeliest trap of user code) still reaches the handler instead of a silent death.
#define ALT_STACK_BYTES (64 * 1024)

struct slot {
    atomic_int state;  // 0 free, 1 being written, 2 running
    unsigned char length;
    char id[ID_BYTES];
};

static struct slot slots[SLOTS];
static atomic_int overflowed;
static atomic_int next_hint;
static atomic_int report_fd = -1;
static atomic_int ack_fd = -1;
static int dev_null = -1;
static __thread int has_alt_stack;
static pthread_key_t alt_stack_key;
static pthread_once_t alt_stack_once = PTHREAD_ONCE_INIT;

static const int fatal_signals[] = {SIGILL, SIGTRAP, SIGABRT, SIGSEGV, SIGBUS, SIGFPE};
#define FATAL_COUNT (sizeof(fatal_signals) / sizeof(fatal_signals[0]))
static struct sigaction previous[FATAL_COUNT];
static atomic_int reporting;
static atomic_int reported;

static void write_all(int fd, const char *bytes, size_t length) {
    while (length > 0) {
        ssize_t written = write(fd, bytes, length);
        if (written < 0) {
            if (errno == EINTR) continue;
            return;
        }
        bytes += written;
        length -= (size_t)written;
    }
}

static size_t format_int(char *out, int value) {
    char digits[16];
    size_t count = 0;
    unsigned int magnitude = value < 0 ? (unsigned int)(-value) : (unsigned int)value;
    do {
        digits[count++] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude > 0 && count < sizeof(digits));
    size_t length = 0;
    if (value < 0) out[length++] = '-';
    while (count > 0) out[length++] = digits[--count];
    return length;
}

/// Releases every descriptor from 3 up but `keep` (and /dev/null's): each is pointed at /dev/null
/// with dup2, which closes the socket behind it (the port and the database sessions are free)
/// while the number stays taken, so that threads still running meanwhile never get a new socket
/// under a number the event loop still holds.
static void release_from_three_except(int keep) {
    long limit = sysconf(_SC_OPEN_MAX);
    if (limit < 0 || limit > 65536) limit = 65536;
    for (int fd = 3; fd < limit; fd++) {
        if (fd == keep || fd == dev_null) continue;
        if (dev_null >= 0) {
            if (fcntl(fd, F_GETFD) != -1) dup2(dev_null, fd);
        } else {
            close(fd);
        }
    }
}

/// Waits (bounded) until the watcher answers that the report is recorded, or is gone.
static void await_ack(int fd) {
    if (fd < 0) return;
    struct pollfd waiting = {.fd = fd, .events = POLLIN};
    int left = ACK_WAIT_MS;
    while (left > 0) {
        int ready = poll(&waiting, 1, left > 100 ? 100 : left);
        if (ready > 0) return;  // the answer, or the watcher's end (EOF or error)
        if (ready < 0 && errno != EINTR) return;
        left -= 100;
    }
}

static void on_fatal_signal(int signal_number, siginfo_t *info, void *context) {
    (void)context;
    if (atomic_exchange(&reporting, 1) == 0) {
        int fd = atomic_load(&report_fd);
        int ack = atomic_load(&ack_fd);
        if (fd >= 0) {
            char line[ID_BYTES + 16];
            size_t length = 0;
            memcpy(line, "crash ", 6);
            length = 6;
            length += format_int(line + length, signal_number);
            line[length++] = '\n';
            write_all(fd, line, length);
            if (atomic_load(&overflowed) > 0) write_all(fd, "all\n", 4);
            for (int index = 0; index < SLOTS; index++) {
                if (atomic_load(&slots[index].state) != 2) continue;
                memcpy(line, "step ", 5);
                length = 5;
                memcpy(line + length, slots[index].id, slots[index].length);
                length += slots[index].length;
                line[length++] = '\n';
                write_all(fd, line, length);
            }
            write_all(fd, "end\n", 4);
        }
        // The port and the database sessions go now; only the watcher's answer stays open.
        release_from_three_except(ack);
        await_ack(ack);
        atomic_store(&reported, 1);
    } else {
        // Another thread is reporting: wait for it (bounded), so that this fault does not end
        // the process with half a report written.
        struct timespec pause = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};
        for (int waited = 0; waited < (ACK_WAIT_MS / 10) + 100 && !atomic_load(&reported); waited++) {
            nanosleep(&pause, NULL);
        }
    }
    for (size_t index = 0; index < FATAL_COUNT; index++) {
        if (fatal_signals[index] == signal_number) {
            sigaction(signal_number, &previous[index], NULL);
            break;
        }
    }
    // A fault re-executes the faulting instruction on return and meets the previous handler;
    // a signal that was sent (abort, kill) is sent again. (x86's int3 leaves the instruction
    // behind it, so SIGTRAP is sent again too.)
    if (info == NULL || info->si_code <= 0 || signal_number == SIGTRAP) raise(signal_number);
}

int lh_crash_report_install(int fd, int acknowledgement_fd) {
    atomic_store(&report_fd, fd);
    atomic_store(&ack_fd, acknowledgement_fd);
    // Once per process: a second install would save this handler as its own "previous" one.
    static atomic_int installed;
    if (atomic_exchange(&installed, 1) != 0) return 0;
    signal(SIGPIPE, SIG_IGN);  // a watcher that is gone must not turn the report into SIGPIPE
    dev_null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (size_t index = 0; index < FATAL_COUNT; index++) {
        struct sigaction action;
        memset(&action, 0, sizeof(action));
        action.sa_sigaction = on_fatal_signal;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        if (sigaction(fatal_signals[index], &action, &previous[index]) != 0) return -1;
    }
    return 0;
}

/// A thread's alternate stack goes with the thread (pooled threads retire when idle).
static void free_alt_stack(void *memory) {
    stack_t off = {.ss_sp = NULL, .ss_size = 0, .ss_flags = SS_DISABLE};
    sigaltstack(&off, NULL);
    free(memory);
}

static void make_alt_stack_key(void) { pthread_key_create(&alt_stack_key, free_alt_stack); }

static void ensure_alt_stack(void) {
    if (has_alt_stack) return;
    has_alt_stack = 1;
    stack_t current;
    if (sigaltstack(NULL, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return;  // the runtime's own
    pthread_once(&alt_stack_once, make_alt_stack_key);
    void *memory = malloc(ALT_STACK_BYTES);
    if (memory == NULL) return;
    stack_t stack = {.ss_sp = memory, .ss_size = ALT_STACK_BYTES, .ss_flags = 0};
    if (sigaltstack(&stack, NULL) != 0) {
        free(memory);
        return;
    }
    pthread_setspecific(alt_stack_key, memory);
}

int lh_step_began(const char *handler_id, size_t length) {
    ensure_alt_stack();
    if (length > ID_BYTES) length = ID_BYTES;
    int start = atomic_fetch_add(&next_hint, 1) % SLOTS;
    if (start < 0) start += SLOTS;
    for (int probe = 0; probe < SLOTS; probe++) {
        int index = (start + probe) % SLOTS;
        int expected = 0;
        if (atomic_compare_exchange_strong(&slots[index].state, &expected, 1)) {
            memcpy(slots[index].id, handler_id, length);
            slots[index].length = (unsigned char)length;
            atomic_store(&slots[index].state, 2);
            return index;
        }
    }
    atomic_fetch_add(&overflowed, 1);
    return -1;
}

void lh_step_ended(int slot) {
    if (slot < 0) {
        atomic_fetch_sub(&overflowed, 1);
        return;
    }
    if (slot >= SLOTS) return;
    atomic_store(&slots[slot].state, 0);
}

int lh_steps_running(void) {
    int count = 0;
    for (int index = 0; index < SLOTS; index++) {
        if (atomic_load(&slots[index].state) == 2) count++;
    }
    return count;
}

int lh_die_with_parent(int parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    return getppid() == parent ? 0 : -1;
}
