// The MPI communicator (src/dist/mpi_communicator.cpp): MPI_COMM_WORLD, initialised on
// creation and finalised on destruction. Only in builds with QUANTKIT_MPI.
#pragma once
#include <memory>

#include "quantkit/distributed.h"

namespace quantkit {

std::unique_ptr<Communicator> make_mpi_communicator();  // throws Error in builds without MPI

}  // namespace quantkit
