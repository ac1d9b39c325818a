"""Analyses of runs and checkpoints (CLI: ``python -m agf_exp.analyze <tool> ...``).

- :mod:`.curves`: learning-curve fits (saturating power law vs exponential) and their ceilings.
- :mod:`.decay`: attention weight by relative distance per head, power law vs exponential.
- :mod:`.heads`: positional vs symbolic heads (permutation scores and correlation ratios).
- :mod:`.lengths`: translation quality by source-length bucket; length extrapolation.
"""
