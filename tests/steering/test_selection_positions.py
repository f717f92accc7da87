"""Every steered generation says how many positions it steered, so a hook that fires on the prompt but
not on the generated tokens (or skips length-1 inputs under the KV cache) shows in the output."""

from __future__ import annotations

import torch

from steering import Positions, add_feature, generate


def test_every_read_position_is_steered_under_positions_all_with_the_kv_cache(tiny_lm, tiny_sae):
    prompts = ["the cat sat on the mat", "a dog", "hello there"]  # different lengths: left padding in the batch
    n_new = 5
    iv = add_feature(tiny_sae, 3, 2.0, positions=Positions("all"))
    gen = generate(tiny_lm, prompts, [iv], max_new_tokens=n_new)
    for i in range(len(prompts)):
        # The model reads the prompt (BOS included) and every generated token but the last, which it
        # only writes: prompt + generated - 1 positions pass the hook, one at a time after the prompt.
        read = len(gen.prompt_ids[i]) + n_new - 1
        assert gen.read_positions[i] == read
        assert gen.steered_positions[i] == [read]


def test_generated_only_steering_counts_only_generated_positions(tiny_lm, tiny_sae):
    prompts = ["the cat sat on the mat", "a dog"]
    gen = generate(tiny_lm, prompts, [add_feature(tiny_sae, 3, 2.0, positions=Positions("generated")),
                                      add_feature(tiny_sae, 5, 1.0, positions=Positions("prompt"))],
                   max_new_tokens=4)
    for i in range(len(prompts)):
        assert gen.steered_positions[i] == [4 - 1, len(gen.prompt_ids[i])]


def test_an_unsteered_generation_steers_nothing(tiny_lm):
    gen = generate(tiny_lm, ["a dog"], max_new_tokens=3)
    assert gen.steered_positions == [[]]
    assert gen.read_positions == [len(gen.prompt_ids[0]) + 3 - 1]
