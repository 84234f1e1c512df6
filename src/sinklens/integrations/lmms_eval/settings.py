"""The model arguments of `lmms-eval --model sinklens`, parsed and checked before anything loads.

lmms-eval hands a model its `--model_args` as keyword arguments, values already
turned into bool / int / float where they look like one. `parse_model_args`
takes them, refuses unknown keys (naming the known ones), and builds the stack
so that a parameter out of range fails at once, with sinklens' own message:

    >>> s = parse_model_args({"pretrained": "tiny-llava", "var": True, "rho": 0.8, "p": 0.6, "tau": 20})
    >>> [type(member).__name__ for member in s.stack()]
    ['FindSinks', 'VAR']
    >>> parse_model_args({"pretrained": "tiny-llava", "vcd": True}).stack()
    [VCD(alpha=1.0, beta=0.1, noise_step=500, seed=0)]
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from sinklens.errors import ParameterError
from sinklens.interventions import VAR, VCD, FindSinks
from sinklens.interventions.params import Convention

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class PluginSettings:
    """What `--model_args` asked for: the model, how to load it, the stack, the batch size."""

    pretrained: str  # anything sinklens.load accepts: a built-in name, a hub id, a local folder
    # the stack: VAR (with FindSinks) and/or VCD; with neither, the plain model
    var: bool = False
    rho: float = 0.8
    p: float = 0.6
    summ: float = 0.2
    tau: float | None = None  # None: the model's registered tau, else 20 (FindSinks' rule)
    tau_fraction: float | None = None
    convention: Convention = "paper"
    sink_dims: tuple[int, ...] | None = None
    vcd: bool = False
    vcd_alpha: float = 1.0
    vcd_beta: float = 0.1
    # running: requests about one image compute its prefix once (sinklens.run.prefixes; the answers are the same)
    shared_prefix: bool = True
    batch_size: int = 1
    dtype: str = "float32"
    device: str | None = None  # default: the accelerator's device of this process (cuda:N, else cpu)
    device_map: str | dict[str, Any] | None = None  # passed to sinklens.load (accelerate); excludes device

    def stack(self) -> list[Any]:
        """The interventions every request runs under, in run order (VAR's FindSinks first)."""
        members: list[Any] = []
        if self.var:
            members.append(FindSinks(dims=self.sink_dims, tau=self.tau, tau_fraction=self.tau_fraction,
                                     convention=self.convention))  # fmt: skip
            members.append(VAR(p=self.p, rho=self.rho, summ=self.summ, convention=self.convention))
        if self.vcd:
            members.append(VCD(alpha=self.vcd_alpha, beta=self.vcd_beta))
        return members

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


KNOWN = tuple(f.name for f in fields(PluginSettings))
_BOOLS = {"var", "vcd", "shared_prefix"}
_FLOATS = {"rho", "p", "summ", "tau", "tau_fraction", "vcd_alpha", "vcd_beta"}


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ParameterError(f"model_args {key}={value!r}: give true or false")


def _float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ParameterError(f"model_args {key}={value!r}: give a number")
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise ParameterError(f"model_args {key}={value!r}: give a number") from e


def _batch_size(value: Any) -> int:
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ParameterError(
            f"batch_size={value!r}: give a whole number >= 1 (sinklens has no 'auto' batch size: "
            "pick one that fits the device; each prompt answers as it would alone)"
        )
    return int(text)


def _sink_dims(value: Any) -> tuple[int, ...]:
    # model_args are split on commas, so several dims come as 1415:2533 (or "1415 2533", [1415;2533])
    dims = tuple(int(d) for d in re.findall(r"-?\d+", str(value)))
    if not dims or any(d < 0 for d in dims):
        raise ParameterError(f"sink_dims={value!r}: give non-negative dimension indices separated by ':', e.g. 1415:2533")
    return dims


def _device_map(value: Any) -> str | dict[str, Any]:
    text = str(value).strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParameterError(f"device_map={text!r} is not valid JSON: {e}. Quote it whole in --model_args") from e
        return dict(parsed)
    return text


def parse_model_args(args: Mapping[str, Any]) -> PluginSettings:
    """Check lmms-eval's model arguments and build the settings; every error names the fix."""
    args = {key: value for key, value in args.items() if value is not None}
    args.pop("max_batch_size", None)  # lmms-eval passes it for its 'auto' batch size, which sinklens has not
    unknown = sorted(set(args) - set(KNOWN))
    if unknown:
        raise ParameterError(
            f"unknown model_args {', '.join(unknown)} for --model sinklens; known: {', '.join(KNOWN)}"
        )
    if "pretrained" not in args:
        raise ParameterError(
            "--model sinklens needs pretrained=NAME_OR_PATH in --model_args: a built-in (toy-llava, tiny-llava, ...), "
            "a hub id or a local folder"
        )
    values: dict[str, Any] = {"pretrained": str(args.pop("pretrained"))}
    for key, value in args.items():
        if key in _BOOLS:
            values[key] = _bool(key, value)
        elif key in _FLOATS:
            values[key] = _float(key, value)
        elif key == "batch_size":
            values[key] = _batch_size(value)
        elif key == "sink_dims":
            values[key] = _sink_dims(value)
        elif key == "device_map":
            values[key] = _device_map(value)
        elif key == "dtype":
            if str(value) not in DTYPES:
                raise ParameterError(f"dtype={value!r}: give one of {', '.join(DTYPES)}")
            values[key] = str(value)
        elif key == "convention":
            values[key] = str(value)
        else:  # device
            values[key] = str(value)
    settings = PluginSettings(**values)
    if settings.device is not None and settings.device_map is not None:
        raise ParameterError(
            f"give device ({settings.device!r}) or device_map ({settings.device_map!r}), not both: a device map "
            "already says where every module goes"
        )
    settings.stack()  # build it once now: a parameter out of range fails before the model loads
    return settings
