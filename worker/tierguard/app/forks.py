"""Surviving ``fork``: a generation number that a forked child sees change.

A process that builds a client and then forks (gunicorn ``--preload``, uWSGI,
Celery prefork, ``multiprocessing`` with fork) hands its children copies of the
objects but not of their threads. The child's hook only bumps :data:`generation`
(nothing else is safe in a fresh child); an owner compares it with the one it
started under, on its next use, and restarts its threads then (as Sentry's
SDK checks the process id in its transport worker).
"""

from __future__ import annotations

import os

generation = 0


def _child() -> None:
    global generation
    generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_child)

