"""`gapo compare`: the paper's method comparison as a grid of DVC experiments (grid.py), kept in git as it finishes
(ledger.py), reported as tables and a figure (report.py) and as the paper's claims tested prompt by prompt
(claims.py). Not evaluate-stage code: the evaluate stage's DVC deps (gapo/eval) leave it out, so that changing the
comparison driver does not change what an experiment runs (its code fingerprint, ledger.py)."""
