"""Evaluation: IFEval scoring with lm-eval's checkers (scoring.py), the evaluate stage (evaluate.py), plots (plots.py)."""
