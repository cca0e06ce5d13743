"""Convert a Hugging Face model folder (safetensors + config.json + tokenizer.json) to GGUF.

The output uses llama.cpp's tensor names, metadata keys and value types, in the order
llama.cpp's ``convert_hf_to_gguf.py`` writes them, so either tool loads the other's files.
Only the ``bert`` architecture (``BertModel``) is supported for now.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.convert.bert_tensors import gguf_tensor_name, keeps_float32
from embedkit.convert.safetensors import SafeTensor, read_model_tensors
from embedkit.convert.wordpiece_vocab import read_wordpiece_vocab
from embedkit.errors import ConversionError
from embedkit.gguf.constants import ValueType
from embedkit.gguf.keys import DOCUMENT_PREFIX_KEY, QUERY_PREFIX_KEY, ST_MAX_SEQ_LENGTH_KEY
from embedkit.gguf.types import GGMLType
from embedkit.gguf.writer import GGUFWriter

# --outtype -> (llama_ftype stored in general.file_type, ggml type of the quantizable 2-D weights)
OUTTYPES: dict[str, tuple[int, GGMLType]] = {
    "f32": (0, GGMLType.F32),
    "f16": (1, GGMLType.F16),
    "q8_0": (7, GGMLType.Q8_0),
}
POOLING_TYPES = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
GGML_QUANTIZATION_VERSION = 2
BERT_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConversionError(f"{path}: not found") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read JSON ({e})") from e


def sentence_transformers_max_seq_length(hf_dir: Path) -> int | None:
    """``max_seq_length`` from a sentence-transformers ``sentence_bert_config.json``, if any."""
    path = hf_dir / "sentence_bert_config.json"
    if not path.is_file():
        return None
    value = _read_json(path).get("max_seq_length")
    return int(value) if isinstance(value, int) and value > 0 else None


def sentence_transformers_prompts(hf_dir: Path) -> tuple[str | None, str | None]:
    """(query prefix, document prefix) from the `prompts` of a sentence-transformers
    ``config_sentence_transformers.json`` (document: its "document", "passage", "corpus" or "doc" prompt)."""
    path = hf_dir / "config_sentence_transformers.json"
    prompts = _read_json(path).get("prompts") if path.is_file() else None
    if not isinstance(prompts, dict):
        return None, None
    query = prompts.get("query")
    document = next((prompts[k] for k in ("document", "passage", "corpus", "doc") if k in prompts), None)
    return (query if isinstance(query, str) else None), (document if isinstance(document, str) else None)


def sentence_transformers_pooling(hf_dir: Path) -> str | None:
    """The pooling named by a sentence-transformers ``modules.json`` + ``*_Pooling/config.json``, if any."""
    modules_path = hf_dir / "modules.json"
    if not modules_path.is_file():
        return None
    for module in _read_json(modules_path):
        if module.get("type", "").endswith("Pooling"):
            cfg = _read_json(hf_dir / module["path"] / "config.json")
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
            if cfg.get("pooling_mode_lasttoken"):
                return "last"
            mode = {"mean": "mean", "cls": "cls", "lasttoken": "last"}.get(cfg.get("pooling_mode"))
            if mode is None:
                raise ConversionError(
                    f"{hf_dir / module['path']}/config.json: only mean, cls and last-token pooling are supported"
                )
            return mode
    return None


def _quantizer(ggml_type: GGMLType) -> Callable[[np.ndarray], np.ndarray]:
    from embedkit.kernels import quantize

    return lambda x: quantize(np.ascontiguousarray(x, dtype=np.float32), ggml_type)


def _tensor_source(t: SafeTensor, out_type: GGMLType) -> Callable[[], np.ndarray]:
    """A lazy converter of one tensor (called while writing, so only one tensor is in memory at a time)."""
    if out_type == GGMLType.F32:
        return t.to_float32
    if out_type == GGMLType.F16:
        return lambda: t.to_float32().astype(np.float16)
    quantize = _quantizer(out_type)
    return lambda: quantize(t.to_float32().reshape(t.shape[0], -1))


def _general_name(hf_dir: Path, config: dict) -> str:
    return hf_dir.resolve().name or str(config.get("_name_or_path", "model"))


def convert_hf_to_gguf(
    hf_dir: str | Path,
    out: str | Path,
    outtype: str = "f32",
    progress: Callable[[str], None] | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
) -> Path:
    """Convert the Hugging Face BERT model in ``hf_dir`` to the GGUF file ``out`` (``outtype``: f32, f16 or q8_0).

    The query and document prefixes the model was trained with are recorded from sentence-transformers'
    ``prompts``, unless given here (an empty string records none)."""
    hf_dir, out = Path(hf_dir), Path(out)
    if outtype not in OUTTYPES:
        raise ConversionError(f"unknown --outtype {outtype!r} (expected one of {', '.join(OUTTYPES)})")
    if not hf_dir.is_dir():
        raise ConversionError(f"{hf_dir}: not a directory (expected a Hugging Face model folder)")
    _check_out(out)
    config = _read_json(hf_dir / "config.json")
    archs = config.get("architectures") or []
    if not any(a in BERT_ARCHITECTURES for a in archs) and config.get("model_type") != "bert":
        what = archs or config.get("model_type")
        raise ConversionError(f"{hf_dir}/config.json: architecture {what} is not supported (only BERT)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"{hf_dir}/config.json: position_embedding_type must be 'absolute'")
    if config.get("hidden_act", "gelu") != "gelu":
        act = config.get("hidden_act")
        raise ConversionError(f"{hf_dir}/config.json: hidden_act {act!r} is not supported (expected 'gelu')")
    file_type, weight_type = OUTTYPES[outtype]
    try:
        n_layer = int(config["num_hidden_layers"])
        n_ctx = int(config["max_position_embeddings"])
        n_embd = int(config["hidden_size"])
        n_ff = int(config["intermediate_size"])
        n_head = int(config["num_attention_heads"])
        vocab_size = int(config["vocab_size"])
    except KeyError as e:
        raise ConversionError(f"{hf_dir}/config.json: missing {e.args[0]!r}") from e
    vocab = read_wordpiece_vocab(hf_dir, vocab_size)
    classifier = "BertForSequenceClassification" in archs
    # a cross-encoder scores pairs with its classification head (llama.cpp's `rank` pooling)
    pooling = "rank" if classifier else sentence_transformers_pooling(hf_dir)
    tensors = read_model_tensors(hf_dir)

    w = GGUFWriter()
    arch = "bert"
    w.add("general.architecture", arch)
    w.add("general.type", "model")
    w.add("general.name", _general_name(hf_dir, config))
    w.add(f"{arch}.block_count", n_layer, ValueType.UINT32)
    w.add(f"{arch}.context_length", n_ctx, ValueType.UINT32)
    w.add(f"{arch}.embedding_length", n_embd, ValueType.UINT32)
    w.add(f"{arch}.feed_forward_length", n_ff, ValueType.UINT32)
    w.add(f"{arch}.attention.head_count", n_head, ValueType.UINT32)
    w.add(f"{arch}.attention.layer_norm_epsilon", float(config.get("layer_norm_eps", 1e-12)), ValueType.FLOAT32)
    w.add("general.file_type", file_type, ValueType.UINT32)
    w.add(f"{arch}.attention.causal", False, ValueType.BOOL)
    if pooling is not None:
        w.add(f"{arch}.pooling_type", POOLING_TYPES[pooling], ValueType.UINT32)
    if classifier:
        labels = config.get("id2label") or {}
        names = [str(labels.get(str(i), labels.get(i, f"LABEL_{i}"))) for i in range(int(config.get("num_labels",
                 len(labels) or 1)))]
        w.add(f"{arch}.classifier.output_labels", names, ValueType.ARRAY, ValueType.STRING)
    max_seq_length = sentence_transformers_max_seq_length(hf_dir)
    if max_seq_length is not None:
        # embedkit's own key (llama.cpp ignores it): the length sentence-transformers truncates at,
        # which the Embedder uses as its default so vectors of long texts match sentence-transformers.
        w.add(ST_MAX_SEQ_LENGTH_KEY, max_seq_length, ValueType.UINT32)
    st_query, st_document = sentence_transformers_prompts(hf_dir)
    for key, given, found in ((QUERY_PREFIX_KEY, query_prefix, st_query),
                              (DOCUMENT_PREFIX_KEY, document_prefix, st_document)):
        value = given if given is not None else found
        if value:
            w.add(key, value)
    w.add("general.quantization_version", GGML_QUANTIZATION_VERSION, ValueType.UINT32)
    w.add("tokenizer.ggml.token_type_count", int(config.get("type_vocab_size", 1)), ValueType.UINT32)
    w.add("tokenizer.ggml.model", "bert")
    w.add("tokenizer.ggml.pre", vocab.pre)
    w.add("tokenizer.ggml.tokens", vocab.tokens, ValueType.ARRAY, ValueType.STRING)
    w.add("tokenizer.ggml.token_type", np.asarray(vocab.token_types, dtype=np.int32), ValueType.ARRAY, ValueType.INT32)
    key_names = {"bos": "bos", "eos": "eos", "unk": "unknown", "sep": "seperator", "pad": "padding", "mask": "mask"}
    for kind, tid in vocab.special_ids.items():
        # "seperator" is llama.cpp's spelling of the key
        w.add(f"tokenizer.ggml.{key_names[kind]}_token_id", tid, ValueType.UINT32)
    for kind, flag in vocab.add_special.items():
        w.add(f"tokenizer.ggml.add_{kind}_token", flag, ValueType.BOOL)
    if vocab.lowercase is not None:
        w.add("tokenizer.ggml.normalizer.lowercase", bool(vocab.lowercase), ValueType.BOOL)

    n_written = 0
    for hf_name, t in tensors.items():
        try:
            name = gguf_tensor_name(hf_name, classifier)
        except KeyError:
            raise ConversionError(f"{hf_dir}: tensor {hf_name!r} has no llama.cpp BERT name") from None
        if name is None:
            continue
        out_type = GGMLType.F32 if keeps_float32(name, len(t.shape)) else weight_type
        if out_type == GGMLType.Q8_0 and t.shape[-1] % 32 != 0:
            out_type = GGMLType.F16  # llama.cpp falls back to F16 when a row is not a whole number of blocks
        w.add_tensor(name, _tensor_source(t, out_type), out_type, t.shape)
        n_written += 1
    if n_written == 0:
        raise ConversionError(f"{hf_dir}: no BERT tensors found")
    if progress is not None:
        progress(f"writing {out} ({outtype}, {n_written} tensors)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return w.write(out)
    except OSError as e:
        raise ConversionError(f"{out}: cannot write the GGUF file ({e.strerror})") from None


def _check_out(out: Path) -> None:
    """Refuse an OUT that exists but is not a GGUF file: it may be one of the model's own files (e.g. its
    model.safetensors, which the conversion would replace) or anything else the user did not mean to lose."""
    if out.is_dir():
        raise ConversionError(f"{out}: is a folder; expected the path of the .gguf file to write")
    above = next((a for a in out.parents if a.exists()), None)  # the folder it goes in, or the one to create
    if above is not None and not above.is_dir():
        raise ConversionError(f"{out}: {above} is not a folder")
    if not out.exists():
        return
    if not out.is_file():  # a FIFO or a device: opening it to check could block
        raise ConversionError(f"{out}: exists and is not a regular file; expected the path of a .gguf file")
    try:
        with open(out, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ConversionError(f"{out}: cannot check the existing file ({e.strerror})") from None
    if magic != b"GGUF":
        raise ConversionError(f"{out}: exists and is not a GGUF file; refusing to overwrite it (expected a new "
                              "or a GGUF path)")
