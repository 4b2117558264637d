"""Stage `teacher` (optional): a bigger model for `distill` to learn from -> models/teacher.

It trains when distill.enabled is true and distill.teacher is `teacher`: a model of the
`teacher.model` shape, on the same text and with the same loop and settings as pretrain
(plus the changes in `teacher.pretrain`). Otherwise it writes only models/teacher/README.md.
"""

from bardlet.config import load_params
from stages.optional import switched_off
from stages.paths import TEACHER_MODEL

OFF = """# models/teacher

No teacher was trained: it trains only when `distill.enabled` is true and `distill.teacher` is
`teacher` in params.yaml (`dvc exp run -S distill.enabled=true`). Its shape is `teacher.model`.
"""


def main() -> None:
    params = load_params()
    if not (params.distill.enabled and params.distill.teacher == "teacher"):
        switched_off("teacher", TEACHER_MODEL, OFF)
        return
    from stages.pretrain import train_on_corpus  # torch and MLflow: only when it trains

    train_on_corpus("teacher", params.teacher.model, params.teacher_training(), TEACHER_MODEL)


if __name__ == "__main__":
    main()
