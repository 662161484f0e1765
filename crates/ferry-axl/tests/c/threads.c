/*
 * threads: 8 threads, each running its own transfer through ferry.h at the
 * same time (tests/threads.rs). Thread i copies DIR/src/i to DIR/dst/i
 * through its own store DIR/store-i.db, half of them sync, half threads.
 * Each also makes one call fail on purpose and checks that
 * ferry_last_error() on its own thread names its own path.
 *
 *   threads DIR
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "ferry.h"

#define THREADS 8

struct job {
    const char* dir;
    int index;
    int ok;
    pthread_barrier_t* start;
};

static void* run(void* arg) {
    struct job* job = arg;
    char store_path[4096], src[4096], dst[4096], missing[4096], name[32];
    snprintf(store_path, sizeof store_path, "%s/store-%d.db", job->dir, job->index);
    snprintf(src, sizeof src, "%s/src/%d", job->dir, job->index);
    snprintf(dst, sizeof dst, "%s/dst/%d", job->dir, job->index);
    snprintf(missing, sizeof missing, "%s/missing-%d", job->dir, job->index);
    snprintf(name, sizeof name, "thread-%d", job->index);

    /* All eight start at once. */
    pthread_barrier_wait(job->start);
    ferry_store* store = NULL;
    ferry_transfer* t = NULL;
    ferry_config* config = ferry_config_new();
    ferry_report report;
    ferry_config_set_kind(config, job->index % 2 ? FERRY_KIND_THREADS : FERRY_KIND_SYNC);
    ferry_config_set_workers(config, 2);
    ferry_config_set_preserve(config, true, false, true);
    if (ferry_store_open(store_path, &store) != FERRY_OK) {
        fprintf(stderr, "%s: %s\n", name, ferry_last_error());
        goto out;
    }
    if (ferry_transfer_create(store, name, config, &t) != FERRY_OK) {
        fprintf(stderr, "%s: %s\n", name, ferry_last_error());
        goto out;
    }
    int rc = ferry_transfer_add(t, missing, dst);
    if (rc != FERRY_E_SOURCE_NOT_FOUND || strstr(ferry_last_error(), missing) == NULL) {
        fprintf(stderr, "%s: expected an error naming %s, got %d: %s\n", name, missing, rc,
                ferry_last_error());
        goto out;
    }
    if (ferry_transfer_add(t, src, dst) != FERRY_OK || ferry_transfer_dispatch(t) != FERRY_OK ||
        ferry_transfer_wait(t, &report) != FERRY_OK) {
        fprintf(stderr, "%s: %s\n", name, ferry_last_error());
        goto out;
    }
    int state = -1;
    if (ferry_transfer_state(t, &state) != FERRY_OK || state != FERRY_STATE_COMPLETED ||
        report.files_committed != report.files_total || report.files_total == 0) {
        fprintf(stderr, "%s: state %d, %llu of %llu files\n", name, state,
                (unsigned long long)report.files_committed, (unsigned long long)report.files_total);
        goto out;
    }
    job->ok = 1;
out:
    if (t != NULL && ferry_transfer_free(t) != FERRY_OK) {
        fprintf(stderr, "%s: free: %s\n", name, ferry_last_error());
        job->ok = 0;
    }
    ferry_store_close(store);
    ferry_config_free(config);
    return NULL;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: threads DIR\n");
        return 64;
    }
    pthread_t threads[THREADS];
    struct job jobs[THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (struct job){argv[1], i, 0, &start};
        pthread_create(&threads[i], NULL, run, &jobs[i]);
    }
    int failed = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        failed += !jobs[i].ok;
    }
    printf("%d of %d transfers completed\n", THREADS - failed, THREADS);
    return failed ? 1 : 0;
}
