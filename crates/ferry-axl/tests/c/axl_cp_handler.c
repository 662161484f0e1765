/*
 * axl_cp_handler: the shape of AXL's own axl_cp: a SIGTERM handler
 * installed with signal() that calls AXL_Cancel, AXL_Free and AXL_Finalize
 * and exits 0, while the main thread sits in AXL_Wait (or, for sync, in
 * AXL_Dispatch). Used by tests/handler.rs.
 *
 *   axl_cp_handler sync|pthread SRC DEST
 *
 * Exit status: 0 copied or cancelled by SIGTERM (as axl_cp), otherwise the
 * failing call's return code (as axl_cp), 64 bad usage.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "axl.h"

static volatile int id = -1;

static void on_sigterm(int signum) {
    (void)signum;
    if (id == -1) {
        return;
    }
    int rc = AXL_Cancel(id);
    if (rc != AXL_SUCCESS) {
        fprintf(stderr, "axl_cp_handler SIGTERM: AXL_Cancel failed (%d)\n", rc);
        exit(rc);
    }
    rc = AXL_Free(id);
    if (rc != AXL_SUCCESS) {
        fprintf(stderr, "axl_cp_handler SIGTERM: AXL_Free failed (%d)\n", rc);
        exit(rc);
    }
    rc = AXL_Finalize();
    if (rc != AXL_SUCCESS) {
        fprintf(stderr, "axl_cp_handler SIGTERM: AXL_Finalize failed (%d)\n", rc);
        exit(rc);
    }
    exit(AXL_SUCCESS);
}

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: axl_cp_handler sync|pthread SRC DEST\n");
        return 64;
    }
    axl_xfer_t type = strcmp(argv[1], "sync") == 0 ? AXL_XFER_SYNC : AXL_XFER_PTHREAD;
    signal(SIGTERM, on_sigterm);
    if (AXL_Init() != AXL_SUCCESS) {
        return 1;
    }
    int new_id = AXL_Create(type, "axl_cp", NULL);
    if (new_id < 0) {
        return 1;
    }
    id = new_id;
    if (AXL_Add(id, argv[2], argv[3]) != AXL_SUCCESS || AXL_Dispatch(id) != AXL_SUCCESS ||
        AXL_Wait(id) != AXL_SUCCESS) {
        return 1;
    }
    if (AXL_Free(id) != AXL_SUCCESS) {
        return 1;
    }
    id = -1;
    return AXL_Finalize() == AXL_SUCCESS ? 0 : 1;
}
