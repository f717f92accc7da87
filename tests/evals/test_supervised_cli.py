"""`sae eval --sae DIR --task ioi`: the table into eval.json and EvalResult, and the one-line refusals."""

from __future__ import annotations

import json

import pytest

from saes import save_sae
from workbench.cli import main

from .conftest import HOOK, make_sae
from .test_cli import _error


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ioi_sae") / "topk"
    save_sae(make_sae(num_features=96, k=8, seed=3), d)
    return d


SMALL = ["--task-fit-prompts", "24", "--task-test-prompts", "6", "--no-progress"]


def test_task_eval_writes_rows_per_site_and_attribute(sae_dir, tiny_model_dir, capsys):
    rc = main(["eval", "--sae", str(sae_dir), "--task", "ioi", "--model", str(tiny_model_dir),
               "--task-min-accuracy", "0", *SMALL])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads((sae_dir / "eval.json").read_text())
    sec = data["task"]
    assert sec["baseline"]["prompts"] == 6 and 0.0 <= sec["baseline"]["accuracy"] <= 1.0
    rows = sec["rows"]
    assert [(r["site"], r["attribute"]) for r in rows] == [
        (f"{HOOK}@{p}", a) for p in ("S2", "END") for a in ("IO", "S", "Pos")]
    for r in rows:
        for key in ("ld_clean", "ld_mean_ablated", "sufficiency_mean", "necessity_mean", "sae_sufficiency",
                    "sae_necessity", "edit_acc_none", "edit_acc_supervised", "edit_acc_sae_k2", "edit_acc_sae_k4",
                    "edit_acc_sae_k6", "edit_magnitude_supervised", "edit_magnitude_sae_k6", "f1_features",
                    "occluded_values", "split_features"):
            assert key in r, key
        assert 0.0 <= r["edit_acc_sae_k6"] <= 1.0
    # the baseline comes first in what is printed, then the table
    assert out.index("accuracy") < out.index("edit sup") and "Pos" in out
    from evals.result import EvalResult

    r = EvalResult(sae=data["sae"], task=sec)  # the notebook's view of what eval.json holds
    assert r.to_dict()["task"] == sec
    assert "edit sup" in str(r) and "edit sup" in r._repr_html_()


def test_model_that_cannot_do_the_task_is_one_line(sae_dir, tiny_model_dir, capsys):
    err = _error(["eval", "--sae", str(sae_dir), "--task", "ioi", "--model", str(tiny_model_dir), *SMALL], capsys)
    assert "cannot do the ioi task" in err and "chance 50%" in err


def test_hook_point_that_does_not_exist_is_one_line(sae_dir, tiny_model_dir, capsys):
    err = _error(["eval", "--sae", str(sae_dir), "--task", "ioi", "--model", str(tiny_model_dir),
                  "--task-hooks", "blocks.7.hook_resid_post", "--task-min-accuracy", "0", *SMALL], capsys)
    assert "blocks.7.hook_resid_post" in err and "valid hook points" in err


def test_unknown_task_is_one_line(sae_dir, tiny_model_dir, capsys):
    err = _error(["eval", "--sae", str(sae_dir), "--task", "nope", "--model", str(tiny_model_dir), *SMALL], capsys)
    assert "nope" in err and "ioi" in err
