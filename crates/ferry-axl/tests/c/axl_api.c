/*
 * axl_api: AXL's conventions, one check after another, written only
 * against axl.h (tests/axl_api.rs). Exits 0 when every check held, else
 * 1 after naming the first that did not.
 *
 *   axl_api DIR      (DIR: an empty scratch directory)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "axl.h"

_Static_assert(AXL_XFER_NULL == 0 && AXL_XFER_DEFAULT == 1 && AXL_XFER_SYNC == 2 &&
                   AXL_XFER_ASYNC_DAEMON == 3 && AXL_XFER_ASYNC_DW == 4 &&
                   AXL_XFER_ASYNC_BBAPI == 5 && AXL_XFER_NATIVE == 6 &&
                   AXL_XFER_PTHREAD == 7 && AXL_XFER_STATE_FILE == 8,
               "axl_xfer_t values are AXL's");
_Static_assert(AXL_SUCCESS == 0, "AXL_SUCCESS is 0");

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "axl_api: line %d: %s is false\n", __LINE__, #cond); \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

static char dir[2048];

static const char* at(const char* name) {
    static char paths[8][4096];
    static int next = 0;
    char* p = paths[next++ % 8];
    snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

static void write_file(const char* path, const char* text) {
    FILE* f = fopen(path, "w");
    CHECK(f != NULL);
    fputs(text, f);
    fclose(f);
}

static int same_file(const char* a, const char* b) {
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    return system(cmd) == 0;
}

int main(int argc, char** argv) {
    CHECK(argc == 2);
    snprintf(dir, sizeof dir, "%s", argv[1]);
    write_file(at("a.txt"), "alpha\n");
    write_file(at("b.txt"), "bravo\n");
    CHECK(mkdir(at("srcdir"), 0755) == 0);
    write_file(at("srcdir/c.txt"), "charlie\n");

    /* A process creates a SYNC transfer in a state file, adds, and dies
     * before dispatching it (fork first: no threads exist yet). */
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        if (AXL_Init() != AXL_SUCCESS) _exit(3);
        int id = AXL_Create(AXL_XFER_SYNC, "reloaded", at("state.db"));
        if (id < 0 || AXL_Add(id, at("a.txt"), at("out-reloaded.txt")) != AXL_SUCCESS) _exit(4);
        _exit(0);
    }
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* Another completes its transfer and dies before AXL_Free. */
    child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        if (AXL_Init() != AXL_SUCCESS) _exit(3);
        int id = AXL_Create(AXL_XFER_PTHREAD, "ended", at("ended.db"));
        if (id < 0 || AXL_Add(id, at("b.txt"), at("out-ended.txt")) != AXL_SUCCESS ||
            AXL_Dispatch(id) != AXL_SUCCESS || AXL_Wait(id) != AXL_SUCCESS) _exit(4);
        _exit(0);
    }
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* As AXL 0.9: calls work before AXL_Init (with the environment's
     * settings), and a Finalize without Init succeeds. */
    int early = AXL_Create(AXL_XFER_SYNC, "early", NULL);
    CHECK(early >= 0);
    CHECK(AXL_Free(early) == AXL_SUCCESS);
    CHECK(AXL_Finalize() == AXL_SUCCESS);

    /* Init and Finalize are reference counted. */
    CHECK(AXL_Init() == AXL_SUCCESS);
    CHECK(AXL_Init() == AXL_SUCCESS);
    CHECK(AXL_Finalize() == AXL_SUCCESS);
    int id = AXL_Create(AXL_XFER_SYNC, "still-initialised", NULL);
    CHECK(id >= 0);
    CHECK(AXL_Cancel(id) == -1); /* as AXL: not dispatched, nothing to cancel */
    CHECK(AXL_Free(id) == AXL_SUCCESS);
    CHECK(AXL_Free(id) == -1); /* freed already */

    /* Types outside axl_xfer_t are refused; AXL_Config is NULL. */
    CHECK(AXL_Create(AXL_XFER_NULL, "null", NULL) == -1);
    CHECK(AXL_Create((axl_xfer_t)42, "bogus", NULL) == -1);
    CHECK(AXL_Config(NULL) == NULL);

    /* Test and Wait before Dispatch are errors; Free after Create is fine. */
    id = AXL_Create(AXL_XFER_PTHREAD, "undispatched", NULL);
    CHECK(id >= 0);
    CHECK(AXL_Test(id) == -1);
    CHECK(AXL_Wait(id) == -1);
    CHECK(AXL_Free(id) == AXL_SUCCESS);

    /* Destination rules: a file into an existing directory, a file to a
     * new name, a directory onto a file is refused. */
    CHECK(mkdir(at("into"), 0755) == 0);
    id = AXL_Create(AXL_XFER_DEFAULT, "rules", NULL);
    CHECK(id >= 0);
    CHECK(AXL_Add(id, at("a.txt"), at("into")) == AXL_SUCCESS);
    CHECK(AXL_Add(id, at("b.txt"), at("renamed.txt")) == AXL_SUCCESS);
    CHECK(AXL_Add(id, at("srcdir"), at("a.txt")) == -1);
    CHECK(AXL_Add(id, at("does-not-exist"), at("into")) == -1);
    CHECK(AXL_Dispatch(id) == AXL_SUCCESS);
    CHECK(AXL_Wait(id) == AXL_SUCCESS);
    CHECK(AXL_Test(id) == AXL_SUCCESS); /* Wait would not block now */
    CHECK(AXL_Free(id) == AXL_SUCCESS);
    CHECK(same_file(at("a.txt"), at("into/a.txt")));
    CHECK(same_file(at("b.txt"), at("renamed.txt")));

    /* The transfer the dead child left: not as PTHREAD (it is SYNC), but
     * as AXL_XFER_STATE_FILE; Resume of a never-dispatched transfer
     * dispatches it. */
    CHECK(AXL_Create(AXL_XFER_PTHREAD, "reloaded", at("state.db")) == -1);
    id = AXL_Create(AXL_XFER_STATE_FILE, "reloaded", at("state.db"));
    CHECK(id >= 0);
    /* One transfer is never open under two ids, however the file is spelled. */
    CHECK(AXL_Create(AXL_XFER_STATE_FILE, "reloaded", at("state.db")) == -1);
    CHECK(AXL_Create(AXL_XFER_STATE_FILE, "reloaded", at("./state.db")) == -1);
    CHECK(AXL_Resume(id) == AXL_SUCCESS);
    CHECK(AXL_Wait(id) == AXL_SUCCESS);
    CHECK(AXL_Free(id) == AXL_SUCCESS);
    CHECK(same_file(at("a.txt"), at("out-reloaded.txt")));
    /* Freed, its name is free: no transfer of that name is left to reload. */
    CHECK(AXL_Create(AXL_XFER_STATE_FILE, "reloaded", at("state.db")) == -1);

    /* The ended transfer reloads; as after an SCR restart whose flush had
     * finished, Resume has nothing to do and Wait reports success; it can
     * be freed, and then its name is free for a new transfer. */
    id = AXL_Create(AXL_XFER_STATE_FILE, "ended", at("ended.db"));
    CHECK(id >= 0);
    CHECK(AXL_Resume(id) == AXL_SUCCESS);
    CHECK(AXL_Wait(id) == AXL_SUCCESS);
    CHECK(AXL_Free(id) == AXL_SUCCESS);
    id = AXL_Create(AXL_XFER_SYNC, "ended", at("ended.db"));
    CHECK(id >= 0);
    CHECK(AXL_Add(id, at("a.txt"), at("out-ended.txt")) == AXL_SUCCESS);
    CHECK(AXL_Dispatch(id) == AXL_SUCCESS && AXL_Wait(id) == AXL_SUCCESS);
    CHECK(AXL_Free(id) == AXL_SUCCESS);
    CHECK(same_file(at("a.txt"), at("out-ended.txt")));

    /* Cancel after completion changes nothing: Wait still succeeds. */
    id = AXL_Create(AXL_XFER_SYNC, "done", NULL);
    CHECK(id >= 0);
    CHECK(AXL_Add(id, at("a.txt"), at("done.txt")) == AXL_SUCCESS);
    CHECK(AXL_Dispatch(id) == AXL_SUCCESS);
    CHECK(AXL_Cancel(id) == AXL_SUCCESS);
    CHECK(AXL_Wait(id) == AXL_SUCCESS);
    /* As AXL 0.9: once waited for, a second wait and a cancel fail. */
    CHECK(AXL_Wait(id) == -1);
    CHECK(AXL_Cancel(id) == -1);
    CHECK(AXL_Free(id) == AXL_SUCCESS);

    /* As AXL 0.9: a dispatched transfer is freed only after its wait (or a
     * cancel). */
    id = AXL_Create(AXL_XFER_SYNC, "unwaited", NULL);
    CHECK(id >= 0);
    CHECK(AXL_Add(id, at("a.txt"), at("unwaited.txt")) == AXL_SUCCESS);
    CHECK(AXL_Dispatch(id) == AXL_SUCCESS);
    CHECK(AXL_Dispatch(id) == -1); /* dispatched already */
    CHECK(AXL_Free(id) == -1);
    CHECK(AXL_Wait(id) == AXL_SUCCESS);
    CHECK(AXL_Free(id) == AXL_SUCCESS);

    /* Stop with nothing open succeeds. */
    CHECK(AXL_Stop() == AXL_SUCCESS);

    /* Stop cancels, waits for and frees everything; as AXL's, it fails
     * when one of those fails (an id never dispatched cannot be
     * cancelled), and frees them all the same. */
    int one = AXL_Create(AXL_XFER_PTHREAD, "stop-1", NULL);
    int two = AXL_Create(AXL_XFER_SYNC, "stop-2", NULL);
    CHECK(one >= 0 && two >= 0 && one != two);
    CHECK(AXL_Add(one, at("srcdir"), at("stopped")) == AXL_SUCCESS);
    CHECK(AXL_Dispatch(one) == AXL_SUCCESS);
    CHECK(AXL_Stop() == -1);
    CHECK(AXL_Free(one) == -1 && AXL_Free(two) == -1);
    CHECK(AXL_Finalize() == AXL_SUCCESS);

    /* As AXL 0.9: a transfer may be created after the last Finalize. */
    int late = AXL_Create(AXL_XFER_SYNC, "late", NULL);
    CHECK(late >= 0);
    CHECK(AXL_Free(late) == AXL_SUCCESS);

    /* AXL_MKDIR=0: a destination whose directory is missing is refused. */
    setenv("AXL_MKDIR", "0", 1);
    CHECK(AXL_Init() == AXL_SUCCESS);
    id = AXL_Create(AXL_XFER_SYNC, "nomkdir", NULL);
    CHECK(id >= 0);
    CHECK(AXL_Add(id, at("a.txt"), at("missing/dir/a.txt")) == -1);
    CHECK(AXL_Add(id, at("a.txt"), at("into/again.txt")) == AXL_SUCCESS);
    CHECK(AXL_Free(id) == AXL_SUCCESS);
    CHECK(AXL_Finalize() == AXL_SUCCESS);
    CHECK(AXL_Finalize() == AXL_SUCCESS); /* one too many: as AXL, no error */

    /* A bad value in the environment fails AXL_Init, saying which. */
    setenv("AXL_COPY_METADATA", "yes", 1);
    CHECK(AXL_Init() == -1);

    printf("axl_api: all checks held\n");
    return 0;
}
