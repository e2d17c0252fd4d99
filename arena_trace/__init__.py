"""arena-trace: eBPF tracing of allocator slow paths, arena lock waits and sysmalloc stalls."""
__version__ = "0.1.0"
