"""Integrations of sinklens into other tools, each through that tool's documented extension point.

- `sinklens.integrations.lmms_eval`: an lmms-eval model (`lmms-eval --model sinklens`),
  registered through lmms-eval's `lmms_eval.models` entry-point group.

Integrations sit on top of the house: they use only sinklens' public names
(`sinklens.load`, `sinklens.NnsightRunner`, the interventions, `LoadedModel.prepare_batch`).
"""
