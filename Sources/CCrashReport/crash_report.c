#define _GNU_SOURCE
#include "crash_report.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

// 16,384 slots: the most step runs one replica has in flight at once (handlers × each one's
// concurrent steps) is far below that in every benchmark and drill; past it the report says
// "all" and the watcher suspects every handler the dead replica owned.
#define SLOTS 16384
#define ID_BYTES 128

struct slot {
    atomic_int state;  // 0 free, 1 being written, 2 running
    unsigned char length;
    char id[ID_BYTES];
};

static struct slot slots[SLOTS];
static atomic_int overflowed;
static atomic_int next_hint;
static int report_fd = -1;

static const int fatal_signals[] = {SIGILL, SIGTRAP, SIGABRT, SIGSEGV, SIGBUS, SIGFPE};
#define FATAL_COUNT (sizeof(fatal_signals) / sizeof(fatal_signals[0]))
static struct sigaction previous[FATAL_COUNT];
static atomic_int reporting;

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

static void close_from_three(void) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0) == 0) return;
#endif
    long limit = sysconf(_SC_OPEN_MAX);
    if (limit < 0 || limit > 65536) limit = 65536;
    for (int fd = 3; fd < limit; fd++) close(fd);
}

static void on_fatal_signal(int signal_number, siginfo_t *info, void *context) {
    (void)info;
    (void)context;
    // The first fault reports; a fault while reporting (or in another thread at once) goes
    // straight on to the previous handler.
    if (atomic_exchange(&reporting, 1) == 0 && report_fd >= 0) {
        char line[ID_BYTES + 16];
        size_t length = 0;
        memcpy(line, "crash ", 6);
        length = 6;
        length += format_int(line + length, signal_number);
        line[length++] = '\n';
        write_all(report_fd, line, length);
        if (atomic_load(&overflowed) > 0) write_all(report_fd, "all\n", 4);
        for (int index = 0; index < SLOTS; index++) {
            if (atomic_load(&slots[index].state) != 2) continue;
            memcpy(line, "step ", 5);
            length = 5;
            memcpy(line + length, slots[index].id, slots[index].length);
            length += slots[index].length;
            line[length++] = '\n';
            write_all(report_fd, line, length);
        }
        write_all(report_fd, "end\n", 4);
        close_from_three();
    }
    for (size_t index = 0; index < FATAL_COUNT; index++) {
        if (fatal_signals[index] == signal_number) {
            sigaction(signal_number, &previous[index], NULL);
            break;
        }
    }
    // A fault re-executes the faulting instruction on return and meets the previous handler;
    // a signal that was sent (abort, kill) is sent again.
    // (x86's int3 leaves the instruction behind it, so SIGTRAP is sent again too.)
    if (info == NULL || info->si_code <= 0 || signal_number == SIGTRAP) raise(signal_number);
}

int lh_crash_report_install(int fd) {
    report_fd = fd;
    // Once per process: a second install would save this handler as its own "previous" one.
    static atomic_int installed;
    if (atomic_exchange(&installed, 1) != 0) return 0;
    signal(SIGPIPE, SIG_IGN);  // a watcher that is gone must not turn the report into SIGPIPE
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

int lh_step_began(const char *handler_id, size_t length) {
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
