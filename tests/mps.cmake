# `kvferry demo --mps`: the choice of a private MPS daemon (a pure function)
# and the daemon's start and stop against a fake nvidia-cuda-mps-control (no
# GPU or MPS needed). The app source is compiled in: apps/ has no library.
kvferry_add_test(NAME test_mps_daemon
  SOURCES unit/mps_daemon_test.cpp ${PROJECT_SOURCE_DIR}/apps/kvferry/mps_daemon.cpp
  LIBS fmt::fmt LABELS unit TIMEOUT 60)
target_include_directories(test_mps_daemon PRIVATE ${PROJECT_SOURCE_DIR}/apps/kvferry)
