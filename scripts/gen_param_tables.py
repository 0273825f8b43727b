"""Print (or, with --write, rewrite in docs/parameters.md) the parameter tables, from the one table in
fmnist_exp/params/table.py, and the environment variables, from ENV_VARS below; tests/test_project.py
checks that the page holds what this prints and that ENV_VARS names every FMNIST_* the package reads.

    python scripts/gen_param_tables.py --write
"""

import sys
from pathlib import Path

from fmnist_exp.params import commands
from fmnist_exp.params import table as C

PAGE = Path(__file__).resolve().parent.parent / "docs" / "parameters.md"
BEGIN, END = "<!-- params:begin -->", "<!-- params:end -->"

# (name, what it does and its default). The code reads each where it needs it, not through the
# parameter table, so they are listed here by hand; tests/test_project.py fails on one left out.
ENV_VARS = (
    ("FMNIST_DATA_DIR", "a folder holding Fashion-MNIST's files (IDX or CSV), searched after `data_dir` and "
                        "before `./data` and the other usual places ([data.md](data.md)); default: not set"),
    ("FMNIST_VERBOSE", "`1` shows TensorFlow's and MLflow's own messages and progress bars, as `--verbose` does, "
                       "in the command and the processes it starts; default: quiet"),
    ("FMNIST_HEARTBEAT_S", "seconds between a worker's heartbeats on its running trial (workers and storage "
                           "proxy); default `10`"),
    ("FMNIST_GRACE_S", "seconds of heartbeat silence after which a trial is taken for a dead worker's: FAIL, "
                       "its runs ended FAILED, retried ([scale-out.md](scale-out.md)); default `40`"),
    ("FMNIST_STORAGE_RETRY_S", "seconds a call to the Optuna database keeps retrying a lost connection (a "
                               "restart, a failover) before the error reaches the trial; default `180`"),
    ("FMNIST_PROXY_RETRY_S", "seconds a worker keeps retrying while no storage proxy answers, then stops; "
                             "default `120`"),
    ("FMNIST_WEBHOOK_SECRET", "`serve`: the secret an MLflow registry webhook to `/webhook` was created with; a "
                              "delivery whose signature does not match it is refused (401). Not set: any "
                              "delivery wakes the server, which then reads the alias from the registry itself"),
    ("SERVING_MODEL_CONFIG", "`serve` and `mlflow models serve`: a JSON object setting `max_batch` (images per "
                             "request, default 1024) and `max_body_mb` (largest body; default 32 KiB per image)"),
    ("FMNIST_TEST_PG", "tests and `bench/bench_scaleout.py` only: the PostgreSQL server they make their "
                       "databases on, as the URL `scripts/start_postgres.sh` prints; default "
                       "`postgresql://fmnist:fmnist@127.0.0.1:5432/postgres` (the tests skip where none "
                       "answers, and fail under `CI=true`)"),
)


def table(params: list[C.Param]) -> str:
    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    for p in params:
        if p.default is None:
            d = "not given"
        else:
            d = "''" if p.default == "" else (str(p.default).lower() if isinstance(p.default, bool) else p.default)
            d = f"`{d}`"
        rows.append(f"| `{p.name}` | {d} | {p.help} |")
    return "\n".join(rows)


def tables() -> str:
    order = ("tune", *C.FAMILIES, "register", "launch", "predict", "reproduce", "dashboard", "storage-proxy",
             "serve", "promote")
    return "\n\n".join([*(f"### {name}\n\n{section(name)}" for name in order), env_table()])


def env_table() -> str:
    rows = ["## Environment variables", "", "| variable | what it does |", "|---|---|"]
    return "\n".join(rows + [f"| `{name}` | {meaning} |" for name, meaning in ENV_VARS])


def section(name: str) -> str:
    if name == "launch":  # its own two; the tune parameters are the table above
        return table(C.LAUNCH_OWN_PARAMS) + (
            "\n\nand every `tune` parameter above: the launcher creates the study with them and passes those given "
            "to each worker (`study` and `family` excepted: the study records them).")
    return table(commands.command_params(name))


def write() -> None:
    page = PAGE.read_text()
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    PAGE.write_text(f"{head}{BEGIN}\n{tables()}\n{END}{tail}")


if __name__ == "__main__":
    write() if "--write" in sys.argv[1:] else print(tables())
