/*
 * axl_mpi: AXL's MPI interface (axl_mpi.h) over 4 ranks, every _comm call,
 * written only against axl_mpi.h (tests/mpi.rs runs it under mpirun).
 * Every rank checks every return code, so the ranks agree or the run
 * fails; one rank failing a call must make it fail on all. Exits 0 when
 * every check held on every rank, else 1 after naming the first that did
 * not.
 *
 *   mpirun -np 4 axl_mpi DIR      (DIR: an empty scratch directory)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "axl_mpi.h"

static int rank = -1;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "axl_mpi: rank %d: line %d: %s is false\n", rank, \
                    __LINE__, #cond);                                          \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static char dir[2048];

static const char* at(const char* fmt, int n) {
    static char paths[8][4096];
    static int next = 0;
    char name[256];
    snprintf(name, sizeof name, fmt, n);
    char* p = paths[next++ % 8];
    snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

/* A file of `bytes` bytes, different for each rank and file. */
static void make_file(const char* path, size_t bytes, int seed) {
    FILE* f = fopen(path, "w");
    CHECK(f != NULL);
    for (size_t i = 0; i < bytes; i++) {
        fputc((int)((i * 31 + (size_t)seed * 7) & 0xff), f);
    }
    CHECK(fclose(f) == 0);
}

static int same_file(const char* a, const char* b) {
    FILE* fa = fopen(a, "r");
    FILE* fb = fopen(b, "r");
    int same = fa != NULL && fb != NULL;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        same = ca == cb;
        if (ca == EOF || cb == EOF) {
            break;
        }
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

static int exists(const char* path) {
    FILE* f = fopen(path, "r");
    if (f) fclose(f);
    return f != NULL;
}

/* Polls until `test` returns AXL_SUCCESS, a bounded number of times: the
 * same number on every rank when `test` is collective (its result is). */
static int poll_until_done(int (*test)(int, MPI_Comm), int id, MPI_Comm comm) {
    const struct timespec ms = {0, 1000000};
    for (int i = 0; i < 60000; i++) {
        if (test(id, comm) == AXL_SUCCESS) {
            return AXL_SUCCESS;
        }
        nanosleep(&ms, NULL);
    }
    return -1;
}

static int test_local(int id, MPI_Comm comm) {
    (void)comm;
    return AXL_Test(id);
}

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm comm = MPI_COMM_WORLD;
    int size = 0;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    CHECK(argc == 2);
    CHECK(size == 4);
    snprintf(dir, sizeof dir, "%s", argv[1]);
    make_file(at("a-%d", rank), 1024 * (size_t)(rank + 1), rank);
    make_file(at("b-%d", rank), 4096 * (size_t)(rank + 1), rank + 10);
    make_file(at("c-%d", rank), 256 * 1024, rank + 20);
    MPI_Barrier(comm);

    CHECK(AXL_Init_comm(comm) == AXL_SUCCESS);

    /* One rank cannot create: no rank has a transfer (those that made one
     * freed it, so Stop finds nothing open and succeeds everywhere). */
    int id = AXL_Create_comm(rank == 1 ? AXL_XFER_NULL : AXL_XFER_PTHREAD, "bad", NULL, comm);
    CHECK(id == -1);
    CHECK(AXL_Stop_comm(comm) == AXL_SUCCESS);

    /* Each rank copies its own two files. */
    id = AXL_Create_comm(AXL_XFER_PTHREAD, "ckpt", NULL, comm);
    CHECK(id >= 0);
    const char* src[2] = {at("a-%d", rank), at("b-%d", rank)};
    const char* dst[2] = {at("out/a-%d", rank), at("out/b-%d", rank)};
    CHECK(AXL_Add_comm(id, 2, src, dst, comm) == AXL_SUCCESS);
    CHECK(AXL_Dispatch_comm(id, comm) == AXL_SUCCESS);
    CHECK(poll_until_done(AXL_Test_comm, id, comm) == AXL_SUCCESS);
    CHECK(AXL_Wait_comm(id, comm) == AXL_SUCCESS);
    CHECK(AXL_Free_comm(id, comm) == AXL_SUCCESS);
    CHECK(same_file(src[0], dst[0]) && same_file(src[1], dst[1]));

    /* One rank's source is missing: the add fails on every rank. */
    id = AXL_Create_comm(AXL_XFER_SYNC, "missing", NULL, comm);
    CHECK(id >= 0);
    const char* one_src[1] = {rank == 2 ? at("no-such-file-%d", rank) : at("a-%d", rank)};
    const char* one_dst[1] = {at("missing/a-%d", rank)};
    CHECK(AXL_Add_comm(id, 1, one_src, one_dst, comm) == -1);
    CHECK(AXL_Free_comm(id, comm) == AXL_SUCCESS);

    /* Rank 0's mover pauses (AXL_DEBUG_PAUSE_AFTER, read by the next
     * AXL_Init) while the others finish: Test is false everywhere, the
     * cancel succeeds everywhere, and rank 0's cancelled wait fails the
     * wait on every rank. */
    CHECK(AXL_Finalize_comm(comm) == AXL_SUCCESS);
    if (rank == 0) {
        CHECK(setenv("AXL_DEBUG_PAUSE_AFTER", "1", 1) == 0);
    }
    CHECK(AXL_Init_comm(comm) == AXL_SUCCESS);
    id = AXL_Create_comm(AXL_XFER_PTHREAD, "paused", NULL, comm);
    CHECK(id >= 0);
    const char* c_src[1] = {at("c-%d", rank)};
    const char* c_dst[1] = {at("paused/c-%d", rank)};
    CHECK(AXL_Add_comm(id, 1, c_src, c_dst, comm) == AXL_SUCCESS);
    CHECK(AXL_Dispatch_comm(id, comm) == AXL_SUCCESS);
    if (rank != 0) {
        CHECK(poll_until_done(test_local, id, comm) == AXL_SUCCESS);
    }
    CHECK(AXL_Test_comm(id, comm) == -1);
    CHECK(AXL_Cancel_comm(id, comm) == AXL_SUCCESS);
    CHECK(AXL_Wait_comm(id, comm) == -1);
    CHECK(AXL_Free_comm(id, comm) == AXL_SUCCESS);
    if (rank == 0) {
        CHECK(!exists(c_dst[0]));
    } else {
        CHECK(same_file(c_src[0], c_dst[0]));
    }

    /* One rank holds a transfer never dispatched, which AXL_Stop cannot
     * cancel: Stop fails on every rank, and frees it all the same. */
    if (rank == 3) {
        CHECK(AXL_Create(AXL_XFER_SYNC, "left", NULL) >= 0);
    }
    CHECK(AXL_Stop_comm(comm) == -1);
    CHECK(AXL_Stop_comm(comm) == AXL_SUCCESS);

    CHECK(AXL_Finalize_comm(comm) == AXL_SUCCESS);
    MPI_Finalize();
    if (rank == 0) {
        printf("axl_mpi: every check held on %d ranks\n", size);
    }
    return 0;
}
