# The simulator (`kvferry sim`, sim/): trace input, the event engine and its
# models, and the command end to end on a small trace and the sample traces
# in ../shared/traces (skipped, saying so, where that folder is absent).
kvferry_add_test(NAME test_sim_trace SOURCES unit/sim_trace_test.cpp
  LIBS kvferry_sim_trace LABELS unit TIMEOUT 60)
kvferry_add_test(NAME test_sim_engine SOURCES unit/sim_engine_test.cpp
  LIBS kvferry_sim LABELS unit TIMEOUT 60)
# The real actors in virtual time with the simulated transfer actor.
kvferry_add_test(NAME test_sim_actors SOURCES unit/sim_actors_test.cpp
  LIBS kvferry_sim LABELS unit TIMEOUT 60)
kvferry_add_test(NAME test_sim_cli SOURCES integration/sim_cli_test.cpp
  LIBS kvferry_sim_trace LABELS integration TIMEOUT 180)
add_dependencies(test_sim_cli kvferry)
# The model engine and the actors engine on the same trace, request by
# request (docs/sim.md, "The two engines").
kvferry_add_test(NAME test_sim_engines SOURCES integration/sim_engines_test.cpp
  LIBS kvferry_sim_fidelity LABELS integration TIMEOUT 300)
add_dependencies(test_sim_engines kvferry)
