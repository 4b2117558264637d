"""Retrieval: your documents (index.py, documents.py) and a chat's memory (memory.py), each in
one SQLite file searched with FTS5. Stdlib sqlite3 and the tokenizer only: never torch."""
