"""Stage `distill` (optional: `distill.enabled`): the model of `model`, trained again on
pretrain's text, now learning from a teacher too -> models/distill, which sft then starts from.

The teacher is models/teacher (the teacher stage; distill.teacher: teacher) or the pretrained
model of `init` (distill.teacher: init; models/base holds it). The loss is
alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE (bardlet/training/distill.py); the
rest is pretraining: same windows, settings, resume, curves. Off (the default), it writes
only models/distill/README.md and sft starts from models/base.
"""

from bardlet.config import load_params
from bardlet.defaults import UserError
from bardlet.files import sha256_file
from bardlet.tokenizer import load_tokenizer
from stages.optional import switched_off
from stages.paths import BASE_MODEL, DISTILL_MODEL, TEACHER_MODEL, TOKENIZER_DIR

OFF = """# models/distill

`distill.enabled` is false in params.yaml, so no model learned from a teacher: sft starts from
models/base. Set `distill.enabled: true` (or `dvc exp run -S distill.enabled=true`) to run it.
"""


def main() -> None:
    params = load_params()
    settings = params.distill
    if not settings.enabled:
        switched_off("distill", DISTILL_MODEL, OFF)
        return
    # torch and MLflow: imported only when the stage is on (an off stage takes no time)
    from bardlet.training import checkpoint
    from bardlet.training.distill import Teacher
    from stages.outputs import training_device
    from stages.pretrain import train_on_corpus

    folder = TEACHER_MODEL if settings.teacher == "teacher" else BASE_MODEL
    model, info = checkpoint.load(folder, training_device(params))
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    if (
        info.get("tokenizer_hash") != tokenizer.hash
        or model.config.vocab_size != tokenizer.vocab_size
    ):
        raise UserError(
            f"distill: the teacher in {folder} was trained with another tokenizer (vocabulary "
            f"{model.config.vocab_size}, ours {tokenizer.vocab_size}): a teacher must share "
            "the student's tokenizer. Run `dvc repro` to retrain it with this one"
        )
    print(f"teacher: {folder} ({model.num_params():,} parameters, val bpb "
          f"{info.get('metrics', {}).get('val_bpb', float('nan')):.4f})")  # fmt: skip
    teacher = Teacher(model, settings.alpha, settings.temperature)
    teacher_info = {
        "sha256": sha256_file(folder / checkpoint.WEIGHTS),
        "run_id": info.get("run_id"),
    }
    train_on_corpus(
        "distill", params.model, params.pretrain, DISTILL_MODEL,
        teacher=teacher, teacher_info=teacher_info,
    )  # fmt: skip


if __name__ == "__main__":
    main()
