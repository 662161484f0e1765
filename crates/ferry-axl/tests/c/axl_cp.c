/*
 * axl_cp: a small cp over AXL's interface, written only against axl.h, the
 * way programs written for AXL use it. Used by tests/axl_cp.rs.
 *
 *   axl_cp [-a] [-p] [-r] [-S state_file] [-U] [-X type] SRC... DEST
 *   axl_cp -U -S state_file [-X state_file]          (resume after a crash)
 *
 * -a  archive: -r and -p      -p  copy metadata (AXL_COPY_METADATA=1)
 * -r  copy directories        -S  state file (a ferry store)
 * -U  resume the transfer recorded in the state file instead of adding
 * -X  sync|pthread|bbapi|dw|daemon|default|native|state_file (default: sync)
 *
 * SIGTERM: a thread that waits for it cancels the transfer; the main thread's
 * AXL_Wait then fails, and the transfer is freed and AXL finalized.
 * Exit status: 0 copied, 1 failed, 2 cancelled by SIGTERM, 64 bad usage.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "axl.h"

static volatile int id = -1;
static volatile int terminated = 0;

static void* on_sigterm(void* arg) {
    sigset_t* set = arg;
    int sig = 0;
    if (sigwait(set, &sig) == 0) {
        terminated = 1;
        if (id >= 0 && AXL_Cancel(id) != AXL_SUCCESS) {
            fprintf(stderr, "axl_cp: AXL_Cancel failed\n");
        }
    }
    return NULL;
}

static int xfer_type(const char* s, axl_xfer_t* out) {
    static const struct { const char* name; axl_xfer_t type; } types[] = {
        {"sync", AXL_XFER_SYNC},         {"pthread", AXL_XFER_PTHREAD},
        {"bbapi", AXL_XFER_ASYNC_BBAPI}, {"dw", AXL_XFER_ASYNC_DW},
        {"daemon", AXL_XFER_ASYNC_DAEMON}, {"default", AXL_XFER_DEFAULT},
        {"native", AXL_XFER_NATIVE},     {"state_file", AXL_XFER_STATE_FILE},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (strcmp(s, types[i].name) == 0) {
            *out = types[i].type;
            return 0;
        }
    }
    return -1;
}

static int usage(void) {
    fprintf(stderr, "usage: axl_cp [-a] [-p] [-r] [-S state_file] [-U] [-X type] SRC... DEST\n");
    return 64;
}

int main(int argc, char** argv) {
    int recursive = 0, metadata = 0, resume = 0, opt;
    const char* state_file = NULL;
    axl_xfer_t type = AXL_XFER_SYNC;
    while ((opt = getopt(argc, argv, "aprS:UX:")) != -1) {
        switch (opt) {
        case 'a': recursive = 1; metadata = 1; break;
        case 'p': metadata = 1; break;
        case 'r': recursive = 1; break;
        case 'S': state_file = optarg; break;
        case 'U': resume = 1; break;
        case 'X':
            if (xfer_type(optarg, &type) != 0) {
                fprintf(stderr, "axl_cp: unknown transfer type %s\n", optarg);
                return usage();
            }
            break;
        default: return usage();
        }
    }
    if (resume ? state_file == NULL : argc - optind < 2) {
        return usage();
    }
    if (metadata) {
        setenv("AXL_COPY_METADATA", "1", 1);
    }
    if (!recursive) {
        for (int i = optind; i < argc - 1; i++) {
            struct stat st;
            if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
                fprintf(stderr, "axl_cp: -r not specified; omitting directory %s\n", argv[i]);
                return 1;
            }
        }
    }

    /* Every thread but the SIGTERM thread has the signal blocked. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    pthread_t signal_thread;
    if (pthread_create(&signal_thread, NULL, on_sigterm, &set) != 0) {
        fprintf(stderr, "axl_cp: cannot start the signal thread\n");
        return 1;
    }

    if (AXL_Init() != AXL_SUCCESS) {
        return 1;
    }
    int rc = 1;
    id = AXL_Create(type, "axl_cp", state_file);
    if (id < 0) {
        goto out;
    }
    if (resume) {
        if (AXL_Resume(id) != AXL_SUCCESS) {
            goto free;
        }
    } else {
        for (int i = optind; i < argc - 1; i++) {
            if (AXL_Add(id, argv[i], argv[argc - 1]) != AXL_SUCCESS) {
                goto free;
            }
        }
        if (AXL_Dispatch(id) != AXL_SUCCESS) {
            goto free;
        }
    }
    /* AXL_Test must not block, and must say "done" once AXL_Wait returned. */
    (void)AXL_Test(id);
    if (AXL_Wait(id) == AXL_SUCCESS) {
        rc = AXL_Test(id) == AXL_SUCCESS ? 0 : 1;
    }
free:
    if (AXL_Free(id) != AXL_SUCCESS) {
        rc = 1;
    }
out:
    if (AXL_Finalize() != AXL_SUCCESS) {
        rc = 1;
    }
    if (terminated) {
        fprintf(stderr, "axl_cp: cancelled by SIGTERM\n");
        return 2;
    }
    return rc;
}
