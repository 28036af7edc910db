"""ONNX Runtime sessions: one per model per process, shared by detectors and classifiers.

Models load once per process: ONNX Runtime sessions come from :func:`load_session`,
a ``functools.lru_cache`` keyed by (path, providers, threads), so on a Dask worker
a model loads once per worker process, never once per task, and detector and
classifier objects are cheap to pickle (they carry only their settings). Sessions
use one intra-op thread by default: Dask's worker threads already use the cores
(2 here), and more ONNX Runtime threads per task oversubscribe them.
``InferenceSession.run`` is thread-safe, so worker threads share a session.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

__all__ = ["DEFAULT_PROVIDERS", "cached_session", "dynamic_batch", "load_session"]

#: ONNX Runtime execution providers of every session unless the caller names others.
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


@functools.lru_cache(maxsize=16)
def cached_session(model: str | bytes, providers: tuple[str, ...], threads: int):
    """The process-wide ONNX Runtime session of a model (a file path or the model's bytes).

    Cached (16 entries) on ``(model, providers, threads)``; ``threads`` is
    ``intra_op_num_threads``, with one inter-op thread. :func:`load_session` is the
    entry point for files; this one also takes models held in memory.

    Raises
    ------
    onnxruntime.capi.onnxruntime_pybind11_state.Fail
        Or another ONNX Runtime error, if the model cannot be loaded.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: exported models often carry unused initializers
    return ort.InferenceSession(model, opts, providers=list(providers))


def load_session(path: str | os.PathLike, providers: Sequence[str] = DEFAULT_PROVIDERS,
                 intra_op_num_threads: int = 1):
    """Return the process-wide ONNX Runtime session for a model file.

    Cached with ``functools.lru_cache`` (16 entries) on the absolute path,
    providers and thread count, so each process loads a model once.

    Parameters
    ----------
    path : str or os.PathLike
        ONNX file.
    providers : sequence of str
        ONNX Runtime execution providers, e.g. ``("CPUExecutionProvider",)``.
    intra_op_num_threads : int
        Threads per inference (default 1: Dask threads already parallelise).

    Returns
    -------
    onnxruntime.InferenceSession

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return cached_session(path, tuple(providers), int(intra_op_num_threads))


def dynamic_batch(session) -> bool:
    """Whether a session's first input takes a batch of any size in one call.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
        E.g. from :func:`load_session`.

    Returns
    -------
    bool
        True if the leading dimension of the first input is symbolic (a name such
        as ``"B"``, or None) or not positive; False if the model fixes it (e.g. to
        1), in which case callers run a batch one frame per call.

    Raises
    ------
    IndexError
        If the model has no inputs, or its first input is a scalar.
    """
    dim = session.get_inputs()[0].shape[0]
    return not isinstance(dim, int) or dim <= 0
