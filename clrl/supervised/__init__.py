"""The supervised front end: split image benchmarks, a reservoir buffer, the sequential trainer.

``run_experiment(cfg, rd, resume)`` lives in :mod:`clrl.supervised.trainer` (imported lazily by
the CLI, so that reading data or the buffer does not import the training stack).
"""

from clrl.supervised.data import Benchmark, Normalizer, TaskData, build_benchmark
from clrl.supervised.reservoir import ReservoirBuffer

__all__ = ["Benchmark", "Normalizer", "ReservoirBuffer", "TaskData", "build_benchmark"]
