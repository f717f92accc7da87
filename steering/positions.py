"""Which token positions an intervention touches: all, the prompt, the generated tokens, the last
prompt token (where the next answer is decided), or a token range.

The floor's `HookSite.positions` gives absolute positions in the (left-padded) token sequence,
also under generate's KV cache. "Prompt" and "generated" need one more fact, the padded prompt
length, and a token range counted from each prompt's own first token needs each row's left
padding; `RunState` carries both from the generation call to the interventions, so the same
intervention object works in a plain forward pass and in every generation step. The prompt length
may differ per row (`[batch]`): right-padded text read as a prompt (the neutral text a steering
setting's cost is measured on) ends at a different position in every row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from workbench.errors import WorkbenchError, choices_error

POSITION_KINDS = ("all", "prompt", "generated", "last", "range")


@dataclass(frozen=True)
class Positions:
    """`range`: tokens `start <= i < end` counted from each row's first real token (BOS is 0)."""

    kind: str = "all"
    start: int = 0
    end: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in POSITION_KINDS:
            raise choices_error("positions", self.kind, POSITION_KINDS)
        if self.kind == "range" and (self.start < 0 or (self.end is not None and self.end <= self.start)):
            raise WorkbenchError(f"token range {self.start}..{self.end} is empty or negative; give 0 <= start < end")

    @classmethod
    def parse(cls, text: str) -> "Positions":
        """`all`, `prompt`, `generated`, `last`, or `A:B` / `A:` (a token range)."""
        if ":" in text:
            a, _, b = text.partition(":")
            try:
                return cls("range", int(a or 0), int(b) if b else None)
            except ValueError:
                raise WorkbenchError(f"bad token range {text!r}; write START:END, e.g. 3:10 or 5:") from None
        return cls(text)

    def mask(self, positions: Tensor, batch: int, state: "RunState | None") -> Tensor | None:
        """Bool `[batch, seq]` of positions to touch, or None for all of them (the cheap path)."""
        if self.kind == "all":
            return None
        if self.kind != "range" and (state is None or state.prompt_len is None):
            raise WorkbenchError(
                f"positions {self.kind!r} need to know the prompt: use steering.generate, or steering(..., "
                f"prompt_len=N)"
            )
        pos = positions.to(torch.long).view(1, -1)
        if self.kind != "range":
            end = state.prompt_end(batch, positions.device)
        if self.kind == "prompt":
            m = pos < end
        elif self.kind == "generated":
            m = pos >= end
        elif self.kind == "last":
            m = pos == end - 1
        else:
            pad = (state or RunState()).pad(batch, positions.device).view(-1, 1)
            rel = pos - pad
            m = rel >= self.start
            if self.end is not None:
                m = m & (rel < self.end)
        return m.expand(batch, -1)


@dataclass
class RunState:
    """What the current run knows about its tokens: padded prompt length, each row's left padding."""

    prompt_len: int | Tensor | None = None  # one padded length, or `[batch]` (each row's prompt end)
    left_pad: Tensor | None = None  # [batch] number of pad tokens before each row's first real token
    extra: dict = field(default_factory=dict)

    def prompt_end(self, batch: int, device: torch.device) -> Tensor:
        """`[batch, 1]` position one past each row's last prompt token."""
        if isinstance(self.prompt_len, Tensor):
            if self.prompt_len.numel() != batch:
                raise ValueError(f"run state has prompt lengths for {self.prompt_len.numel()} rows; activation has "
                                 f"{batch}")
            return self.prompt_len.to(device=device, dtype=torch.long).view(-1, 1)
        return torch.full((batch, 1), int(self.prompt_len), dtype=torch.long, device=device)

    def pad(self, batch: int, device: torch.device) -> Tensor:
        if self.left_pad is None:
            return torch.zeros(batch, dtype=torch.long, device=device)
        if self.left_pad.numel() != batch:
            raise ValueError(f"run state has padding for {self.left_pad.numel()} rows; activation has {batch}")
        return self.left_pad.to(device=device, dtype=torch.long)
