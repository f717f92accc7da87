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


# ---- field metadata: choices (eager and lazy), primary flag spelling, hidden aliases

_LAZY_REGISTRY: list[str] = ["alpha"]  # filled after the dataclass is defined, like an import-time registry


@dataclass
class Renamed:
    hook: tuple[str, ...] = field(default=(), metadata={"help": "hook points", "flag": "--hooks", "aliases": ("--hook",)})
    loss: str = field(default="auto", metadata={"help": "aux loss", "choices": ("auto", "auxk", "none"), "what": "aux loss"})
    kind: str = field(default="alpha", metadata={"help": "a registered kind", "choices": lambda: tuple(_LAZY_REGISTRY)})
    arch: tuple[str, ...] = field(default=("topk",), metadata={"help": "architectures", "choices": ("topk", "relu")})
    note: str = field(default="", metadata={"help": "free text"})
    limit: Optional[int] = field(default=None, metadata={"help": "optional cap"})
    fast: bool = field(default=False, metadata={"help": "go fast", "aliases": ("--quick",)})


def renamed_parser():
    from workbench.cli import Parser

    _LAZY_REGISTRY[:] = ["alpha", "beta"]
    p = Parser(prog="t")
    add_config_args(p, Renamed)
    return p


def test_flag_and_hidden_aliases_parse_to_the_field() -> None:
    p = renamed_parser()
    assert config_from_args(Renamed, p.parse_args(["--hooks", "a", "b"])).hook == ("a", "b")
    assert config_from_args(Renamed, p.parse_args(["--hook", "a"])).hook == ("a",)
    assert config_from_args(Renamed, p.parse_args([])) == Renamed()
    assert config_from_args(Renamed, p.parse_args(["--quick"])).fast is True
    assert config_from_args(Renamed, p.parse_args(["--no-quick"])).fast is False
    assert config_from_args(Renamed, p.parse_args(["--fast"])).fast is True
    help_text = p.format_help()
    assert "--hooks HOOK [HOOK ...]" in help_text
    for hidden in ("--hook ", "--hook\n", "--quick", "--no-quick"):
        assert hidden not in help_text, hidden


def test_choices_shown_in_help_with_lazy_registry_read_at_build_time() -> None:
    help_text = renamed_parser().format_help().replace("\n", " ")
    help_text = " ".join(help_text.split())  # argparse wraps lines
    assert "(choices: auto, auxk, none; default: auto)" in help_text
    assert "(choices: alpha, beta; default: alpha)" in help_text  # "beta" was registered after the class
    assert "(choices: topk, relu; default: topk)" in help_text
    assert "(default: )" not in help_text and "default: None" not in help_text
    assert "free text" in help_text and "free text (" not in help_text
    assert "optional cap" in help_text and "optional cap (" not in help_text


def test_choices_checked_for_every_value(capsys: pytest.CaptureFixture[str]) -> None:
    p = renamed_parser()
    assert config_from_args(Renamed, p.parse_args(["--kind", "beta", "--arch", "relu", "topk"])).arch == ("relu", "topk")
    for argv, bad, shown in ((["--loss", "zipf"], "unknown aux loss 'zipf'", "auto, auxk, none"),
                             (["--kind", "gamma"], "unknown value 'gamma'", "alpha, beta"),
                             (["--arch", "topk", "gated"], "unknown value 'gated'", "topk, relu")):
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"t: error: argument {argv[0]}: "), err
        assert f"{bad}; valid choices: {shown}" in err


def test_literal_choices_still_typed() -> None:
    @dataclass
    class Numbers:
        bits: Literal[8, 16] = 8

    p = argparse.ArgumentParser()
    add_config_args(p, Numbers)
    assert config_from_args(Numbers, p.parse_args(["--bits", "16"])).bits == 16
    with pytest.raises(SystemExit):
        p.parse_args(["--bits", "12"])


def test_required_field_with_alias_is_refused() -> None:
    @dataclass
    class Bad:
        cache: str = field(metadata={"aliases": ("--old-cache",)})

    with pytest.raises(TypeError, match="cannot have aliases"):
        add_config_args(argparse.ArgumentParser(), Bad)
