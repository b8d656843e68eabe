# FAISS baseline for bench_kmeans_faiss.cpp (a benchmark-only dependency; Debian:
# `apt-get install libfaiss-dev`). include() this from bench/CMakeLists.txt after the
# bench_* targets exist. When FAISS (and the OpenMP its static library needs) is found,
# the bench links it and compiles its FAISS half (QK_HAVE_FAISS); otherwise it times
# quantkit alone.
if(NOT TARGET bench_kmeans_faiss)
  return()
endif()
find_package(OpenMP QUIET COMPONENTS CXX)
if(OpenMP_CXX_FOUND)
  find_package(faiss CONFIG QUIET)
endif()
if(OpenMP_CXX_FOUND AND TARGET faiss)
  target_link_libraries(bench_kmeans_faiss PRIVATE faiss OpenMP::OpenMP_CXX)
  target_compile_definitions(bench_kmeans_faiss PRIVATE QK_HAVE_FAISS=1)
  message(STATUS "bench_kmeans_faiss: comparing with FAISS ${faiss_VERSION}")
else()
  message(STATUS "bench_kmeans_faiss: FAISS not found (libfaiss-dev), quantkit only")
endif()
