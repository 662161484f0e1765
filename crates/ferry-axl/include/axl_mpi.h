/*
 * axl_mpi.h: AXL 0.9's MPI interface, implemented by ferry (libaxl_mpi.so,
 * libaxl_mpi.a, over libaxl). Programs written for it build unchanged:
 * mpicc prog.c $(pkg-config --cflags --libs axl_mpi). scripts/install-clib
 * builds it when an MPI C compiler (mpicc) is found; crates/ferry-axl/mpi/
 * axl_mpi.c implements it.
 *
 * Each function is collective over `comm`: every rank calls the axl.h
 * function of the same name on its own files, then the ranks agree (an
 * allreduce), so that every rank returns AXL_SUCCESS only if every rank
 * succeeded, and -1 on all ranks otherwise. AXL_Create_comm returns the
 * new id on every rank, or -1 on every rank (a rank that created one frees
 * it then). As in AXL 0.9, the id of one transfer may differ from rank to
 * rank; call the functions with each rank's own id.
 */

#ifndef AXL_MPI_H
#define AXL_MPI_H

#include <mpi.h>

#include "axl.h"

#ifdef __cplusplus
extern "C" {
#endif

int AXL_Init_comm(MPI_Comm comm);
int AXL_Finalize_comm(MPI_Comm comm);
int AXL_Create_comm(axl_xfer_t xtype, const char* name, const char* state_file, MPI_Comm comm);
/* Adds num files: src[i] to dst[i], as AXL_Add of each. */
int AXL_Add_comm(int id, int num, const char** src, const char** dst, MPI_Comm comm);
int AXL_Dispatch_comm(int id, MPI_Comm comm);
/* AXL_SUCCESS when AXL_Wait_comm would block on no rank. */
int AXL_Test_comm(int id, MPI_Comm comm);
int AXL_Wait_comm(int id, MPI_Comm comm);
int AXL_Cancel_comm(int id, MPI_Comm comm);
int AXL_Free_comm(int id, MPI_Comm comm);
int AXL_Stop_comm(MPI_Comm comm);

#ifdef __cplusplus
}
#endif

#endif /* AXL_MPI_H */
