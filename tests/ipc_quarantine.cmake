# CUDA IPC quarantine (docs/gpu.md, "Timed-out IPC copies"): the receiving
# side's state machine, the actors' protocol with a fake sender (no GPU), and
# a held-back copy kernel on a real GPU (label gpu: skipped without one).
kvferry_add_test(NAME test_ipc_quarantine SOURCES unit/ipc_quarantine_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 30)
kvferry_add_test(NAME test_ipc_quarantine_actors
  SOURCES unit/ipc_quarantine_actors_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
# Two processes on GPU 0: a copy kernel held back by KVFERRY_IPC_TEST_HOLD.
kvferry_add_test(NAME test_gpu_ipc_quarantine
  SOURCES gpu/ipc_quarantine_gpu_test.cpp
  LIBS kvferry_actors GPU LABELS integration TIMEOUT 180)
