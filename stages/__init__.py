"""DVC stage entry points: `python -m stages.<name>`, one short module per stage in dvc.yaml."""
