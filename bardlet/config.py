"""Typed, validated parameters: every knob of `params.yaml`, one model per section.

Each stage reads its own section (`load_params().pretrain`, ...). Validation runs before any
work: an unknown key, a wrong type or an impossible value fails with a message that names the
key (`model.n_embd`) and what is allowed, instead of a crash twenty minutes into training.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
    ValidationError,
    model_validator,
)

from bardlet.defaults import DEFAULT_SPECIAL_TOKENS, UserError

PARAMS_FILE = Path("params.yaml")
MAX_STOP = 4  # stop strings per request, as OpenAI allows
Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]


def _not_a_switch(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic reads true as 1.0; YAML's true/false is a switch
        raise ValueError("expected a number, got true/false")
    return value


# A number: 0.7, 1 or 1e-3 (which YAML reads as text, and pydantic as the number), never a
# switch: `temperature: true` is an error, not 1.0.
Real = Annotated[float, BeforeValidator(_not_a_switch)]


class Sampling(BaseModel):
    """How to pick each token (bardlet/runtime/sampling.py applies it); every field is checked
    when set. The defaults change nothing: the model's own distribution. A chat's actual
    settings come from a style in params.yaml (`chat.styles`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    temperature: Real = Field(default=1.0, ge=0, le=2, description="0 = greedy")
    top_k: StrictInt = Field(default=0, ge=0, description="keep the k most likely tokens (0 = all)")
    top_p: Real = Field(default=1.0, gt=0, le=1, description="keep the smallest set reaching p")
    min_p: Real = Field(
        default=0.0, ge=0, lt=1, description="drop tokens below min_p x the top one"
    )
    repetition_penalty: Real = Field(default=1.0, gt=0, le=10, description="> 1: avoid seen tokens")
    seed: Seed | None = Field(default=None, description="the same seed gives the same text")
    stop: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        default=(), max_length=MAX_STOP, description="the text ends before the first of these"
    )


class Style(Sampling):
    """A chat style preset: a system prompt plus sampling settings."""

    system: str | None = None

    def sampling(self) -> Sampling:
        return Sampling(**self.model_dump(exclude={"system"}))


class Section(BaseModel):
    # extra="forbid": a misspelt key is an error, not a silently ignored setting. No field has
    # a default: the values live in params.yaml only, these classes hold types and bounds.
    model_config = ConfigDict(extra="forbid", frozen=True)


# Whole numbers and switches must be written as such: `max_steps: true` or `n_layer: 4.5`
# is an error, not 1 or 4.
Count = Annotated[StrictInt, Field(gt=0)]
Switch = StrictBool


class SourceParams(Section):
    name: str
    path: str = Field(description="file path inside data/raw and inside a mirror")
    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: Count


class DownloadParams(Section):
    sources: list[SourceParams]
    oasst1_full: Switch  # the full OASST1 Parquet release instead of the mirrored slice


# Your own data lives under this folder: it is the prepare stage's DVC dependency, so editing a
# file there re-runs prepare and what depends on it.
OWN_DATA = "data/own"
ChatFormat = Literal["auto", "openai", "sharegpt", "oasst", "text"]
CorpusFormat = Literal["auto", "text", "jsonl", "parquet"]


class OwnSource(Section):
    """A file, folder or glob of your own under data/own/. Its keys but `path` are optional
    (the defaults are written here, once): a source is a line a user adds."""

    path: str = Field(min_length=1)
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")  # default: from path

    @model_validator(mode="after")
    def _under_own_data(self) -> OwnSource:
        parts = Path(self.path).parts
        if (
            Path(self.path).is_absolute()
            or ".." in parts
            or parts[:2] != tuple(OWN_DATA.split("/"))
        ):
            raise ValueError(
                f"path {self.path!r} must be inside {OWN_DATA}/ (the prepare stage's DVC "
                f"dependency): copy or link your files there"
            )
        return self

    @property
    def label(self) -> str:
        """The source's name in reports and shard rows: `name`, or the path below data/own."""
        if self.name:
            return self.name
        below = Path(*Path(self.path).parts[2:]) if len(Path(self.path).parts) > 2 else "own"
        return str(below).replace("/", "_").replace("*", "all") or "own"


class ChatSource(OwnSource):
    format: ChatFormat = "auto"


class CorpusSource(OwnSource):
    format: CorpusFormat = "auto"
    column: str = "text"  # JSON lines and Parquet: the field that holds the text
    weight: Real = Field(default=1.0, gt=0, le=1000)  # x its share by size when sampling


def _kind(value: Any) -> str:
    return "builtin" if isinstance(value, str) else "own"


# A source is a built-in name or a mapping: told apart first, so an error speaks of one only.
BuiltinCorpus = Literal["tinyshakespeare", "oasst1"]
Corpus = Annotated[
    Annotated[BuiltinCorpus, Tag("builtin")] | Annotated[CorpusSource, Tag("own")],
    Discriminator(_kind),
]
Chats = Annotated[
    Annotated[Literal["oasst1"], Tag("builtin")] | Annotated[ChatSource, Tag("own")],
    Discriminator(_kind),
]
Prefs = Annotated[
    Annotated[Literal["oasst1"], Tag("builtin")] | Annotated[OwnSource, Tag("own")],
    Discriminator(_kind),
]
TAGS = {"builtin", "own"}  # left out of the key an error names


class PrepareParams(Section):
    corpus: list[Corpus] = Field(min_length=1)
    corpus_val_fraction: Real = Field(gt=0, lt=1)
    chats: list[Chats] = Field(min_length=1)
    chats_val_percent: Real = Field(gt=0, lt=100)
    prefs: list[Prefs]  # preference pairs for the dpo stage: OASST1's rankings, your JSONL
    oasst_lang: str
    oasst_mode: Literal["best", "all"]

    @model_validator(mode="after")
    def _names_differ(self) -> PrepareParams:
        builtin = set(get_args(BuiltinCorpus))
        for key, own in (("corpus", self.corpus), ("chats", self.chats), ("prefs", self.prefs)):
            taken = sorted({s.label for s in own if not isinstance(s, str)} & builtin)
            if taken:  # its rows would mix with the built-in source's
                raise ValueError(
                    f"{key}: {taken} names a built-in source: give yours another `name`"
                )
        for key, sources in (("corpus", self.corpus), ("chats", self.chats)):
            names = [s if isinstance(s, str) else s.label for s in sources]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{key}: two sources named {twice}: give them a `name`")
        return self


class TokenizerParams(Section):
    vocab_size: StrictInt = Field(ge=262, le=65536)
    special_tokens: list[str]
    # Training reads at most this many characters, an even sample of all the training text
    # (the default data is about 2.5 million): a big corpus does not make it slow or huge.
    sample_chars: StrictInt = Field(ge=10_000)

    @model_validator(mode="after")
    def _fits(self) -> TokenizerParams:
        twice = sorted({t for t in self.special_tokens if self.special_tokens.count(t) > 1})
        if twice:
            raise ValueError(f"special_tokens lists {twice} twice: each name once")
        missing = [t for t in DEFAULT_SPECIAL_TOKENS if t not in self.special_tokens]
        if missing:
            raise ValueError(
                f"special_tokens lacks {missing}: the chat template writes them; "
                "add your own tokens after the six defaults"
            )
        if self.vocab_size < 256 + len(self.special_tokens):
            raise ValueError(
                f"vocab_size {self.vocab_size} leaves no room: 256 byte tokens and "
                f"{len(self.special_tokens)} special tokens need at least "
                f"{256 + len(self.special_tokens)}"
            )
        return self


class ShardParams(Section):
    rows_per_file: Count
    row_group_size: Count


class ModelParams(Section):
    n_layer: Count
    n_head: Count
    n_embd: StrictInt = Field(ge=8)
    block_size: StrictInt = Field(ge=8)
    mlp_ratio: Real = Field(gt=0, allow_inf_nan=False)
    dropout: Real = Field(ge=0, lt=1)
    tie_embeddings: Switch

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelParams:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"n_embd / n_head = {self.n_embd // self.n_head} must be even (rotary embeddings)"
            )
        return self


class TrainParams(Section):
    """Shared by `pretrain` and `sft`: the same loop trains both."""

    max_steps: Count
    batch_size: Count
    grad_accum: Count
    # Above 1 no run of this model converges; a typo such as 1e6 would train on NaNs.
    learning_rate: Real = Field(gt=0, le=1)
    schedule: Literal["cosine", "wsd"]
    decay_fraction: Real = Field(gt=0, le=1, description="wsd: share of steps decaying")
    min_lr_ratio: Real = Field(ge=0, le=1)
    warmup_steps: StrictInt = Field(ge=0)
    weight_decay: Real = Field(ge=0, le=10)
    grad_clip: Real = Field(ge=0)
    label_smoothing: Real = Field(ge=0, lt=1)
    ema_decay: Real = Field(ge=0, lt=1, description="average the weights; 0 = off")
    eval_interval: Count
    eval_batches: Count
    log_interval: Count
    keep_best: Switch
    checkpoint_interval: Count
    keep_checkpoints: Count
    resume: Literal["auto", "never"]
    seed: StrictInt
    threads: StrictInt = Field(ge=0, description="torch CPU threads; 0 = torch's default")


class LoraParams(Section):
    rank: StrictInt = Field(ge=0, le=1024, description="0 = off: fine-tune every weight")
    alpha: Real = Field(gt=0, description="the update is scaled by alpha / rank")
    dropout: Real = Field(ge=0, lt=1, description="on the adapter's input while training")
    targets: list[Literal["qkv", "proj", "gate", "up", "down"]] = Field(min_length=1)


class SftParams(TrainParams):
    lora: LoraParams


class DpoParams(Section):
    """The optional dpo stage: preference tuning of the chat model (bardlet/training/dpo.py)."""

    enabled: Switch  # false: the stage only says so, and export takes models/chat
    beta: Real = Field(gt=0, le=10, description="how far from the reference the policy may go")
    max_steps: Count
    batch_size: Count
    learning_rate: Real = Field(gt=0, le=1)
    warmup_steps: StrictInt = Field(ge=0)
    weight_decay: Real = Field(ge=0, le=10)
    grad_clip: Real = Field(ge=0)
    log_interval: Count
    seed: StrictInt


class TeacherParams(Section):
    """The optional teacher stage: a bigger model for `distill` to learn from, trained like
    pretrain (same text, same loop) with its own shape and any pretrain settings it changes."""

    model: ModelParams
    pretrain: dict[str, Any]  # pretrain's keys to change, e.g. {max_steps: 3000}; {} = none


class DistillParams(Section):
    """The optional distill stage: the model of `model` trained on pretrain's text with a
    teacher: loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE."""

    enabled: Switch  # false: the stage only says so, and sft starts from models/base
    # teacher: models/teacher, trained by the teacher stage. init: the pretrained model of
    # `init` (models/base then holds it, and the tokenizer is its own).
    teacher: Literal["teacher", "init"]
    alpha: Real = Field(ge=0, le=1, description="the teacher's share of the loss")
    temperature: Real = Field(gt=0, le=100, description="softens both distributions")


DOCS_FOLDERS = ("docs", "data/docs")  # the index stage's DVC deps: rag.docs must be inside


def _check_docs_path(value: str) -> str:
    parts = Path(value).parts
    if ".." not in parts and any(
        parts[: len(Path(f).parts)] == Path(f).parts for f in DOCS_FOLDERS
    ):
        return value
    raise ValueError(
        f"{value!r} is outside docs/ and data/docs/: put your documents there (the index "
        "stage depends on those folders, so editing a document re-runs it)"
    )


class RagParams(Section):
    """The index stage: documents for `bardlet chat --docs` (bardlet/retrieval/)."""

    docs: list[Annotated[str, AfterValidator(_check_docs_path)]] = Field(min_length=1)
    passage_tokens: StrictInt = Field(ge=8, le=1024)
    overlap: StrictInt = Field(ge=0)
    max_file_mb: Real = Field(gt=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RagParams:
        if self.overlap >= self.passage_tokens:
            raise ValueError(f"overlap ({self.overlap}) must be below passage_tokens")
        return self


class EvaluateParams(Section):
    eval_batches: Count
    prompts: list[str]
    max_new_tokens: Count
    # The sampled replies in samples.md (the greedy ones need none).
    temperature: Real = Field(gt=0, le=2)
    top_k: StrictInt = Field(ge=0)
    seed: StrictInt = Field(ge=0)
    rouge_conversations: StrictInt = Field(ge=0)

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_k=self.top_k, seed=self.seed)


class ExportParams(Section):
    opset: StrictInt = Field(ge=23)  # the graph uses opset 23's Attention and RotaryEmbedding
    parity_steps: Count
    parity_tolerance: Real = Field(gt=0)
    int8: Switch
    int8_max_bpb_delta_percent: Real = Field(gt=0)
    bpb_batches: Count


class ChatParams(Section):
    styles: dict[str, Style]  # the one type the chat, the server and the page use

    @model_validator(mode="after")
    def _has_default(self) -> ChatParams:
        if "default" not in self.styles:
            raise ValueError("styles needs a 'default' preset: what a chat starts with")
        return self


# Pretrained checkpoints (GPT-2 or Llama Hugging Face folders) live under this folder: the
# tokenizer and pretrain stages depend on it. A Hub repo id is downloaded into HUB_DOWNLOADS.
PRETRAINED = "data/pretrained"
HUB_DOWNLOADS = f"{PRETRAINED}/hub"
HUB_ID = r"^[A-Za-z0-9][\w.-]*/[\w.-]+@[\w.-]+$"  # owner/name@revision


def _check_init(value: str) -> str:
    parts = Path(value).parts
    if value == "scratch" or re.match(HUB_ID, value):
        return value
    inside = parts[:2] == tuple(PRETRAINED.split("/")) and len(parts) > 2 and ".." not in parts
    if inside and "@" not in value:
        return value
    raise ValueError(
        f"init must be scratch, a folder inside {PRETRAINED}/ (copy or link the Hugging Face "
        "folder there), or a Hub repo id pinned to a revision, like openai-community/gpt2@"
        "607a30d783dfa663caf39e06633721c8d4cfcd7e"
    )


class Params(Section):
    # scratch: train our tokenizer and pretrain a GPT; else start from a pretrained GPT-2 or
    # Llama: a folder under data/pretrained/, or "owner/name@revision" from the Hub.
    init: Annotated[str, AfterValidator(_check_init)]
    device: Literal["auto", "cuda", "mps", "cpu"]
    download: DownloadParams
    prepare: PrepareParams
    tokenizer: TokenizerParams
    shard: ShardParams
    model: ModelParams
    pretrain: TrainParams
    sft: SftParams
    teacher: TeacherParams
    distill: DistillParams
    dpo: DpoParams
    rag: RagParams
    evaluate: EvaluateParams
    export: ExportParams
    chat: ChatParams

    @model_validator(mode="after")
    def _teacher_fits(self) -> Params:
        self.teacher_training()  # its pretrain changes are valid pretrain settings
        uses_teacher = self.distill.enabled and self.distill.teacher == "teacher"
        if uses_teacher and self.teacher.model.block_size < self.model.block_size:
            raise ValueError(
                f"teacher.model.block_size ({self.teacher.model.block_size}) must be at least "
                f"model.block_size ({self.model.block_size}): the teacher reads the student's "
                "windows"
            )
        if self.distill.teacher == "init" and self.init == "scratch":
            raise ValueError(
                "distill.teacher is init but init is scratch: set init to a pretrained model, "
                "or distill.teacher to teacher (a bigger model the teacher stage trains)"
            )
        return self

    def teacher_training(self) -> TrainParams:
        """pretrain's settings with the teacher's changes."""
        try:
            return TrainParams.model_validate(
                {**self.pretrain.model_dump(), **self.teacher.pretrain}
            )
        except ValidationError as error:
            raise ValueError("teacher.pretrain:\n" + _describe(error)) from None


class ParamsError(UserError, ValueError):
    """params.yaml is missing, unreadable or invalid; the message names every bad key."""


def _describe(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"] if p not in TAGS) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see README 'params.yaml')")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        elif isinstance(e.get("input"), dict):  # a check across keys: they are named
            lines.append(f"  {key}: {e['msg']}")
        else:
            got = repr(e.get("input"))
            lines.append(f"  {key}: {e['msg']} (got {got if len(got) <= 80 else got[:77] + '...'})")
    return "\n".join(lines)


def validate_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(f"{source} is invalid:\n{_describe(error)}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml (all sections, so one bad key anywhere stops every stage)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise ParamsError(
            f"{path} is not UTF-8 text (byte {error.start}): save it as UTF-8"
        ) from None
    return validate_params(raw, str(path))


def init_folder(init: str) -> Path | None:
    """Where the pretrained model of `init` is (None: scratch). A Hub id's folder is named
    owner--name@revision under data/pretrained/hub/; the download stage fills it."""
    if init == "scratch":
        return None
    if "@" in init:
        repo, revision = init.split("@")
        return Path(HUB_DOWNLOADS) / f"{repo.replace('/', '--')}@{revision}"
    return Path(init)
