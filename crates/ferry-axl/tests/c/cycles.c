/*
 * cycles: COUNT create/add/dispatch/wait/free cycles through axl.h, then
 * COUNT through ferry.h, in one process, for a leak checker (tests/leaks.rs).
 * The checksum alternates between none, XXH3 and BLAKE3 (FERRY_CHECKSUM_*).
 *
 *   cycles STATE_FILE SOURCE DEST_DIR COUNT
 */
#include <stdio.h>
#include <stdlib.h>

#include "axl.h"
#include "ferry.h"

static int axl_cycles(const char* state, const char* src, const char* dst, int count) {
    if (AXL_Init() != AXL_SUCCESS) {
        return 1;
    }
    for (int i = 0; i < count; i++) {
        /* Alternate the kinds, and with and without a state file. */
        axl_xfer_t type = i % 2 ? AXL_XFER_PTHREAD : AXL_XFER_SYNC;
        int id = AXL_Create(type, "cycle", i % 4 < 2 ? state : NULL);
        if (id < 0 || AXL_Add(id, src, dst) != AXL_SUCCESS || AXL_Dispatch(id) != AXL_SUCCESS ||
            AXL_Wait(id) != AXL_SUCCESS || AXL_Free(id) != AXL_SUCCESS) {
            fprintf(stderr, "cycles: AXL cycle %d failed\n", i);
            return 1;
        }
    }
    /* An error path too: its message must not leak either. */
    if (AXL_Add(12345, src, dst) == AXL_SUCCESS) {
        return 1;
    }
    return AXL_Finalize() == AXL_SUCCESS ? 0 : 1;
}

static int ferry_cycles(const char* state, const char* src, const char* dst, int count) {
    ferry_store* store = NULL;
    ferry_config* config = ferry_config_new();
    if (ferry_store_open(state, &store) != FERRY_OK || config == NULL) {
        fprintf(stderr, "cycles: %s\n", ferry_last_error());
        return 1;
    }
    for (int i = 0; i < count; i++) {
        ferry_transfer* t = NULL;
        ferry_report report;
        ferry_config_set_kind(config, i % 2 ? FERRY_KIND_THREADS : FERRY_KIND_SYNC);
        /* Each checksum, and none (the in-kernel copy path). */
        ferry_config_set_checksum(config, i % 3);
        if (ferry_transfer_create(store, "native-cycle", config, &t) != FERRY_OK ||
            ferry_transfer_add(t, src, dst) != FERRY_OK || ferry_transfer_dispatch(t) != FERRY_OK ||
            ferry_transfer_wait(t, &report) != FERRY_OK || ferry_transfer_free(t) != FERRY_OK) {
            fprintf(stderr, "cycles: native cycle %d failed: %s\n", i, ferry_last_error());
            return 1;
        }
    }
    if (ferry_transfer_add(NULL, src, dst) != FERRY_E_INVALID_ARGUMENT) {
        return 1;
    }
    ferry_config_free(config);
    ferry_store_close(store);
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: cycles STATE_FILE SOURCE DEST_DIR COUNT\n");
        return 64;
    }
    int count = atoi(argv[4]);
    if (axl_cycles(argv[1], argv[2], argv[3], count) != 0) {
        return 1;
    }
    return ferry_cycles(argv[1], argv[2], argv[3], count);
}
