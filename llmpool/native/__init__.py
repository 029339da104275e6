"""llama.cpp builds that run on the machine they land on: the variant table, the build,
the run-time choice of CPU backend, and the self-test after each build."""
