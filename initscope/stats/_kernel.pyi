# The extension module built from kernel.c (setup.py). It defines nothing: initscope loads its
# file with ctypes (see native.py), where the statistics functions are.
