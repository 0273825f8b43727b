"""The entry points, one module each, on top of every stage: what `python -m fmnist_exp <command>`
and `mlflow run . -e <command>` run (cli.py parses, these do the work)."""
