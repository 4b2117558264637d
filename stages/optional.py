"""What an optional stage (teacher, distill, dpo) writes when params.yaml switches it off.

Light on purpose: an off stage checks its switch and writes these outs in a fraction of a
second, without loading torch or MLflow (they take about 4 s to import).
"""

from pathlib import Path

from bardlet.files import new_folder, write_csv_atomic, write_json_atomic, write_text_atomic
from stages.paths import PLOTS, REPORTS


def switched_off(name: str, model_dir: Path, readme: str, curves: bool = True) -> None:
    """The stage's outs, saying it is off: `model_dir` holds only a README, reports/<name>.json
    is {} and its curve (if it draws one) is empty."""
    with new_folder(model_dir) as folder:
        write_text_atomic(folder / "README.md", readme)
    write_json_atomic(REPORTS / f"{name}.json", {})
    if curves:
        write_csv_atomic(PLOTS / f"{name}.csv", [])
    print(f"{name} is off: nothing to do ({model_dir}/README.md says how to switch it on)")
