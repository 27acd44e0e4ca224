"""dfarchive's benchmark suite: ``python -m benchmarks [--quick]``.

Measures, side by side in one run, dfarchive's archive and validate paths against the
original ``dataflow_archive`` pipeline, a naive ``tar | gpg`` and the machine's ceilings
(read, AES-256-CFB, fsync'd write), and the cost of a scan + register pass. See
``benchmarks/README.md``.
"""
