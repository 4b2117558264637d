"""Where each stage reads and writes: the same paths dvc.yaml declares as deps and outs."""

from pathlib import Path

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
CORPUS = PREPARED / "corpus"  # <source>/train.txt, val.txt: text to pretrain on
CHATS = PREPARED / "chats"  # train.jsonl, val.jsonl: one conversation per line
TOKENIZER_DIR = Path("models/tokenizer")
TOKENIZER = TOKENIZER_DIR / "bpe.json"
SHARDS = Path("data/shards")  # {pretrain,sft}/{train,val}/*.parquet + manifest.json
BASE_MODEL = Path("models/base")
CHAT_MODEL = Path("models/chat")
ONNX_DIR = Path("models/onnx")
CHECKPOINTS = Path("checkpoints")  # resumable training state: git-ignored, not a DVC out
REPORTS = Path("reports")
PLOTS = REPORTS / "plots"  # training curves against steps (dvc plots)
LOCAL_REPORTS = REPORTS / "local"  # timings and environment: differ per machine, git-ignored
