"""Config dataclasses and the CLI flags generated from them must agree."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from workbench import WorkbenchError, add_config_args, config_from_args, config_to_dict, load_config, save_config


@dataclass
class Example:
    cache: str = field(metadata={"help": "cache dir"})
    k: int = 32
    lr: Optional[float] = None
    arch: Literal["topk", "batchtopk"] = "topk"
    hooks: tuple[str, ...] = ("blocks.0.hook_resid_post",)
    compile: bool = False


def parse(argv: list[str]) -> Example:
    p = argparse.ArgumentParser()
    add_config_args(p, Example)
    return config_from_args(Example, p.parse_args(argv))


def test_defaults_and_required() -> None:
    cfg = parse(["--cache", "d"])
    assert cfg == Example(cache="d")
    with pytest.raises(SystemExit):
        parse([])


def test_every_kind_of_flag() -> None:
    cfg = parse(["--cache", "d", "--k", "7", "--lr", "0.5", "--arch", "batchtopk",
                 "--hooks", "a", "b", "--compile"])
    assert cfg == Example(cache="d", k=7, lr=0.5, arch="batchtopk", hooks=("a", "b"), compile=True)
    assert parse(["--cache", "d", "--no-compile"]).compile is False


def test_literal_rejects_unknown_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--cache", "d", "--arch", "gated"])
    assert "gated" in capsys.readouterr().err


def test_save_load_round_trip(tmp_path) -> None:
    cfg = Example(cache="x", k=3, lr=1e-3, hooks=("h1", "h2"))
    save_config(cfg, tmp_path / "cfg.json")
    assert json.loads((tmp_path / "cfg.json").read_text())["hooks"] == ["h1", "h2"]
    assert load_config(Example, tmp_path / "cfg.json") == cfg
    assert config_to_dict(cfg)["k"] == 3


def test_load_names_unknown_field() -> None:
    with pytest.raises(WorkbenchError, match="bogus"):
        load_config(Example, {"cache": "x", "bogus": 1})
