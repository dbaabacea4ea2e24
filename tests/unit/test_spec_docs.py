"""docs/dataset-spec.md stays in step with the spec models: its examples load, every field has a
table row, and each row's default is the code's default."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from churn.spec import DatasetSpec, SpecError, load_spec

DOC = Path(__file__).resolve().parents[2] / "docs" / "dataset-spec.md"
TEXT = DOC.read_text()
YAML_BLOCKS = re.findall(r"^```yaml\n(.*?)^```", TEXT, flags=re.S | re.M)


def _models(model: type[BaseModel] = DatasetSpec, seen: dict | None = None) -> dict:
    """Every pydantic model reachable from `model` through its fields: {class name: class}."""
    seen = {} if seen is None else seen
    seen[model.__name__] = model
    for info in model.model_fields.values():
        for arg in _type_args(info.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__name__ not in seen:
                _models(arg, seen)
    return seen


def _type_args(annotation) -> list:
    args = typing.get_args(annotation)
    return [annotation] if not args else [a for arg in args for a in _type_args(arg)]


def _section(class_name: str) -> str:
    """The doc's `## …` section whose heading names the class: "## `events` (`EventsSpec`)"."""
    sections = re.split(r"^## ", TEXT, flags=re.M)
    found = [s for s in sections if f"(`{class_name}`)" in s.splitlines()[0]]
    assert len(found) == 1, f"docs/dataset-spec.md needs one '## … (`{class_name}`)' section"
    return found[0]


def _field_rows(section: str) -> dict[str, list[str]]:
    """Table rows of a section keyed by their first cell's `field`: {field: cells}."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) >= 4 and re.fullmatch(r"`[a-z_]+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


def _documented_default(cell: str):
    """The value a default cell states (`required`, `see …` for nested mappings, else YAML)."""
    if cell == "required" or cell.startswith("see "):
        return cell.split()[0]
    return yaml.safe_load(cell.replace("`", ""))


def _normal(value):
    if isinstance(value, tuple):
        return [_normal(v) for v in value]
    return value


def test_doc_has_yaml_examples():
    assert len(YAML_BLOCKS) >= 4


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.split("\n")[0])
def test_every_yaml_example_loads(tmp_path, block):
    path = tmp_path / "example.yaml"
    path.write_text(block)
    load_spec(path)


@pytest.mark.parametrize("class_name", sorted(_models()))
def test_every_field_is_documented_with_its_default(class_name):
    model = _models()[class_name]
    rows = _field_rows(_section(class_name))
    missing = sorted(set(model.model_fields) - set(rows))
    assert not missing, f"{class_name} fields missing from docs/dataset-spec.md: {missing}"
    for name, info in model.model_fields.items():
        stated = _documented_default(rows[name][2])
        if info.is_required():
            assert stated == "required", f"{class_name}.{name} is required, the doc says {stated}"
        elif isinstance(info.default, BaseModel):
            assert stated == "see", f"{class_name}.{name}: default cell should be 'see …'"
        else:
            assert stated == _normal(info.default), (
                f"{class_name}.{name}: the doc says default {stated!r}, the code {info.default!r}")


def test_every_field_name_appears_in_the_doc():
    names = {f for m in _models().values() for f in m.model_fields}
    assert not sorted(n for n in names if f"`{n}`" not in TEXT)


def test_spec_errors_point_to_the_doc(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).endswith("(see docs/dataset-spec.md)")
