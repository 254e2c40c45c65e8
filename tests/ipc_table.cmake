# CUDA IPC over region tables, one-sided reads and CUDA-event waits (issue
# #15): the address translation, the table's text form, the data path with
# tables and the transfer actor's refusals on the CPU (unit); across two
# processes on a real GPU (gpu: skipped without one).
kvferry_add_test(NAME test_ipc_table SOURCES unit/ipc_table_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
# Two processes on GPU 0, wrapped tables with regions inside one allocation:
# push, one-sided read, event waits (IPC and kvsock); every byte verified.
kvferry_add_test(NAME test_ipc_table_gpu SOURCES gpu/ipc_table_gpu_test.cpp
  LIBS kvferry_actors GPU LABELS integration TIMEOUT 180)
add_dependencies(test_ipc_table_gpu nccl-net-kvsock)
