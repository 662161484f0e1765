/*
 * axl_threads: 8 threads, each with its own AXL id, at the same time,
 * written only against axl.h (tests/threads.rs). Thread i copies DIR/src/i
 * to DIR/dst/i, half SYNC, half PTHREAD; the even ones through their own
 * state file. One AXL_Init and one AXL_Finalize for all.
 *
 *   axl_threads DIR
 */
#include <pthread.h>
#include <stdio.h>

#include "axl.h"

#define THREADS 8

struct job {
    const char* dir;
    int index;
    int ok;
    pthread_barrier_t* start;
};

static void* run(void* arg) {
    struct job* job = arg;
    char state[4096], src[4096], dst[4096], name[32];
    snprintf(state, sizeof state, "%s/state-%d.db", job->dir, job->index);
    snprintf(src, sizeof src, "%s/src/%d", job->dir, job->index);
    snprintf(dst, sizeof dst, "%s/dst/%d", job->dir, job->index);
    snprintf(name, sizeof name, "axl-thread-%d", job->index);
    pthread_barrier_wait(job->start);
    axl_xfer_t type = job->index % 2 ? AXL_XFER_PTHREAD : AXL_XFER_SYNC;
    int id = AXL_Create(type, name, job->index % 4 < 2 ? state : NULL);
    if (id < 0) {
        return NULL;
    }
    if (AXL_Add(id, src, dst) == AXL_SUCCESS && AXL_Dispatch(id) == AXL_SUCCESS &&
        AXL_Wait(id) == AXL_SUCCESS) {
        job->ok = 1;
    }
    if (AXL_Free(id) != AXL_SUCCESS) {
        job->ok = 0;
    }
    return NULL;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: axl_threads DIR\n");
        return 64;
    }
    if (AXL_Init() != AXL_SUCCESS) {
        return 1;
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
        if (!jobs[i].ok) {
            fprintf(stderr, "axl_threads: thread %d failed\n", i);
            failed++;
        }
    }
    if (AXL_Finalize() != AXL_SUCCESS) {
        return 1;
    }
    printf("%d of %d transfers completed\n", THREADS - failed, THREADS);
    return failed ? 1 : 0;
}
