"""clrl: continual learning with locally competitive networks.

Sequential Atari PPO and split image benchmarks on one layer library, with
continual-learning regularizers (AGS-CL, EWC, MAS) that run as optimizer hooks.
"""

from clrl.openmp import tune_openmp

tune_openmp()  # before anything imports torch: libgomp reads its settings once (clrl/openmp.py)

__version__ = "0.1.0"
