"""Property-based bad input for every `sae` verb: wrong types, out of range and unknown values give
one line naming the flag or the value, exit 2, never a traceback.

The flags are read from the parsers themselves (a new flag is covered without editing this
file). `train` gets a real tiny cache, so a value that slipped through a check would start a
real run and fail the test by exiting 0, rather than fail later for some other reason.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(__import__("tempfile").gettempdir(), "sae-hypothesis"))
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import evals.browser.cli  # noqa: E402
import evals.cli  # noqa: E402
import harvesting.cli  # noqa: E402
import saes.cli  # noqa: E402
import steering.cli  # noqa: E402
from harvesting import CacheWriter  # noqa: E402
from workbench.cli import build_parser, main  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model name that is not here must fail at once, not retry the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
SETTINGS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True)
TMP = Path(__import__("tempfile").mkdtemp(prefix="sae-cli-props-"))


def _tiny_cache() -> Path:
    path = TMP / "acts"
    if not (path / "manifest.json").exists():
        w = CacheWriter(path, {"h": 4}, "float32", shard_tokens=64, header={"model": {"id": "synthetic"}, "context_length": 4})
        ids = torch.arange(128)
        w.add({"h": torch.randn(128, 4)}, {"token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32) // 8,
                                           "context_ids": ids // 4, "positions": (ids % 4).to(torch.int32)}, contexts=32)
        w.finish()
    return path


def _leaves(parser: argparse.ArgumentParser, prefix: list[str]):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sp in subs[0].choices.items():
        if name not in ("sae-info",):  # a hidden alias of `sae info`
            yield from _leaves(sp, prefix + [name])


PARSER = build_parser([harvesting.cli.register, saes.cli.register, evals.cli.register, evals.browser.cli.register,
                       steering.cli.register])
VERBS = {" ".join(argv): sp for argv, sp in _leaves(PARSER, [])}


def _options(kind: type) -> list[tuple[str, str]]:
    return sorted((verb, a.option_strings[0]) for verb, sp in VERBS.items() for a in sp._actions
                  if a.option_strings and a.type is kind)


def _base(verb: str) -> list[str]:
    """Everything a verb needs besides the flag under test, valid and cheap."""
    out = str(TMP / "out")
    return {
        "train": ["train", "--cache", str(_tiny_cache()), "--out", out, "--batch-size", "16", "--no-progress",
                  "--max-tokens", "32", "--expansion", "2", "--k", "2"],
        "harvest": ["harvest", "--model", "no-such-model-here", "--out", out, "--no-progress"],
        "cache info": ["cache", "info", str(_tiny_cache())],
        "cache verify": ["cache", "verify", str(_tiny_cache())],
        "cache convert": ["cache", "convert", "--cache", str(_tiny_cache()), "--dtype", "bfloat16", "--out", out],
        "hooks": ["hooks", "no-such-model-here"],
        "sae info": ["sae", "info", str(TMP / "no-sae")],
        "sae export": ["sae", "export", str(TMP / "no-sae"), "--to", "saelens", "--out", out],
        "eval": ["eval", "--sae", str(TMP / "no-sae"), "--cache", str(_tiny_cache())],
        "browse": ["browse", "--sae", str(TMP / "no-sae"), "--cache", str(_tiny_cache())],
        "steer": ["steer", "--sae", str(TMP / "no-sae"), "--prompt", "x", "--feature", "1", "--coeff", "1"],
        "steer-sweep": ["steer-sweep", "--sae", str(TMP / "no-sae"), "--out", out],
        "steer-consistency": ["steer-consistency", "--sae", str(TMP / "no-sae"), "--out", out],
    }[verb]


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:  # pragma: no cover - main returns codes
            rc = e.code
    return rc, err.getvalue()


def assert_one_line_exit_2(argv: list[str], *must_name: str) -> None:
    rc, err = run(argv)
    assert rc == 2, (argv, rc, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, (argv, err[-2000:])
    assert any(n in lines[0] for n in must_name), (argv, lines[0])


def test_every_verb_is_covered() -> None:
    assert set(VERBS) == {"harvest", "cache info", "cache verify", "cache convert", "hooks", "train", "sae info", "sae export", "eval",
                          "browse", "steer", "steer-sweep", "steer-consistency"}


not_an_int = st.one_of(st.sampled_from(["abc", "1.5", "", "1e3", "0x10"]),
                       st.text(alphabet="abcxyz.,-+ ", min_size=1, max_size=6).filter(lambda s: not s.strip().lstrip("+-").isdigit()))
not_a_float = st.one_of(st.sampled_from(["abc", "", "1,5", "0.1.2"]),
                        st.text(alphabet="abcxyz,", min_size=1, max_size=6))


@SETTINGS
@given(opt=st.sampled_from(_options(int)), value=not_an_int)
def test_wrong_type_for_an_integer_flag(opt, value) -> None:
    verb, flag = opt
    assert_one_line_exit_2([*_base(verb), f"{flag}={value}"], flag)


@SETTINGS
@given(opt=st.sampled_from(_options(float)), value=not_a_float)
def test_wrong_type_for_a_float_flag(opt, value) -> None:
    verb, flag = opt
    assert_one_line_exit_2([*_base(verb), f"{flag}={value}"], flag)


@pytest.mark.parametrize("flag", [f for v, f in _options(int) + _options(float) if v == "train"])
def test_a_double_dash_value_is_not_a_number(flag) -> None:
    # argparse drops a "--" value and hands the config an empty list
    assert_one_line_exit_2([*_base("train"), f"{flag}=--"], flag)


# Flags whose valid range is known: (verb, flag) -> strategy of values outside it.
nonpositive = st.integers(max_value=0)
negative = st.integers(max_value=-1)
bad_fraction = st.one_of(st.floats(max_value=-1e-6, allow_nan=False), st.floats(min_value=1.0 + 1e-6), st.just(math.nan))
bad_nonneg = st.one_of(st.floats(max_value=-1e-6, allow_nan=False), st.just(math.nan), st.just(math.inf))
OUT_OF_RANGE = {
    ("train", "--batch-size"): nonpositive, ("train", "--epochs"): nonpositive, ("train", "--max-tokens"): negative,
    ("train", "--k"): nonpositive, ("train", "--expansion"): nonpositive, ("train", "--init-sample-tokens"): nonpositive,
    ("train", "--k-aux"): negative, ("train", "--dead-tokens"): negative, ("train", "--log-every"): nonpositive,
    ("train", "--checkpoint-every"): negative, ("train", "--eval-tokens"): negative,
    ("train", "--heldout-fraction"): bad_fraction, ("train", "--warmup-fraction"): bad_fraction,
    ("train", "--decay-fraction"): bad_fraction, ("train", "--sparsity-warmup-fraction"): bad_fraction,
    ("train", "--threshold-ema"): bad_fraction, ("train", "--lr"): bad_nonneg, ("train", "--grad-clip"): bad_nonneg,
    ("train", "--aux-coef"): bad_nonneg, ("train", "--l1-coef"): bad_nonneg, ("train", "--l0-coef"): bad_nonneg,
    ("train", "--zipf-exponent"): st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just(math.nan)),
    ("train", "--adam-eps"): st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just(math.nan)),
    ("train", "--jumprelu-bandwidth"): st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just(math.nan)),
    ("harvest", "--tokens"): nonpositive, ("harvest", "--context-length"): nonpositive,
    ("harvest", "--batch-size"): nonpositive, ("harvest", "--shard-tokens"): nonpositive,
}


@SETTINGS
@given(data=st.data())
def test_out_of_range_values(data) -> None:
    verb, flag = data.draw(st.sampled_from(sorted(OUT_OF_RANGE)))
    value = data.draw(OUT_OF_RANGE[(verb, flag)])
    shown = repr(value) if isinstance(value, float) else str(value)
    assert_one_line_exit_2([*_base(verb), f"{flag}={value}"], flag, shown)


CLOSED_SETS = [("train", "--inference"), ("train", "--capacity"), ("train", "--init-b-dec"), ("train", "--decay"),
               ("train", "--precision"), ("train", "--aux-loss"), ("train", "--arch"), ("train", "--deterministic"),
               ("train", "--device"), ("harvest", "--dtype"), ("harvest", "--model-dtype"), ("harvest", "--device"),
               ("sae export", "--to")]
CLOSED_SETS += sorted((verb, a.option_strings[0]) for verb, sp in VERBS.items() for a in sp._actions
                      if verb in ("eval", "browse", "steer", "steer-sweep", "steer-consistency")
                      and a.option_strings and a.choices)  # the later verbs' closed sets, read from their parsers
unknown = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=10).map(lambda s: "zz" + s)


@SETTINGS
@given(opt=st.sampled_from(CLOSED_SETS), value=unknown)
def test_unknown_values_of_closed_sets(opt, value) -> None:
    verb, flag = opt
    assert_one_line_exit_2([*_base(verb), f"{flag}={value}"], value)


@SETTINGS
@given(verb=st.sampled_from(["cache info", "cache verify", "sae info", "sae export", "hooks"]),
       name=st.text(alphabet="abcxyz_-.", min_size=1, max_size=12).map(lambda s: "m" + s))
def test_missing_paths_and_models(verb, name) -> None:
    missing = str(TMP / "missing" / name)
    argv = _base(verb)
    argv[{"cache info": 2, "cache verify": 2, "sae info": 2, "sae export": 2, "hooks": 1}[verb]] = missing
    assert_one_line_exit_2(argv, name)
