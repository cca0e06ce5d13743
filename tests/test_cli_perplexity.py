"""`embedkit perplexity` on a tiny random-weight model: the figure against an independent computation from
all-position logits (llama-perplexity's chunking and BOS rule), --save-logits / --kl-base in llama.cpp's file
format, and bad input as one-line errors. (PPL against llama-perplexity itself: benchmarks/RESULTS.md.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedkit.cli.main import main
from embedkit.evaluate.logits_file import quantize_log_probs, read_logits_base, stored_log_probs
from embedkit.models import load_model
from embedkit.tokenizer import load_tokenizer

TEXT = (Path(__file__).resolve().parent / "data" / "fidelity" / "prose.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from embedkit.testing.random_models import write_random_model

    return write_random_model(tmp_path_factory.mktemp("ppl") / "tiny-q8.gguf", "llama", "tiny", "Q8_0", seed=11)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ppl_text") / "text.txt"
    path.write_text(TEXT[:900], encoding="utf-8")
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(["perplexity", *args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def expected_ppl(path: Path, text: str, n_ctx: int) -> tuple[float, int, int]:
    """llama-perplexity's definition, written out: tokens with BOS, chunks of n_ctx with BOS first, each scored
    on positions n_ctx//2 .. n_ctx-2 predicting the next token."""
    tok = load_tokenizer(path)
    ids = np.array(tok.encode(text, add_special=True))
    m = load_model(path)
    n_chunk, first, nll = len(ids) // n_ctx, n_ctx // 2, []
    for c in range(n_chunk):
        chunk = ids[c * n_ctx : (c + 1) * n_ctx].copy()
        chunk[0] = tok.bos_id
        logits = m.forward(chunk, m.new_state(n_ctx), 0, all_positions=True).astype(np.float64)
        lp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1,
                                                                                                      keepdims=True)
        for p in range(first, n_ctx - 1):
            nll.append(-lp[p, chunk[p + 1]])
    return float(np.exp(np.mean(nll))), n_chunk, len(nll)


def test_perplexity_json_matches_the_definition(tiny: Path, text_file: Path, capsys) -> None:
    code, out, err = run(capsys, "-m", str(tiny), "-f", str(text_file), "-c", "64", "--json", "--device", "cpu")
    assert code == 0, err
    body = json.loads(out)
    assert set(body) == {"ppl", "n_chunks", "tokens_scored"}
    ppl, n_chunk, n_scored = expected_ppl(tiny, text_file.read_text(), 64)
    assert body["n_chunks"] == n_chunk >= 2 and body["tokens_scored"] == n_scored == n_chunk * 31
    assert body["ppl"] == pytest.approx(ppl, rel=1e-4)
    # smaller batches (-b) and the text output give the same figure
    code, out, err = run(capsys, "-m", str(tiny), "-f", str(text_file), "-c", "64", "-b", "16", "--device", "cpu")
    assert code == 0 and out.startswith("Final estimate: PPL = ") and f"{body['ppl']:.3f}"[:-1] in out, out
    assert err.startswith("[1]"), err


def test_save_logits_then_kl_base(tiny: Path, text_file: Path, tmp_path: Path, capsys) -> None:
    base = tmp_path / "base.kld"
    code, out, err = run(capsys, "-m", str(tiny), "-f", str(text_file), "-c", "64", "--json", "--save-logits",
                         str(base), "--device", "cpu", "--cpu-math", "float32")
    assert code == 0, err
    saved = read_logits_base(base)
    first = json.loads(out)
    assert (saved.n_ctx, saved.n_chunk) == (64, first["n_chunks"])
    assert saved.rows.shape[0] == first["tokens_scored"]
    # the same model against its own base: KL only from the base's 16-bit storage; another arithmetic: larger
    code, out, err = run(capsys, "-m", str(tiny), "--kl-base", str(base), "--json", "--device", "cpu")
    assert code == 0, err
    kl = json.loads(out)["kl"]
    # (the stored log-probabilities are not exactly normalised, so a near-zero mean may fall just below 0)
    assert kl["same_top"] == 1.0 and abs(kl["kld_mean"]) < 1e-6, kl
    assert kl["ppl_base"] == pytest.approx(first["ppl"], rel=1e-3)
    code, out, err = run(capsys, "-m", str(tiny), "--kl-base", str(base), "--device", "cpu", "--cpu-math", "ggml")
    assert code == 0 and "Mean    KLD" in out and "Same top p" in out, out + err


def test_stored_log_probs_round_trip() -> None:
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(4, 101)) * 4).astype(np.float32)
    rows = quantize_log_probs(logits)
    assert rows.shape == (4, 2 * 51 + 4)
    lp = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum(1, keepdims=True))
    back = stored_log_probs(rows, 101)
    keep = lp > lp.max(1, keepdims=True) - 16
    assert np.abs(back - lp)[keep].max() < 2e-4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-f", "missing.txt"], "-f missing.txt: cannot read"),
        (["-f", "{text}", "-c", "2"], "-c 2: expected at least 4"),
        (["-f", "{text}", "-c", "4096"], "-c 4096: the model was trained on at most 128"),
        (["-f", "{short}", "-c", "64"], "needs at least 128 (two chunks)"),
        (["-f", "{text}", "-b", "0"], "-b 0: expected a positive"),
        ([], "no text: give -f FILE"),
        (["-f", "{text}", "--kl-base", "{text}"], "--kl-base FILE holds its own tokens"),
        (["--kl-base", "{text}"], "not a file of saved log-probabilities"),
        (["-f", "{text}", "-c", "64", "--save-logits", "/nonexistent-dir/x.kld"], "cannot write"),
    ],
)
def test_bad_input_is_one_line(tiny: Path, text_file: Path, tmp_path: Path, capsys, args: list[str],
                               message: str) -> None:
    short = tmp_path / "short.txt"
    short.write_text("A few words only.", encoding="utf-8")
    args = [a.format(text=text_file, short=short) for a in args]
    code, out, err = run(capsys, "-m", str(tiny), "--device", "cpu", *args)
    assert code == 1 and out == "", (out, err)
    assert err.splitlines() == [err.strip()] and message in err, err
