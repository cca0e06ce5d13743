"""Metadata keys that embedkit writes beyond llama.cpp's own (llama.cpp ignores unknown keys)."""

# The length sentence-transformers truncates inputs at (`max_seq_length` of sentence_bert_config.json).
ST_MAX_SEQ_LENGTH_KEY = "sentence_transformers.max_seq_length"
