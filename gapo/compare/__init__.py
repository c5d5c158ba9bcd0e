"""`gapo compare`: the paper's method comparison as a grid of DVC experiments (grid.py), its paired claims
(claims.py). Not evaluate-stage code: the evaluate stage's DVC deps (gapo/eval) leave it out, so that changing the
comparison driver does not change what an experiment runs."""
