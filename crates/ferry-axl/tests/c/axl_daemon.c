/*
 * axl_daemon: hands a copy to a running `ferry serve` and exits at once,
 * without waiting: through axl.h (AXL_XFER_ASYNC_DAEMON, then
 * AXL_Finalize) or through ferry.h (FERRY_KIND_DAEMON, then
 * ferry_transfer_close). The daemon is the one on $FERRY_SOCKET.
 * tests/daemon.rs checks that the transfer completes after this exits.
 *
 *   axl_daemon axl|ferry NAME SRC DEST
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "axl.h"
#include "ferry.h"

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "axl_daemon: line %d: %s is false (%s)\n", __LINE__, \
                    #cond, ferry_last_error());                                \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

int main(int argc, char** argv) {
    CHECK(argc == 5);
    const char *mode = argv[1], *name = argv[2], *src = argv[3], *dst = argv[4];
    if (strcmp(mode, "axl") == 0) {
        CHECK(AXL_Init() == AXL_SUCCESS);
        int id = AXL_Create(AXL_XFER_ASYNC_DAEMON, name, NULL);
        CHECK(id >= 0);
        CHECK(AXL_Add(id, src, dst) == AXL_SUCCESS);
        CHECK(AXL_Dispatch(id) == AXL_SUCCESS);
        /* The post-stage case: the job ends; the daemon goes on. */
        CHECK(AXL_Finalize() == AXL_SUCCESS);
    } else {
        CHECK(strcmp(mode, "ferry") == 0);
        ferry_config* config = ferry_config_new();
        CHECK(ferry_config_set_kind(config, FERRY_KIND_DAEMON) == FERRY_OK);
        ferry_transfer* t = NULL;
        /* No store: a daemon transfer lives in the daemon's. */
        CHECK(ferry_transfer_create(NULL, name, config, &t) == FERRY_OK);
        CHECK(ferry_transfer_add(t, src, dst) == FERRY_OK);
        CHECK(ferry_transfer_dispatch(t) == FERRY_OK);
        ferry_transfer_close(t);
        ferry_config_free(config);
    }
    printf("axl_daemon: %s dispatched to the daemon\n", name);
    return 0;
}
