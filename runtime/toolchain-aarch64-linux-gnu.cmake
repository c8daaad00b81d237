# Cross-compiling edgeseq-runner for ARM64 Linux with Debian's g++-aarch64-linux-gnu, against
# the manylinux_2_28_aarch64 executorch wheel (EXECUTORCH_ROOT = its unpacked executorch/).
# Run the result under qemu-user: qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a76 ...
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
