"""Print the README's parameter tables from fmnist_exp/config.py (tests/test_project.py checks them).

    python scripts/gen_param_tables.py
"""

from fmnist_exp import config as C


def table(params: list[C.Param]) -> str:
    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    for p in params:
        d = "''" if p.default == "" else (str(p.default).lower() if isinstance(p.default, bool) else p.default)
        rows.append(f"| `{p.name}` | `{d}` | {p.help} |")
    return "\n".join(rows)


def tables() -> str:
    sections = [("tune", C.TUNE_PARAMS), *((f, C.family_params(f)) for f in C.FAMILIES), ("register", C.REGISTER_PARAMS), ("predict", C.PREDICT_PARAMS)]
    return "\n\n".join(f"### {name}\n\n{table(params)}" for name, params in sections)


if __name__ == "__main__":
    print(tables())
