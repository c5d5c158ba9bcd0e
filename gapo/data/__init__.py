"""The constraint data engine: IFEval constraint catalogue and perturbations, a synthetic product corpus with
a rule-based reference writer, pair builders (SFT, preferential prompt, preferential response, IFEval eval
records), split rules, user-data loading and the `prepare` stage. See docs/data.md for the formats.

Importing this package is cheap; lm-eval's IFEval modules are imported only through
`gapo.data.ifeval_checkers`, which installs the NLTK punkt data first.
"""
