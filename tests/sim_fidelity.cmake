# The simulator against the real thing (docs/sim.md, "Calibration" and
# "Fidelity"): the fits and the comparison on hand-made measurements, and
# the whole procedure on this machine (demo --trace over kvsock, bench net,
# sim calibrate, sim, sim compare).
kvferry_add_test(NAME test_sim_calibrate SOURCES unit/sim_calibrate_test.cpp
  LIBS kvferry_sim_fidelity LABELS unit TIMEOUT 60)
target_include_directories(test_sim_calibrate PRIVATE ${PROJECT_SOURCE_DIR}/sim/src)
kvferry_add_test(NAME test_sim_fidelity SOURCES integration/sim_fidelity_test.cpp
  LIBS nlohmann_json::nlohmann_json LABELS integration TIMEOUT 180)
add_dependencies(test_sim_fidelity kvferry nccl-net-kvsock)
