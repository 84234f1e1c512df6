"""Pure torch functions on canonical layouts. No nnsight, no TransformerLens.

Shapes are `[batch, head, query, key]` for attention and `[batch, pos, d_model]`
for the residual stream; key sets are boolean masks `[batch, key]`.
"""

from sinklens.ops.analysis import contribution_sum, mean_query_attention, random_keys, random_keys_each
from sinklens.ops.boost import boost_image_scores
from sinklens.ops.contribution import attention_contribution, head_value_outputs
from sinklens.ops.contrastive import contrastive_logits, diffusion_noise, diffusion_schedule
from sinklens.ops.discovery import discover_sink_dims, massive_layers
from sinklens.ops.heads import image_centric, key_mass, mean_head_ratio, visual_nonsink_ratio, visual_sink_share
from sinklens.ops.masking import mask_keys, visible_keys
from sinklens.ops.methods import hgai_scores, spin_head_keep, vaf_scores
from sinklens.ops.redistribute import redistribute
from sinklens.ops.sinks import dimension_magnitudes, sink_dimension_value, sink_mask

__all__ = [
    "attention_contribution",
    "boost_image_scores",
    "contrastive_logits",
    "contribution_sum",
    "diffusion_noise",
    "diffusion_schedule",
    "dimension_magnitudes",
    "discover_sink_dims",
    "head_value_outputs",
    "hgai_scores",
    "image_centric",
    "key_mass",
    "mask_keys",
    "massive_layers",
    "mean_head_ratio",
    "mean_query_attention",
    "random_keys",
    "random_keys_each",
    "redistribute",
    "sink_dimension_value",
    "sink_mask",
    "spin_head_keep",
    "vaf_scores",
    "visible_keys",
    "visual_nonsink_ratio",
    "visual_sink_share",
]
