"""Metadata keys that embedkit writes beyond llama.cpp's own (llama.cpp ignores unknown keys)."""

# The length sentence-transformers truncates inputs at (`max_seq_length` of sentence_bert_config.json).
ST_MAX_SEQ_LENGTH_KEY = "sentence_transformers.max_seq_length"

# Texts prepended to queries and to documents by models trained with them (e5 "query: "/"passage: ", bge's
# query instruction, nomic "search_query: "/"search_document: "): sentence-transformers' `prompts`.
QUERY_PREFIX_KEY = "sentence_transformers.prompts.query"
DOCUMENT_PREFIX_KEY = "sentence_transformers.prompts.document"
