"""sinklens as an lmms-eval model: any sinklens stack on any lmms-eval image task, from one command.

    pip install "sinklens[lmms-eval]"
    lmms-eval --model sinklens \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,dtype=float16,var=true,rho=0.8,p=0.6,tau=20 \\
        --tasks pope --batch_size 8 --output_path out/lmms

lmms-eval finds the model through the `lmms_eval.models` entry-point group that
sinklens' pyproject.toml declares (lmms-eval's documented way for an outside
package to add a model); nothing of lmms-eval is copied or patched.
`model_manifest` is that entry point. It imports nothing heavy: lmms-eval loads
every entry point when it starts, and imports the model class
(`sinklens.integrations.lmms_eval.model.SinklensLMM`) only when `--model sinklens`
is asked for. The model arguments are parsed and checked by
`sinklens.integrations.lmms_eval.settings` (which does not import lmms-eval).
"""

from __future__ import annotations

from typing import Any

MODEL_ID = "sinklens"
CLASS_PATH = "sinklens.integrations.lmms_eval.model.SinklensLMM"


def model_manifest() -> Any:
    """The `ModelManifest` that registers `--model sinklens` (a simple, doc_to_visual + doc_to_text model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
