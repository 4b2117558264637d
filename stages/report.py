"""Stage `report`: the report card -> reports/report.md + reports/figures/*.png (committed,
the same bytes on every machine) and reports/local/report.md + reports/local/figures/*.png
(this machine's speed and environment, git-ignored).

Reads what the other stages wrote (nothing is trained or evaluated again; the only
measurement is a few seconds of ONNX generation for tokens/s, on the local page) and logs
both pages and their figures to the MLflow run that trained the chat model.
"""

from pathlib import Path

from bardlet.report import ReportPaths, make_report
from stages.paths import CHAT_MODEL, LOCAL_REPORTS, ONNX_DIR, PLOTS, REPORTS, TOKENIZER

REPORT = REPORTS / "report.md"
FIGURES = REPORTS / "figures"


def main() -> None:
    paths = ReportPaths(
        reports=REPORTS,
        plots=PLOTS,
        tokenizer=TOKENIZER,
        chat_model=CHAT_MODEL,
        onnx_model=ONNX_DIR / "model.onnx",
        params=Path("params.yaml"),
        out=REPORT,
        figures=FIGURES,
        local=LOCAL_REPORTS,  # where this machine's page and its figures/ go
    )
    for path in make_report(paths, mlflow=True):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
