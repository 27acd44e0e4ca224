"""No run key in a core dump.

A process that holds run keys (``dataflow_archive``, ``dfarchive restore`` and
``verify --deep``, the dramatiq workers) would write them, with the rest of its memory,
into a core file if it crashed. :func:`disable_core_dumps` sets ``RLIMIT_CORE`` to 0
first thing; tar and gpg, started later, inherit the limit.
"""

from __future__ import annotations

import resource


def disable_core_dumps() -> None:
    """Set this process's core file size limit to 0, soft and hard.

    The hard limit too, so that nothing this process runs can raise it again.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
