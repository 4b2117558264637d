from pathlib import Path

import pytest
import yaml

from bardlet.config import ParamsError, load_params, validate_params
from bardlet.defaults import DEFAULT_SPECIAL_TOKENS

REPO = Path(__file__).resolve().parents[1]


def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.model.n_embd % params.model.n_head == 0
    assert [s.name for s in params.download.sources] == ["tinyshakespeare", "oasst1_en_validation"]


def test_unknown_key_is_named():
    raw = raw_params()
    raw["model"]["n_layers"] = 4  # typo for n_layer
    with pytest.raises(ParamsError, match=r"model\.n_layers: unknown key"):
        validate_params(raw)


def test_wrong_type_is_named():
    raw = raw_params()
    raw["pretrain"]["batch_size"] = "sixteen"
    with pytest.raises(ParamsError, match=r"pretrain\.batch_size"):
        validate_params(raw)


def test_heads_must_divide_width():
    raw = raw_params()
    raw["model"]["n_embd"] = 130
    raw["model"]["n_head"] = 4
    with pytest.raises(ParamsError, match=r"model: .*n_embd \(130\) must be divisible by n_head"):
        validate_params(raw)


def test_missing_section_is_named():
    raw = raw_params()
    del raw["sft"]
    with pytest.raises(ParamsError, match=r"sft: required key is missing"):
        validate_params(raw)


def test_vocab_out_of_range():
    raw = raw_params()
    raw["tokenizer"]["vocab_size"] = 100
    with pytest.raises(ParamsError, match=r"tokenizer\.vocab_size"):
        validate_params(raw)


@pytest.mark.parametrize(
    "special, message",
    [
        (["<|bos|>", "<|bos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"],
         r"lists \['<\|bos\|>'\] twice"),
        ([], r"lacks \['<\|bos\|>', '<\|system\|>'"),
        (["<|bos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|pad|>"],
         r"lacks \['<\|end\|>'\]: the chat template writes them"),
        ([*DEFAULT_SPECIAL_TOKENS, "<|a|>", "<|b|>", "<|c|>", "<|d|>"],
         r"vocab_size 262 leaves no room: .* at least 266"),
    ],
)  # fmt: skip
def test_special_tokens_are_checked_before_the_tokenizer_stage(special, message):
    raw = raw_params()
    raw["tokenizer"].update(special_tokens=special, vocab_size=262)
    with pytest.raises(ParamsError, match=r"tokenizer: .*" + message):
        validate_params(raw)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(ParamsError, match="not UTF-8 text"):
        load_params(path)


def test_missing_file_says_where(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_bad_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def test_chat_styles_are_checked():
    raw = raw_params()
    raw["chat"]["styles"]["terse"]["top_p"] = 1.5
    with pytest.raises(ParamsError, match=r"chat\.styles\.terse\.top_p"):
        validate_params(raw)
    raw = raw_params()
    raw["chat"]["styles"]["terse"]["temperature"] = True
    with pytest.raises(ParamsError, match=r"chat\.styles\.terse\.temperature: .*expected a number"):
        validate_params(raw)
    raw = raw_params()
    raw["chat"]["styles"]["terse"]["colour"] = "grey"
    with pytest.raises(ParamsError, match=r"chat\.styles\.terse\.colour: unknown key"):
        validate_params(raw)
    raw = raw_params()
    del raw["chat"]["styles"]["default"]
    with pytest.raises(ParamsError, match=r"chat: .*'default' preset"):
        validate_params(raw)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("pretrain", "learning_rate", 1e6),  # diverges into NaN at once
        ("pretrain", "learning_rate", 0),
        ("pretrain", "max_steps", True),  # a YAML `true` is not the number 1
        ("pretrain", "learning_rate", True),  # nor is it 1.0
        ("evaluate", "temperature", True),
        ("sft", "batch_size", 8.5),
        ("model", "n_layer", 0),
        ("model", "dropout", 1.0),
        ("model", "mlp_ratio", float("inf")),  # YAML's .inf: no model has infinite width
        ("export", "int8", "yes"),
        ("evaluate", "seed", -1),
    ],
)
def test_absurd_values_are_refused_with_the_key(section, key, value):
    raw = raw_params()
    raw[section][key] = value
    with pytest.raises(ParamsError, match=rf"{section}\.{key}"):
        validate_params(raw)


def test_a_number_yaml_reads_as_text_is_still_a_number():
    """YAML 1.1 reads `1e-3` (no dot) as text: it must still be the learning rate 0.001."""
    raw = raw_params()
    raw["pretrain"]["learning_rate"] = yaml.safe_load("x: 1e-3")["x"]
    assert raw["pretrain"]["learning_rate"] == "1e-3"
    assert validate_params(raw).pretrain.learning_rate == 0.001


def test_every_value_lives_in_params_yaml():
    """The classes hold types and bounds, not a second set of defaults: leaving a key out of
    params.yaml is an error that names it."""
    for section in ("pretrain", "model", "export", "evaluate"):
        raw = raw_params()
        key = next(iter(raw[section]))
        del raw[section][key]
        with pytest.raises(ParamsError, match=rf"{section}\.{key}: required key is missing"):
            validate_params(raw)


def test_the_teachers_changes_to_pretrain_are_checked_as_pretrain_settings():
    raw = raw_params()
    raw["teacher"]["pretrain"] = {"max_step": 10}  # typo for max_steps
    with pytest.raises(ParamsError, match=r"teacher\.pretrain:\s+max_step: unknown key"):
        validate_params(raw)
    raw["teacher"]["pretrain"] = {"max_steps": 0}
    with pytest.raises(ParamsError, match=r"teacher\.pretrain:\s+max_steps: .*greater than 0"):
        validate_params(raw)
    raw["teacher"]["pretrain"] = {"max_steps": 3000, "learning_rate": 0.001}
    training = validate_params(raw).teacher_training()
    assert (training.max_steps, training.learning_rate) == (3000, 0.001)
    assert training.batch_size == raw["pretrain"]["batch_size"]  # the rest is pretrain's


def test_a_teacher_must_read_the_students_windows_and_init_must_be_pretrained():
    raw = raw_params()
    raw["model"]["block_size"] = raw["teacher"]["model"]["block_size"] * 2
    assert not raw["distill"]["enabled"]
    validate_params(raw)  # no teacher is trained: its shape does not matter
    raw["distill"]["enabled"] = True
    with pytest.raises(ParamsError, match=r"teacher\.model\.block_size .* at least") as error:
        validate_params(raw)
    assert "(got" not in str(error.value) and len(str(error.value)) < 300  # not the whole file
    raw = raw_params()
    raw["distill"]["teacher"] = "init"  # with init: scratch there is no pretrained model
    with pytest.raises(ParamsError, match=r"distill\.teacher is init but init is scratch"):
        validate_params(raw)
    raw["distill"]["teacher"] = "models/big"
    with pytest.raises(ParamsError, match=r"distill\.teacher: .*'teacher' or 'init'"):
        validate_params(raw)


def test_documents_to_index_must_be_where_the_index_stage_looks():
    raw = raw_params()
    raw["rag"]["docs"] = ["docs", "data/docs/manuals", "../elsewhere"]
    with pytest.raises(ParamsError, match=r"rag\.docs\.2: .*outside docs/ and data/docs/"):
        validate_params(raw)
    raw["rag"]["docs"] = ["docs"]
    raw["rag"]["overlap"] = raw["rag"]["passage_tokens"]
    with pytest.raises(ParamsError, match=r"overlap .* must be below passage_tokens"):
        validate_params(raw)


@pytest.mark.parametrize("preset", sorted((REPO / "presets").glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_change_only_keys_params_yaml_has_and_stay_valid(preset):
    """A preset is what `make experiment PRESET=...` hands DVC as --set-param: every key must
    exist (DVC would add a typo as a new key that nothing reads), and the result must pass
    the same checks as params.yaml."""
    from pipelines.flow import flatten, set_param_args

    changes = flatten(yaml.safe_load(preset.read_text()))
    set_param_args(changes, REPO / "params.yaml")  # raises on a key params.yaml lacks
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in changes.items():
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node[part]
        node[last] = value
    validate_params(raw, source=preset.name)


def test_the_10m_preset_is_about_10m_parameters():
    from bardlet.model import GPT, GPTConfig

    shape = yaml.safe_load((REPO / "presets/gpt-10m.yaml").read_text())["model"]
    params = load_params(REPO / "params.yaml")
    model = params.model.model_copy(update=shape)
    gpt = GPT(GPTConfig(vocab_size=params.tokenizer.vocab_size, **model.model_dump()))
    assert 9e6 < gpt.num_params() < 13e6
