"""The params schema bounds every number (issue 13, item 9) and the YAML it reads (item 8): every float knob is
finite, every integer fits 64 bits, seeds are non-negative and Adam betas in [0, 1); a params file or -S value is
bounded in bytes and in values after alias expansion, and an error message cuts long values."""
from __future__ import annotations

import time
import typing

import pytest
from pydantic import BaseModel

from gapo.config import (MAX_YAML_BYTES, MAX_YAML_NODES, ConfigError, Params, load_params, load_tree, short_repr,
                         validate)


def _leaves(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        path = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaves(ann, path + ".")
        else:
            yield path, ann


def _scalar_types(ann) -> set:
    args = typing.get_args(ann)
    if typing.get_origin(ann) is typing.Annotated:
        return _scalar_types(args[0])
    if not args:
        return {ann}
    out = set()
    for a in args:
        out |= _scalar_types(a)
    return out


def _set(tree: dict, dotted: str, value) -> dict:
    node = tree
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return tree


FLOATS = [p for p, ann in _leaves(Params) if float in _scalar_types(ann)]
INTS = [p for p, ann in _leaves(Params) if int in _scalar_types(ann) and float not in _scalar_types(ann)]


def _sample(ann, bad):
    """`bad` in the shape the field takes (a scalar, or every item of a tuple / list)."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _sample(typing.get_args(ann)[0], bad)
    if origin in (tuple, list):
        n = len(typing.get_args(ann)) if origin is tuple else 1
        return [bad] * max(n, 1)
    return bad


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_every_float_knob_is_finite(bad):
    assert len(FLOATS) > 40
    leaves = dict(_leaves(Params))
    accepted = []
    for path in FLOATS:
        try:
            validate(_set({}, path, _sample(leaves[path], bad)))
        except ConfigError as exc:
            assert path.split(".")[-1] in str(exc)
            continue
        accepted.append(path)
    assert not accepted, f"non-finite values accepted: {accepted}"


def test_every_integer_knob_fits_64_bits():
    leaves = dict(_leaves(Params))
    accepted = []
    for path in INTS:
        try:
            validate(_set({}, path, _sample(leaves[path], 2**64)))
        except ConfigError:
            continue
        accepted.append(path)
    assert not accepted, f"integers beyond 64 bits accepted: {accepted}"


@pytest.mark.parametrize("override,match", [
    ("seed=-1", "greater than or equal to 0"), (f"seed={2**63}", "less than"), ("train_seed=-5", "greater than"),
    ("compare.seeds=[1, -2]", "compare.seeds.1"), ("sft.optim.adam_betas=[1.0, 0.9]", "less than 1"),
    ("ppo.reward_clip_range=[1, .nan]", "finite"), ("ppo.actor_learning_rate=.inf", "finite"),
])
def test_bounds(override, match):
    with pytest.raises(ConfigError, match=match):
        load_params(None, [override])


def test_a_yaml_alias_bomb_fails_fast(tmp_path):
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(levels) + "\nsft: {max_steps: *a9}\n")  # 9^10 = 3.5e9 values once expanded
    assert path.stat().st_size < 700
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_NODES} values once YAML aliases"):
        load_params(path)
    assert time.perf_counter() - t0 < 5


def test_a_large_but_harmless_expansion_still_reports_a_short_message(tmp_path):
    """Below the node bound, a wrong value is still cut in the message (reprlib, bounded time)."""
    path = tmp_path / "p.yaml"
    path.write_text('a: &a ["x", "x", "x", "x", "x", "x", "x", "x"]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n'
                    "seed: [*b, *b, *b, *b, *b, *b, *b, *b]\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert len(str(err.value)) < 600 and "..." in str(err.value)


def test_file_size_bound_and_recursive_alias(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_YAML_BYTES + "\n")
    with pytest.raises(ConfigError, match="more than the"):
        load_tree(big)
    rec = tmp_path / "rec.yaml"
    rec.write_text("seed: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_tree(rec)


def test_short_repr_is_bounded():
    huge = [[list(range(10_000))] * 1000] * 1000
    t0 = time.perf_counter()
    text = short_repr(huge)
    assert len(text) <= 60 and time.perf_counter() - t0 < 0.1
    assert short_repr(10**5000) == "<an integer of about 5001 digits>" and len(short_repr("y" * 10_000)) <= 60
