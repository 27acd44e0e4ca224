"""Command-line entry points: ``dataflow_archive`` and ``dfarchive``."""
