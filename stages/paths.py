"""Where each stage reads and writes: the same paths dvc.yaml declares as deps and outs.

The models' and reports' paths live in bardlet/defaults.py (the `bardlet` command uses them
too) and are re-exported here, so every stage imports its paths from this one module.
"""

from pathlib import Path

from bardlet.defaults import (  # noqa: F401 (re-exported)
    BASE_MODEL,
    CHAT_MODEL,
    DOCS_INDEX,
    DPO_MODEL,
    ONNX_DIR,
    PLOTS,
    REPORTS,
    TOKENIZER,
    TOKENIZER_DIR,
)

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
CORPUS = PREPARED / "corpus"  # <source>/train.txt, val.txt: text to pretrain on
CHATS = PREPARED / "chats"  # train.jsonl, val.jsonl: one conversation per line
PREFS = PREPARED / "prefs"  # train.jsonl, val.jsonl: one preference pair a line (dpo)
SHARDS = Path("data/shards")  # {pretrain,sft}/{train,val}/*.parquet + manifest.json
CHECKPOINTS = Path("checkpoints")  # resumable training state: git-ignored, not a DVC out
TEACHER_MODEL = Path("models/teacher")  # the optional teacher stage's model (distill)
DISTILL_MODEL = Path("models/distill")  # the optional distill stage's model: sft's start if on
LOCAL_REPORTS = REPORTS / "local"  # timings and environment: differ per machine, git-ignored
