/*
 * libaxl_mpi: AXL 0.9's collective calls (include/axl_mpi.h) over libaxl.
 * Translation only: each rank makes the local axl.h call, then the ranks
 * agree with one allreduce. Built by scripts/install-clib with mpicc (C,
 * because MPI_Comm is whatever type the MPI library's mpi.h says).
 */

#include "axl_mpi.h"

/* AXL_SUCCESS on every rank if `rc` is AXL_SUCCESS on every rank, else -1
 * on every rank. A failed allreduce is a failure too. */
static int all_succeeded(int rc, MPI_Comm comm)
{
    int mine = rc == AXL_SUCCESS;
    int all = 0;
    if (MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_LAND, comm) != MPI_SUCCESS) {
        return -1;
    }
    return all ? AXL_SUCCESS : -1;
}

int AXL_Init_comm(MPI_Comm comm)
{
    return all_succeeded(AXL_Init(), comm);
}

int AXL_Finalize_comm(MPI_Comm comm)
{
    return all_succeeded(AXL_Finalize(), comm);
}

int AXL_Create_comm(axl_xfer_t xtype, const char* name, const char* state_file, MPI_Comm comm)
{
    int id = AXL_Create(xtype, name, state_file);
    if (all_succeeded(id >= 0 ? AXL_SUCCESS : -1, comm) != AXL_SUCCESS) {
        /* Another rank failed: no rank keeps a transfer the others lack. */
        if (id >= 0) {
            AXL_Free(id);
        }
        return -1;
    }
    return id;
}

int AXL_Add_comm(int id, int num, const char** src, const char** dst, MPI_Comm comm)
{
    int rc = num >= 0 && (num == 0 || (src != NULL && dst != NULL)) ? AXL_SUCCESS : -1;
    for (int i = 0; rc == AXL_SUCCESS && i < num; i++) {
        rc = AXL_Add(id, src[i], dst[i]);
    }
    return all_succeeded(rc, comm);
}

int AXL_Dispatch_comm(int id, MPI_Comm comm)
{
    return all_succeeded(AXL_Dispatch(id), comm);
}

int AXL_Test_comm(int id, MPI_Comm comm)
{
    return all_succeeded(AXL_Test(id), comm);
}

int AXL_Wait_comm(int id, MPI_Comm comm)
{
    return all_succeeded(AXL_Wait(id), comm);
}

int AXL_Cancel_comm(int id, MPI_Comm comm)
{
    return all_succeeded(AXL_Cancel(id), comm);
}

int AXL_Free_comm(int id, MPI_Comm comm)
{
    return all_succeeded(AXL_Free(id), comm);
}

int AXL_Stop_comm(MPI_Comm comm)
{
    return all_succeeded(AXL_Stop(), comm);
}
