"""Facts the command line, the library and the stages share: where the pipeline writes
(relative to the project folder, as in dvc.yaml) and a few default settings.

Stdlib only, and cheap to import: `bardlet --help` loads it at startup.
"""

from pathlib import Path

# Where the pipeline writes: the outs dvc.yaml declares (stages/paths.py adds the data's).
TOKENIZER_DIR = Path("models/tokenizer")  # the tokenizer stage: bpe.json, tokenizer.json
TOKENIZER = TOKENIZER_DIR / "bpe.json"  # our own format: what Tokenizer.load reads
BASE_MODEL = Path("models/base")  # the pretrain stage's checkpoint
CHAT_MODEL = Path("models/chat")  # the sft stage's checkpoint (merged weights, LoRA adapter)
DPO_MODEL = Path("models/dpo")  # the dpo stage: the chat model tuned on preferences (if enabled)
ONNX_DIR = Path("models/onnx")  # the export stage: model.onnx, bpe.json, styles.json, ...
ONNX_MODEL = ONNX_DIR / "model.onnx"  # what `bardlet chat`, `serve` and `generate` load
DOCS_INDEX = Path("models/docs.sqlite")  # the index stage: rag.docs, searchable (chat --docs)
HF_DIR = Path("models/hf")  # `bardlet export-hf` writes it, `bardlet push` uploads it
REPORTS = Path("reports")  # metrics.json, export.json, ...: dvc metrics and the report card
PLOTS = REPORTS / "plots"  # training curves against steps (dvc plots)

# The chat markers every bardlet tokenizer has (params.yaml tokenizer.special_tokens lists
# them; a pretrained model's tokenizer gets those it lacks): the chat template writes them.
DEFAULT_SPECIAL_TOKENS = (
    "<|bos|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|pad|>",
)

# The HTTP server (`bardlet serve --read-timeout`).
READ_TIMEOUT = 10.0  # seconds a client may take to send the request head, and then the body


class UserError(Exception):
    """A mistake in what the user gave (params.yaml, a pretrained folder, a download) rather
    than a bug: the message says what is wrong and how to fix it, and the stages print it as
    one line without a traceback."""
