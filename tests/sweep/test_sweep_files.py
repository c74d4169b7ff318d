"""Sweep files refused in one line before anything runs (#25): names that are not folder names, YAML that does not
parse, storage URLs no database answers to. All of it without Optuna or SQLAlchemy (tests/test_bad_invocations.py
checks the imports in fresh processes)."""

import pytest

from gemkr_lab.config.experiment import ConfigError
from gemkr_lab.sweep.grid import load_sweep
from gemkr_lab.sweep.search_file import load_search_file
from gemkr_lab.sweep.storage_url import check_storage_url

GRID = "name: {name}\ncells: [tiny-cpu/full]\nseeds: [0]\n"
SEARCH = (
    "name: {name}\nbase: tiny-cpu/full\noverrides: [data.validation_size=0.2]\n"
    "search:\n  space:\n    train.lr: {{type: float, low: 1.0e-4, high: 1.0e-2}}\n"
)


@pytest.mark.parametrize("text", [GRID, SEARCH], ids=["grid", "search"])
@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "'x y'"])
def test_a_sweep_name_must_be_a_plain_folder_name(tmp_path, text, name):
    path = tmp_path / "s.yaml"
    path.write_text(text.format(name=name))
    load = load_sweep if text is GRID else load_search_file
    with pytest.raises(ConfigError, match=r"s\.yaml:1: name .* must be a plain folder name.*set root: DIR"):
        load(path)  # `../../x` wrote its runs two folders above the runs root


@pytest.mark.parametrize("name", ["demo", "lr-search_2", "v1.2", "2024"])
def test_plain_names_and_their_default_root(tmp_path, name):
    path = tmp_path / "s.yaml"
    path.write_text(GRID.format(name=name))
    assert load_sweep(path).root == f"runs/{name}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: g\ncells: [tiny-cpu/full\nseeds: [0]\n", r"s\.yaml:3: not valid YAML: expected ',' or ']'.*line 2"),
        ('name: "g\n', r"s\.yaml:2: not valid YAML: found unexpected end of stream"),
        ("name: g\n\tcells: []\n", r"s\.yaml:2: not valid YAML"),
    ],
)
def test_malformed_yaml_is_one_line_with_file_and_line(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_sweep(path)
    assert "\n" not in str(caught.value)  # PyYAML's own message spans several lines


def test_a_sweep_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"name: g\ncells: [caf\xe9]\n")
    with pytest.raises(ConfigError, match=r"s\.yaml:2: not UTF-8 text"):
        load_sweep(path)


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg2://me:pw@db:5432/x", "postgres://me@db/x", "sqlite:///runs/s.db", "mysql://me@db/x"]
)
def test_storage_urls_of_known_databases_pass_the_light_check(url):
    check_storage_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgress://me:s3cret@db/x", r"storage postgress://\.\.\.: names a database type SQLAlchemy does not know"),
        ("me:s3cret@db/x", "the storage is not a database URL"),
    ],
)
def test_storage_urls_no_database_answers_to_are_refused_without_the_password(url, message):
    with pytest.raises(ConfigError, match=message) as caught:
        check_storage_url(url)
    assert "s3cret" not in str(caught.value)
