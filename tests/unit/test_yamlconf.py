"""load_config: valid files load; each invalid one names the file, line and field path."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from pacs_node.config import Config, Rule
from pacs_node.yamlconf import load_config
from umsrep_core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"

VALID = """\
node:
  port: 11112
destinations:
  results:
    folder: results
routing:
  rules:
    - name: chest
      match:
        modality: [CR, DX]
      process:
        pipeline: cxr
        destinations: [results]
    - name: rest
      ignore: {}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def errors(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.exit_code == 2
    lines = str(caught.value).splitlines()
    assert all(line.startswith(f"{path}:") for line in lines)
    return [line.removeprefix(f"{path}:") for line in lines]


def test_valid_file_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    assert [r.name for r in config.routing.rules] == ["chest", "rest"]
    assert config.routing.rules[0].process is not None
    assert config.routing.rules[0].process.pipeline == "cxr"
    assert config.folder("results") == Path("umsrep-data/results")


def test_none_loads_the_packaged_defaults() -> None:
    config = load_config(None)
    assert [r.name for r in config.routing.rules] == ["chest-xray", "echo-doppler", "store-only"]
    assert list(config.destinations) == ["results"]
    assert config.node.ae_titles == ["UMSREP"]


@pytest.mark.parametrize("text", ["", "# nothing set\n", "---\n"])
def test_empty_file_means_model_defaults_without_rules(tmp_path: Path, text: str) -> None:
    config = load_config(write(tmp_path, text))
    assert config == Config()
    assert config.routing.rules == []


def test_a_single_value_where_a_list_is_meant_is_a_list_of_one(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID.replace("modality: [CR, DX]", "modality: CR")))
    assert config.routing.rules[0].match.modality == ["CR"]
    assert errors(tmp_path, VALID.replace("modality: [CR, DX]", "modality: 7")) == [
        "10: routing.rules.0[chest].match.modality: Input should be a valid list"]


def test_unknown_key_names_its_line(tmp_path: Path) -> None:
    assert errors(tmp_path, VALID.replace("  port: 11112", "  port: 11112\n  prot: 104")) == [
        "3: node.prot: Extra inputs are not permitted (did you mean 'port'?)"]


def test_a_misspelt_key_gets_the_closest_known_one(tmp_path: Path) -> None:
    text = VALID.replace("      match:", "      matches:").replace(
        "{}", "{}\n      quiet_second: 5")
    assert errors(tmp_path, text) == [
        "9: routing.rules.0[chest].matches: Extra inputs are not permitted (did you mean "
        "'match'?)",
        "16: routing.rules.1[rest].quiet_second: Extra inputs are not permitted (did you mean "
        "'quiet_seconds'?)"]


def test_an_api_port_needs_a_token(tmp_path: Path) -> None:
    assert errors(tmp_path, VALID + "api:\n  port: 8042\n") == [
        "16: api: api.port needs api.token_file: every request must carry its token"]


def test_wrong_type(tmp_path: Path) -> None:
    assert errors(tmp_path, VALID.replace("port: 11112", "port: eleven")) == [
        "2: node.port: Input should be a valid integer, unable to parse string as an integer"]


def test_bad_pipeline_name(tmp_path: Path) -> None:
    assert errors(tmp_path, VALID.replace("pipeline: cxr", "pipeline: ct")) == [
        "12: routing.rules.0[chest].process.pipeline: no pipeline 'ct' is installed "
        "(installed: cxr, echo_doppler)"]


def test_bad_regex(tmp_path: Path) -> None:
    text = VALID.replace("modality: [CR, DX]", "modality: [CR]\n        body_part_re: '(chest'")
    [line] = errors(tmp_path, text)
    assert line.startswith("11: routing.rules.0[chest].match.body_part_re: invalid regular "
                           "expression '(chest': missing )")


def test_unknown_destination_points_at_the_name(tmp_path: Path) -> None:
    text = VALID.replace("destinations: [results]", "destinations:\n          - results\n"
                         "          - pacs")
    assert errors(tmp_path, text) == [
        "15: routing.rules.0[chest].process.destinations.1: rule 'chest': unknown destination "
        "'pacs' (known: results)"]


def test_duplicate_rule_name_points_at_the_second(tmp_path: Path) -> None:
    assert errors(tmp_path, VALID.replace("name: rest", "name: chest")) == [
        "14: routing.rules.1[chest].name: rule names must be unique: 'chest' is used twice"]


def test_rule_with_two_actions(tmp_path: Path) -> None:
    text = VALID.replace("      ignore: {}", "      ignore: {}\n      forward:\n"
                         "        destinations: [results]")
    assert errors(tmp_path, text) == [
        "14: routing.rules.1[rest]: a rule needs exactly one action of process, forward, ignore "
        "(got ['forward', 'ignore'])"]


def test_missing_key_points_at_its_parent_mapping(tmp_path: Path) -> None:
    assert errors(tmp_path, VALID.replace("        pipeline: cxr\n", "")) == [
        "11: routing.rules.0[chest].process.pipeline: Field required"]


def test_every_error_on_its_own_line_in_file_order(tmp_path: Path) -> None:
    text = (VALID.replace("pipeline: cxr", "pipeline: ct")
            .replace("port: 11112", "port: 70000")
            .replace("folder: results", "folder: results\n    host: pacs"))
    assert errors(tmp_path, text) == [
        "2: node.port: Input should be less than or equal to 65535",
        "4: destinations.results: a folder destination takes no ae_title, host, port or tls",
        "13: routing.rules.0[chest].process.pipeline: no pipeline 'ct' is installed "
        "(installed: cxr, echo_doppler)",
    ]


def test_yaml_syntax_error(tmp_path: Path) -> None:
    [line] = errors(tmp_path, VALID.replace("modality: [CR, DX]", "modality: [CR, DX"))
    assert line.startswith("11: YAML: ")
    assert "expected ',' or ']'" in line


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, VALID + "node:\n  port: 104\n") == ["16: duplicate key 'node'"]


def test_python_tags_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    [line] = errors(tmp_path, f"node: !!python/object/apply:os.system ['touch {marker}']\n")
    assert line.startswith("1: YAML: could not determine a constructor")
    assert not marker.exists()


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    [line] = errors(tmp_path, "- node\n")
    assert line.startswith("1: (top level): Input should be a valid dictionary")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path)


def test_example_config_validates() -> None:
    config = load_config(EXAMPLE)
    assert list(config.destinations) == ["pacs", "archive", "results"]
    assert [r.action for r in config.routing.rules] == ["process", "process", "forward",
                                                        "ignore"]


def _models(model: type[BaseModel]) -> set[type[BaseModel]]:
    """`model` and every model its fields can hold, however nested (list, dict, Optional)."""
    def types(annotation: Any) -> Iterator[Any]:
        yield annotation
        for arg in get_args(annotation):
            yield from types(arg)

    found = {model}
    for field in model.model_fields.values():
        for t in types(field.annotation):
            if isinstance(t, type) and issubclass(t, BaseModel) and t not in found:
                found |= _models(t)
    return found


def _fields_set(value: Any, seen: dict[type[BaseModel], set[str]]) -> None:
    if isinstance(value, BaseModel):
        seen.setdefault(type(value), set()).update(value.model_fields_set)
        for name in value.model_fields_set:
            _fields_set(getattr(value, name), seen)
    elif isinstance(value, list | tuple):
        for item in value:
            _fields_set(item, seen)
    elif isinstance(value, dict):
        for item in value.values():
            _fields_set(item, seen)


def test_example_config_sets_every_field_of_every_model() -> None:
    seen: dict[type[BaseModel], set[str]] = {}
    _fields_set(load_config(EXAMPLE), seen)
    models = _models(Config)
    assert Rule in models and len(models) >= 13  # the walk reaches the nested models
    for model in models:
        assert model in seen, f"example.yaml has no {model.__name__}"
        missing = set(model.model_fields) - seen[model]
        assert not missing, f"example.yaml never sets {model.__name__}.{sorted(missing)}"
