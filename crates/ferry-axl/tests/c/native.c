/*
 * native: ferry.h's re-attach by name, resume, events and finalize
 * (tests/native.rs).
 *
 *   native copy STORE SRC DST [PAUSE_BYTES]   create "ckpt", add, dispatch, wait
 *   native resume STORE                       re-attach "ckpt" (its owner must be dead), resume
 *   native finalize STORE                     ferry_finalize: abort what a dead owner left
 *   native twice STORE FILE DEST              copy, then again with skip, verify, blake3
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"

static int fail(const char* what) {
    fprintf(stderr, "native: %s: %s\n", what, ferry_last_error());
    return 1;
}

/* Counts this transfer's events named `name`, from the start of the log. */
static int count_events(ferry_store* store, int64_t transfer, const char* name) {
    ferry_watch* watch = NULL;
    ferry_event event;
    int n = 0;
    if (ferry_watch_open(store, 0, transfer, &watch) != FERRY_OK) {
        return -1;
    }
    while (ferry_watch_next(watch, 1000, &event) == FERRY_OK && strcmp(event.name, "bookmark") != 0) {
        n += strcmp(event.name, name) == 0;
    }
    ferry_watch_close(watch);
    return n;
}

int main(int argc, char** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: native copy|resume|finalize STORE ...\n");
        return 64;
    }
    const char* mode = argv[1];
    if (strcmp(mode, "finalize") == 0) {
        const char* paths[] = {argv[2]};
        ferry_finalize_summary summary;
        int rc = ferry_finalize(paths, 1, 0, 1, &summary);
        printf("finalize: rc %d, cleaned %llu, failed %llu\n", rc, (unsigned long long)summary.cleaned,
               (unsigned long long)summary.failed);
        return rc == FERRY_OK && summary.cleaned == 1 ? 0 : 1;
    }
    ferry_store* store = NULL;
    ferry_transfer* t = NULL;
    ferry_config* config = ferry_config_new();
    ferry_report report;
    if (ferry_store_open(argv[2], &store) != FERRY_OK) return fail("open store");
    if (strcmp(mode, "twice") == 0 && argc == 5) {
        /* The typed setters refuse what is not theirs. */
        if (ferry_config_set_skip(config, 99) != FERRY_E_INVALID_ARGUMENT ||
            ferry_config_set_verify(config, -1) != FERRY_E_INVALID_ARGUMENT ||
            ferry_config_set_checksum(config, 7) != FERRY_E_INVALID_ARGUMENT ||
            ferry_config_set_workers(config, 0) != FERRY_E_INVALID_ARGUMENT ||
            ferry_config_set_kind(config, 5) != FERRY_E_INVALID_ARGUMENT) {
            fprintf(stderr, "native: a bad setting was accepted\n");
            return 1;
        }
        for (int round = 0; round < 2; round++) {
            if (round == 1) {
                ferry_config_set_skip(config, FERRY_SKIP_SIZE);
                ferry_config_set_verify(config, FERRY_VERIFY_FULL);
                ferry_config_set_checksum(config, FERRY_CHECKSUM_BLAKE3);
                ferry_config_set_check_space(config, true);
            }
            if (ferry_transfer_create(store, NULL, config, &t) != FERRY_OK) return fail("create");
            if (ferry_transfer_add(t, argv[3], argv[4]) != FERRY_OK) return fail("add");
            if (ferry_transfer_dispatch(t) != FERRY_OK) return fail("dispatch");
            if (ferry_transfer_wait(t, &report) != FERRY_OK) return fail("wait");
            printf("round %d: %llu bytes copied\n", round, (unsigned long long)report.bytes_copied);
            if (ferry_transfer_free(t) != FERRY_OK) return fail("free");
        }
        ferry_config_free(config);
        ferry_store_close(store);
        return 0;
    }
    if (strcmp(mode, "copy") == 0 && argc >= 5) {
        ferry_config_set_kind(config, FERRY_KIND_THREADS);
        if (argc == 6) ferry_config_set_debug_pause_after(config, strtoull(argv[5], NULL, 10));
        if (ferry_transfer_create(store, "ckpt", config, &t) != FERRY_OK) return fail("create");
        if (ferry_transfer_reattached(t)) return fail("a fresh store re-attached something");
        if (ferry_transfer_add(t, argv[3], argv[4]) != FERRY_OK) return fail("add");
        if (ferry_transfer_dispatch(t) != FERRY_OK) return fail("dispatch");
    } else if (strcmp(mode, "resume") == 0) {
        /* A live owner's name would be refused; a dead one's is ours now. */
        if (ferry_transfer_create(store, "ckpt", config, &t) != FERRY_OK) return fail("create");
        if (!ferry_transfer_reattached(t)) {
            fprintf(stderr, "native: ckpt was not re-attached\n");
            return 1;
        }
        if (ferry_transfer_resume(t) != FERRY_OK) return fail("resume");
    } else {
        fprintf(stderr, "native: unknown mode %s\n", mode);
        return 64;
    }
    if (ferry_transfer_wait(t, &report) != FERRY_OK) return fail("wait");
    int state = -1;
    if (ferry_transfer_state(t, &state) != FERRY_OK || state != FERRY_STATE_COMPLETED) return fail("state");
    printf("%s: %llu of %llu files, reattached events %d\n", mode,
           (unsigned long long)report.files_committed, (unsigned long long)report.files_total,
           count_events(store, ferry_transfer_id(t), "transfer.reattached"));
    if (ferry_transfer_free(t) != FERRY_OK) return fail("free");
    ferry_config_free(config);
    ferry_store_close(store);
    return 0;
}
