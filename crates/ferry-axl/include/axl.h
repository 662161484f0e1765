/*
 * axl.h: AXL 0.9's C interface, implemented by ferry (libaxl.so, libaxl.a).
 * Programs written for AXL build against it unchanged: link with -laxl
 * (pkg-config axl). Written for ferry from the interface's description;
 * crates/ferry-axl/src/lib.rs implements it and docs/c-libraries.md
 * documents how ferry maps each transfer type and environment variable.
 *
 * Every function returns AXL_SUCCESS (0) or -1 after printing one line on
 * stderr naming what failed; AXL_Create returns a new id >= 0, or -1.
 *
 * Return codes are AXL 0.9's, including its per-id states: calls work
 * before AXL_Init and after the last AXL_Finalize (with the environment's
 * settings); AXL_Finalize without AXL_Init succeeds; AXL_Dispatch and
 * AXL_Resume only once; AXL_Wait only after a dispatch and only once;
 * AXL_Cancel only between dispatch and the end of the wait (success, and
 * nothing changes, when the transfer already finished); AXL_Free after
 * create, wait or cancel, not of a dispatched transfer not waited for;
 * AXL_Stop is AXL_Cancel, AXL_Wait and AXL_Free of every id and fails if
 * any of them did (an id never dispatched cannot be cancelled).
 * The MPI interface is axl_mpi.h (libaxl_mpi), as AXL's.
 * Transfer types: SYNC copies inside AXL_Dispatch; PTHREAD on threads;
 * ASYNC_DAEMON, ASYNC_DW, ASYNC_BBAPI, DEFAULT and NATIVE go to `ferry
 * serve` when one answers on $FERRY_SOCKET (else its default socket) at
 * AXL_Create, else run on threads, as AXL falls back to pthreads. A daemon
 * transfer goes on after the program: AXL_Finalize releases its id without
 * cancelling it, and the program may exit right after AXL_Dispatch.
 * Differences from AXL 0.9, each on purpose:
 *  - AXL_Test after AXL_Wait returns AXL_SUCCESS (AXL: -1, invalid state):
 *    "Wait would not block" stays true.
 *  - AXL_Config refuses per-transfer settings (an "id" subtree): see below.
 *  - AXL_Create of a name held in a state file by a live owner fails
 *    (on another host: until the owner's lease, FERRY_OWNER_LEASE, ran
 *    out); restarting after a crash re-attaches (AXL cannot tell the two
 *    apart).
 *  - A daemon transfer lives in the daemon's store under its name, not in
 *    the state file (which is not created); its name must be unique there.
 *  - No reserve or other file appears beside a state file but SQLite's
 *    own (-wal, -shm).
 */

#ifndef AXL_H
#define AXL_H

#ifdef __cplusplus
extern "C" {
#endif

#define AXL_SUCCESS (0)

#define AXL_VERSION "0.9.0"

/* Keys of AXL_Config's tree. */
#define AXL_KEY_CONFIG_FILE_BUF_SIZE "FILE_BUF_SIZE"
#define AXL_KEY_CONFIG_DEBUG "DEBUG"
#define AXL_KEY_CONFIG_MKDIR "MKDIR"
#define AXL_KEY_CONFIG_USE_EXTENSION "USE_EXTENSION"
#define AXL_KEY_CONFIG_COPY_METADATA "COPY_METADATA"
#define AXL_KEY_CONFIG_RANK "RANK"

/* Transfer types, values 0..8 in this order. */
typedef enum {
    AXL_XFER_NULL = 0,       /* invalid */
    AXL_XFER_DEFAULT,        /* ferry serve when one answers, else threads */
    AXL_XFER_SYNC,           /* copy inside AXL_Dispatch */
    AXL_XFER_ASYNC_DAEMON,   /* ferry serve when one answers, else threads */
    AXL_XFER_ASYNC_DW,       /* ferry serve when one answers, else threads */
    AXL_XFER_ASYNC_BBAPI,    /* ferry serve when one answers, else threads */
    AXL_XFER_NATIVE,         /* ferry serve when one answers, else threads */
    AXL_XFER_PTHREAD,        /* a pool of threads */
    AXL_XFER_STATE_FILE,     /* the type recorded in an existing state file */
} axl_xfer_t;

/* Reads AXL_DEBUG, AXL_MKDIR, AXL_USE_EXTENSION, AXL_COPY_METADATA and
 * AXL_DEBUG_PAUSE_AFTER from the environment; reference counted. */
int AXL_Init(void);
int AXL_Finalize(void);

/* A new transfer; with an existing state_file (a ferry store), the transfer
 * recorded there under name is reloaded. state_file may be NULL. */
int AXL_Create(axl_xfer_t xtype, const char* name, const char* state_file);
int AXL_Add(int id, const char* source, const char* destination);
int AXL_Dispatch(int id);
int AXL_Resume(int id);
int AXL_Test(int id);
int AXL_Wait(int id);
int AXL_Cancel(int id);
int AXL_Free(int id);
int AXL_Stop(void);

/* Signal handlers. As AXL's axl_cp does, a SIGTERM handler may call
 * AXL_Cancel(id), AXL_Free(id) and AXL_Finalize() (then exit) while the
 * thread it interrupted is inside AXL_Wait(id) (or a sync AXL_Dispatch(id)):
 * the free cancels the transfer, waits (at most 30 s) for its movers to
 * stop, removes its temporaries and frees it; the interrupted wait, if the
 * handler returns, fails as cancelled. ferry's own threads block
 * asynchronous signals, so a handler always runs on one of the program's
 * threads. These calls are not async-signal-safe in general (nor are
 * AXL's): call them from a handler only when the interrupted thread was in
 * AXL_Wait or outside libaxl, never when it was inside another AXL call.
 * With AXL_XFER_SYNC a temporary the interrupted copy was writing may be
 * left behind. */

/* KVTree's tree type: the caller's KVTree library, which libaxl uses at
 * run time (dlsym) without depending on it. */
struct kvtree_struct;
typedef struct kvtree_struct kvtree;

/* As AXL 0.9: AXL_Config(NULL) returns a new tree of the current settings
 * (FILE_BUF_SIZE, DEBUG, MKDIR, USE_EXTENSION, COPY_METADATA, RANK);
 * AXL_Config(tree) applies the keys it holds and returns tree. NULL on
 * failure: an unknown key, a value that is not a number, no KVTree loaded
 * in the process, and (unlike AXL) a per-transfer "id" subtree, which
 * ferry does not support. FILE_BUF_SIZE and RANK are kept and reported;
 * ferry's movers size their own chunks. */
kvtree* AXL_Config(const kvtree* config);

#ifdef __cplusplus
}
#endif

#endif /* AXL_H */
