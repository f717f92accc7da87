"""A TransformerLens 4 architecture adapter for CLIP's vision tower (`CLIPVisionModel`).

TransformerLens 4.3 bridges ViT and DeiT but not a stand-alone CLIP vision encoder, which is the
vision model interpretability work uses most. CLIP's tower is a pre-LN ViT with an extra
LayerNorm (`pre_layrnorm`) after the embeddings and differently named submodules, so the ViT
adapter carries over once its component mapping points at CLIP's names. The bridge runs the HF
forward itself (with hooks around the mapped modules), so `pre_layrnorm` runs as in HF and
`blocks.0.hook_resid_pre` is the normalised embedding the first block sees.

TransformerLens picks adapters from a static table; `register()` adds this one through the
factory's public `register_adapter` and the table the architecture lookup reads.
"""

from __future__ import annotations

from typing import Any

ARCHITECTURE = "CLIPVisionModel"


def _adapter_class() -> type:
    from transformer_lens.model_bridge.generalized_components import (
        AttentionBridge,
        BlockBridge,
        LinearBridge,
        MLPBridge,
        NormalizationBridge,
    )
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    from transformer_lens.model_bridge.supported_architectures.vit import ViTArchitectureAdapter

    class CLIPEmbeddingsBridge(GeneralizedComponent):
        """CLIP's embeddings take no `bool_masked_pos` (ViT's do); pixels go in positionally so hook_in fires."""

        def forward(self, pixel_values: Any, interpolate_pos_encoding: bool = False, **kwargs: Any) -> Any:
            return super().forward(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)

    class CLIPVisionArchitectureAdapter(ViTArchitectureAdapter):
        """ViT adapter with CLIP vision module names (embeddings, encoder.layers, post_layernorm)."""

        def _build_component_mapping(self, prefix: str, with_classifier: bool) -> dict[str, Any]:
            p = prefix
            ln = dict(config=self.cfg, use_native_layernorm_autograd=True)
            return {
                "embed": CLIPEmbeddingsBridge(name=f"{p}embeddings"),
                "blocks": BlockBridge(
                    name=f"{p}encoder.layers",
                    hook_alias_overrides={"hook_mlp_out": "mlp.out.hook_out", "hook_mlp_in": "mlp.in.hook_in"},
                    submodules={
                        "ln1": NormalizationBridge(name="layer_norm1", **ln),
                        "ln2": NormalizationBridge(name="layer_norm2", **ln),
                        "attn": AttentionBridge(
                            name="self_attn",
                            config=self.cfg,
                            submodules={
                                "q": LinearBridge(name="q_proj"),
                                "k": LinearBridge(name="k_proj"),
                                "v": LinearBridge(name="v_proj"),
                                "o": LinearBridge(name="out_proj"),
                            },
                        ),
                        "mlp": MLPBridge(name="mlp", config=self.cfg,
                                         submodules={"in": LinearBridge(name="fc1"), "out": LinearBridge(name="fc2")}),
                    },
                ),
                "ln_final": NormalizationBridge(name=f"{p}post_layernorm", **ln),
            }

        def prepare_model(self, hf_model: Any) -> None:
            prefix = "vision_model." if hasattr(hf_model, "vision_model") else ""
            self.component_mapping = self._build_component_mapping(prefix=prefix, with_classifier=False)

    return CLIPVisionArchitectureAdapter


def register() -> None:
    """Make `boot` accept a `CLIPVisionModel` (idempotent)."""
    from transformer_lens.factories import architecture_adapter_factory as factory

    if ARCHITECTURE in factory.SUPPORTED_ARCHITECTURES:
        return
    cls = _adapter_class()
    factory.SUPPORTED_ARCHITECTURES[ARCHITECTURE] = cls
    factory.ArchitectureAdapterFactory.register_adapter(ARCHITECTURE, cls)
