"""Prompts of the first-letter task and the model's activations at each word.

SAEBench's prompt: up to 10 in-context examples "{word} has the first letter: {L}", one a line,
then "{word} has the first letter:" for the word asked about (each line starts with the
separator, the first one too). Activations are read at the word's own token (SAEBench's
`prompt_token_pos = -6` for this template), at the SAE's hook point. The prompt is built from
token ids (the word is one token), so every word's position is exact; the model's own prefix
(BOS) goes first, as in every other pass of ours.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from evals.absorption.vocab import Word

TEMPLATE = "{word} has the first letter:"
ICL_EXAMPLES = 10


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, word: Word, examples: list[Word], prefix: tuple[int, ...] = (),
               template: str = TEMPLATE, separator: str = "\n") -> tuple[list[int], int]:
    """Token ids of one prompt and the index of the asked word's token in them."""
    before, after = template.split("{word}")
    sep = _ids(tokenizer, separator)
    ids = list(prefix)
    for ex in examples:
        ids += sep + _ids(tokenizer, before) + [ex.token_id] + _ids(tokenizer, after) + \
            _ids(tokenizer, " " + ex.text.strip()[0].upper())
    ids += sep + _ids(tokenizer, before)
    pos = len(ids)
    ids += [word.token_id] + _ids(tokenizer, after)
    return ids, pos


def word_activations(lm: Any, hook: str, words: list[Word], *, pool: list[Word] | None = None,
                     icl_examples: int = ICL_EXAMPLES, template: str = TEMPLATE, batch_size: int = 32,
                     seed: int = 0, progress: bool = True) -> tuple[Tensor, list[str]]:
    """Activations `[len(words), d]` at each word's token at `hook`, and one prompt's text (for the record).

    The in-context examples of each prompt are drawn (seeded) from `pool` (default: `words`),
    never the word itself. Prompts of one batch are right-padded: a causal model's activation at
    the word does not see what follows it."""
    from workbench.hooks import capture

    pool = pool or words
    rng = random.Random(seed)
    prompts = []
    for w in words:
        exs = []
        while len(exs) < min(icl_examples, len(pool) - 1):
            ex = pool[rng.randrange(len(pool))]
            if ex.token_id != w.token_id:
                exs.append(ex)
        prompts.append(prompt_ids(lm.tokenizer, w, exs, tuple(lm.prefix_ids), template))
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="absorption prompts", unit="batch", disable=not progress):
        chunk = prompts[i:i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        tokens = torch.full((len(chunk), width), int(lm.pad_id), dtype=torch.long)
        for j, (ids, _) in enumerate(chunk):
            tokens[j, :len(ids)] = torch.tensor(ids)
        device = next(lm.bridge.parameters()).device
        acts = capture(lm, tokens.to(device), [hook])[hook]
        pos = torch.tensor([p for _, p in chunk], device=acts.device)
        out.append(acts[torch.arange(len(chunk), device=acts.device), pos].float().cpu())
    example = lm.tokenizer.decode(prompts[0][0]) if prompts else ""
    return torch.cat(out) if out else torch.empty(0, lm.d_model), [example]
