"""End-to-end experiments behind the scripts in ``scripts/`` (the scripts only parse arguments).

- :mod:`clrl.experiments.atari_forgetting`: fine-tuning, EWC, MAS and AGS-CL on a short Atari
  sequence over seeds, written up as ``docs/atari_forgetting.md`` (issue 18).
"""
