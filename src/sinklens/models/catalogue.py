"""The hook catalogue: one TOML file per architecture family in `hooks/`.

A file maps every TransformerLens-style hook name (see `sinklens.hook_points`)
to the path where a backend finds it, and says where the image token id, the
text model's config and the patch grid come from. Code asks the catalogue; no module
path is written anywhere else.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path

from sinklens.errors import CatalogueError, UnknownArchitectureError
from sinklens.hf import AttentionRoute
from sinklens.hf.rows_attention import ROWS_OPS
from sinklens.hook_points import LAYER_POINTS, MODEL_POINTS, VISION_LAYER_POINTS, HookPoint
from sinklens.models.grids import GRID_RULES

_REQUIRED = ("architectures", "family", "image_token_field", "text_config_field", "grid")
_GRID_RULES = tuple(GRID_RULES)
_POINTS = frozenset(LAYER_POINTS) | frozenset(MODEL_POINTS)
TL_ENTRY = "entry"
# the rows route's table holds one key: the attention call (its inputs select the rows); the points the route
# moves are that call's named operations (ROWS_OPS)
ROWS_CALL = "attention_call"
_PATH_END = re.compile(r"\.(input|output(\.\d+)?)$")


def catalogue_dir() -> Path:
    """`sinklens/hooks` inside an installed wheel, else `hooks/` of a source checkout."""
    packaged = resources.files("sinklens") / "hooks"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[3] / "hooks"
    if checkout.is_dir():
        return checkout
    raise CatalogueError(
        f"no hook catalogue found in {packaged} or {checkout}; reinstall sinklens "
        "(the wheel ships hooks/ as sinklens/hooks)."
    )


@dataclass(frozen=True)
class HookCatalogue:
    """What one catalogue file says about an architecture family."""

    source: Path
    architectures: tuple[str, ...]
    family: str
    image_token_field: str
    text_config_field: str
    grid: str
    nnsight: dict[str, str]
    # TransformerBridge hook names (TransformerLens 4); empty when the file has no [transformer_lens] table
    transformer_lens: dict[str, str] = field(default_factory=dict)
    # the rows route's attention call ([nnsight_rows] attention_call); None when the file has none
    rows_attention_call: str | None = None
    # model inputs the family needs besides ids, mask and pixels (Gemma 3: token_type_ids)
    required_inputs: tuple[str, ...] = ()
    # the architecture name TransformerLens' adapter registry knows the class by, where it differs (SmolVLM: Idefics3)
    transformer_lens_architecture: str | None = None
    # [vision]: the tower's and the projector's module paths; the tower's own points are those of its type
    # (vision_config.model_type, set by `for_tower` at load) in hooks/vision/towers.toml
    vision: dict[str, str] = field(default_factory=dict)
    tower_type: str | None = None

    def for_tower(self, tower_type: str | None) -> HookCatalogue:
        """This catalogue for a model whose vision tower is of type `tower_type` (vision_config.model_type)."""
        return replace(self, tower_type=tower_type)

    def vision_path(self, hook: HookPoint) -> str:
        """The nnsight path of a vision point (`vision.blocks.{l}.*`, `vision.hook_out`, `projector.hook_out`)."""
        if not self.vision:
            raise CatalogueError(f"{self.source} has no [vision] table: its vision tower's points are not catalogued")
        if hook.kind == "vision.hook_out":
            return f"{self.vision['projector']}.input"
        if hook.kind == "projector.hook_out":
            return f"{self.vision['projector']}.output"
        point = hook.kind.removeprefix("vision.")
        points = tower_points(self.tower_type or "unknown")
        if point not in points:
            known = ", ".join(f"vision.blocks.{{layer}}.{p}" for p in points)
            raise CatalogueError(
                f"the {self.tower_type} vision tower has no {point} point in hooks/vision/towers.toml (it has: "
                f"{known}); use one of those, or add the path there"
            )
        return f"{self.vision['tower']}.{points[point].format(layer=hook.vision_layer)}"

    def nnsight_path(self, hook: HookPoint, route: AttentionRoute = "eager") -> str:
        """The nnsight path of a hook point on an attention route ("eager" or "rows"), with its layer filled in."""
        if hook.in_vision:
            return self.vision_path(hook)
        if route == "rows" and hook.kind in ROWS_OPS:
            return f"{self.rows_call(hook.layer)}.source.{ROWS_OPS[hook.kind]}.output"
        template = self.nnsight[hook.kind]
        return template.format(layer=hook.layer) if hook.kind in LAYER_POINTS else template

    def rows_call(self, layer: int) -> str:
        """The nnsight path of layer `layer`'s call of the rows route's attention function."""
        if self.rows_attention_call is None:
            raise CatalogueError(
                f"{self.source} has no [nnsight_rows] table, so {', '.join(self.architectures)} cannot run the rows "
                "route; load it with attention='eager', or add the table (see hooks/llava.toml)"
            )
        return self.rows_attention_call.format(layer=layer)

    def transformer_lens_name(self, hook: HookPoint) -> str:
        """The TransformerBridge hook name of a hook point, with its layer filled in."""
        if hook.in_vision:
            raise CatalogueError(
                f"{hook.name!r} is a vision-tower point, which the TransformerLens backend does not hook (its bridges "
                "map the language model); run it on the nnsight backend (sinklens.NnsightRunner)"
            )
        template = self._transformer_lens_table()[hook.kind]
        return template.format(layer=hook.layer) if hook.kind in LAYER_POINTS else template

    @property
    def transformer_lens_entry(self) -> str:
        """The bridge hook that fires once at the start of every forward pass (counts decoding steps)."""
        return self._transformer_lens_table()[TL_ENTRY]

    def _transformer_lens_table(self) -> dict[str, str]:
        if not self.transformer_lens:
            raise CatalogueError(
                f"{self.source} has no [transformer_lens] table, so the TransformerLens backend cannot run "
                f"{', '.join(self.architectures)}; add one (see hooks/llava.toml) or use the nnsight backend"
            )
        return self.transformer_lens

    @classmethod
    def from_file(cls, path: Path) -> HookCatalogue:
        """Read and check one catalogue file; every problem names the file and the key."""
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise CatalogueError(f"{path} is not valid TOML: {e}") from e
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise CatalogueError(f"{path} lacks {', '.join(missing)}; every catalogue file needs {', '.join(_REQUIRED)}")
        if data["grid"] not in _GRID_RULES:
            raise CatalogueError(f"{path}: grid rule {data['grid']!r} is not one of {_GRID_RULES}")
        nnsight = _table(path, data, "nnsight", _POINTS, required=True)
        for point, template in nnsight.items():
            if not _PATH_END.search(template):
                raise CatalogueError(f"{path} [nnsight] {point}: {template!r} must end in .input, .output or .output.N")
        rows = _table(path, data, "nnsight_rows", frozenset({ROWS_CALL}))
        return cls(
            source=path,
            architectures=tuple(data["architectures"]),
            family=data["family"],
            image_token_field=data["image_token_field"],
            text_config_field=data["text_config_field"],
            grid=data["grid"],
            nnsight=nnsight,
            transformer_lens=_table(path, data, "transformer_lens", _POINTS | {TL_ENTRY}),
            rows_attention_call=rows.get(ROWS_CALL),
            required_inputs=tuple(data.get("required_inputs", ())),
            transformer_lens_architecture=data.get("transformer_lens_architecture"),
            vision=_table(path, data, "vision", frozenset({"tower", "projector"})),
        )


def _table(path: Path, data: dict[str, object], name: str, keys: frozenset[str], *, required: bool = False) -> dict[str, str]:
    """A table of a catalogue file holding exactly `keys` (an absent optional table: empty)."""
    table = dict(data.get(name, {}))  # type: ignore[call-overload]
    if not table and not required:
        return {}
    unknown, absent = sorted(set(table) - keys), sorted(keys - set(table))
    if unknown or absent:
        raise CatalogueError(f"{path} [{name}]: unknown keys {unknown}, missing keys {absent}; the keys are {sorted(keys)}")
    return table


@cache
def _towers(directory: Path) -> dict[str, dict[str, str]]:
    path = directory / "vision" / "towers.toml"
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise CatalogueError(f"cannot read the vision towers' catalogue {path}: {e}") from e
    for tower, table in data.items():
        unknown = sorted(set(table) - set(VISION_LAYER_POINTS))
        if unknown or "hook_resid_post" not in table:
            raise CatalogueError(f"{path} [{tower}]: unknown keys {unknown}; keys are {list(VISION_LAYER_POINTS)}, "
                                 "hook_resid_post required")  # fmt: skip
    return data


def tower_points(tower_type: str) -> dict[str, str]:
    """The vision points of a tower type (vision_config.model_type): point -> path relative to the tower."""
    towers = _towers(catalogue_dir())
    if tower_type not in towers:
        raise CatalogueError(
            f"hooks/vision/towers.toml describes no {tower_type!r} vision tower (it has {', '.join(towers)}); add a "
            "table for it to hook the tower"
        )
    return dict(towers[tower_type])


@cache
def _all_catalogues(directory: Path) -> tuple[HookCatalogue, ...]:
    return tuple(HookCatalogue.from_file(path) for path in sorted(directory.glob("*.toml")))


def supported_architectures() -> list[str]:
    """Every model class some catalogue file describes."""
    return sorted(a for cat in _all_catalogues(catalogue_dir()) for a in cat.architectures)


def catalogue_for(architecture: str) -> HookCatalogue:
    """The catalogue that describes `architecture` (an HF model class name)."""
    for cat in _all_catalogues(catalogue_dir()):
        if architecture in cat.architectures:
            return cat
    raise UnknownArchitectureError(
        f"no hook catalogue describes {architecture!r}. Supported: {', '.join(supported_architectures())}. "
        f"To add one, write hooks/<family>.toml (copy the closest file in {catalogue_dir()} and change the "
        f"paths), a grid rule if its images are laid out differently, a tiny built-in and its tests: see "
        f"'Adding an architecture' in docs/architecture.md."
    )
