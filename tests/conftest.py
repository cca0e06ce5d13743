"""Shared fixtures: real models fetched through the catalog (so CI works from a clean checkout)
and llama.cpp's vocab suite, kept in tests/data/llama-vocab."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VOCAB_DIR = REPO / "tests" / "data" / "llama-vocab"
# Fixtures that fetch or open a real model: a test using one must be marked slow (`-m "not slow"` stays fast).
REAL_MODEL_FIXTURES = frozenset({"gemma_path", "smollm_path", "qwen_path", "minilm_gguf_path", "minilm_hf_dir"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run a test that requests a real-model fixture without @pytest.mark.slow."""
    unmarked = [
        item.nodeid
        for item in items
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError("tests that load a real model need @pytest.mark.slow: " + ", ".join(unmarked))


@pytest.fixture(autouse=True)
def _real_models_only_in_slow_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Fail a test not marked slow that reaches a real model another way: through the catalog
    (a known model name, the default model) or a fixture fetched with request.getfixturevalue."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    import embedkit.catalog

    real, fetch = frozenset(embedkit.catalog.KNOWN_MODELS), embedkit.catalog.ensure_model

    def refuse_real(name: str, *args, **kwargs):
        if name in real:
            pytest.fail(f"{request.node.nodeid} loads the real model {name!r}: mark it @pytest.mark.slow")
        return fetch(name, *args, **kwargs)

    monkeypatch.setattr(embedkit.catalog, "ensure_model", refuse_real)
    yield
    fetched = sorted(REAL_MODEL_FIXTURES & set(request.fixturenames))
    if fetched:
        pytest.fail(f"{request.node.nodeid} uses {', '.join(fetched)}: mark it @pytest.mark.slow")


def _known(name: str) -> Path:
    from embedkit.catalog import ensure_model

    return ensure_model(name)


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    """llama.cpp's tokenizer test suite (vocab-only GGUFs with .inp/.out files)."""
    if not VOCAB_DIR.is_dir():
        pytest.fail(f"llama.cpp vocab fixtures not found at {VOCAB_DIR}")
    return VOCAB_DIR


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """Gemma 3 270M Q4_K_M (gemma3)."""
    return _known("gemma3-270m")


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (llama architecture, gpt2 tokenizer, pre smollm)."""
    return _known("smollm2-135m")


@pytest.fixture(scope="session")
def qwen_path() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2)."""
    return _known("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def minilm_gguf_path() -> Path:
    """all-MiniLM-L6-v2 converted to GGUF by embedkit (the default embedding model)."""
    return _known("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def minilm_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder (safetensors, config.json, tokenizer.json)."""
    import zipfile

    from embedkit.catalog import KNOWN_MODELS, _open_part

    out = tmp_path_factory.mktemp("minilm-hf")
    with _open_part(KNOWN_MODELS["all-minilm-l6-v2"].parts[0], out) as fh, zipfile.ZipFile(fh) as zf:
        zf.extractall(out / "all-MiniLM-L6-v2")
    return out / "all-MiniLM-L6-v2"
